"""Relative biological effectiveness: constant 1.1 for protons, LQ with mixed fields for carbon ions.

Mixed field (Zaider & Rossi, Radiat Res 83:732, 1980): in a voxel receiving doses dᵢ from components
(spots, or primaries and fragments) with LQ parameters αᵢ, βᵢ,

    α_mix = Σ dᵢαᵢ / D,   √β_mix = Σ dᵢ√βᵢ / D,   D = Σ dᵢ,
    E = α_mix·D + β_mix·D² = Σ dᵢαᵢ + (Σ dᵢ√βᵢ)²,

and the RBE-weighted dose is the photon dose of the same effect,
D_RBE = (−α_x + √(α_x² + 4β_x·E)) / (2β_x) — the scheme of Krämer & Scholz (Phys Med Biol 45:3319,
2000) used by TRiP98 and the HIT/CNAO planning systems (with LEM for αᵢ).

αᵢ of carbon ions: SPEC §3.1 fixes only "LQ", so we use a documented phenomenological α(LET) rather
than LEM or MKM: α(L) = α_x·[1 + (R_max − 1)·(L/L₀)·e^(1 − L/L₀)], rising from α_x at low LET to
R_max·α_x at L₀ = 150 keV/µm and falling beyond (overkill), the shape of the α–LET data of
Furusawa et al. (Radiat Res 154:485, 2000) for ¹²C. L is the dose-averaged LET (water) from
``ion_dose.let_primary`` for primaries and FRAGMENT_LET (5 keV/µm) for fragments. √βᵢ = √β_x
(the usual approximation of constant β, e.g. Inaniwa et al. MKM planning, Phys Med Biol 55:6721,
2010). R_max is per tissue (below): chosen so that a 60 mm SOBP at ≈ 2–3 Gy(RBE) per fraction has
mid-SOBP RBE ≈ 2–3 for α/β = 2 Gy and ≈ 1.5–2 for α/β = 10 Gy, the range of clinical LEM/MKM
plans. These are defaults for the PHOENIX-like stub, not a validated biological model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtautoplan.physics import ion_dose

RBE_PROTON = 1.1  # ICRU 78 (2007): generic constant proton RBE
LET_PEAK = 150.0  # keV/µm, L₀
FRAGMENT_LET = 5.0  # keV/µm, dose-averaged LET assumed for the fragment dose (H and He dominate)


@dataclass(frozen=True)
class Tissue:
    """Photon LQ parameters α_x (Gy⁻¹), β_x (Gy⁻²) and carbon R_max = α(L₀)/α_x."""

    alpha_x: float
    beta_x: float
    r_max: float

    @property
    def alpha_beta(self) -> float:
        return self.alpha_x / self.beta_x


# α/β = 10 Gy: tumours and early-responding tissue (α_x = 0.3 Gy⁻¹ as for many tumour cell lines);
# α/β = 2 Gy: late-responding tissue and chordoma, α_x = 0.1 Gy⁻¹, β_x = 0.05 Gy⁻² — the standard
# LEM I parameters of the GSI/HIT skull-base trials (Jäkel et al., Int J Radiat Oncol 50:1347, 2001);
# α/β = 3 Gy: generic late normal tissue.
TISSUES = {
    "tumour": Tissue(0.30, 0.030, 3.5),
    "late_normal": Tissue(0.10, 0.050, 9.0),
    "normal": Tissue(0.15, 0.050, 7.0),
}


def alpha_of_let(let_kev_um, tissue: Tissue) -> np.ndarray:
    """Carbon α (Gy⁻¹) at dose-averaged LET (keV/µm), module docstring."""
    x = np.asarray(let_kev_um, float) / LET_PEAK
    return tissue.alpha_x * (1.0 + (tissue.r_max - 1.0) * x * np.exp(1.0 - x))


def carbon_alpha(depth_mm, energy_mev_u, tissue: Tissue) -> np.ndarray:
    """α (Gy⁻¹) of the dose of a ¹²C pencil beam at water-equivalent depth: dose average of the
    primaries' α(LET) and the fragments' α(FRAGMENT_LET)."""
    f = ion_dose.primary_fraction(depth_mm, energy_mev_u, "carbon")
    a_p = alpha_of_let(ion_dose.let_primary(depth_mm, energy_mev_u, "carbon"), tissue)
    return f * a_p + (1.0 - f) * alpha_of_let(FRAGMENT_LET, tissue)


def _rbe_dose_from_effect(effect, alpha_x: float, beta_x: float) -> np.ndarray:
    effect = np.maximum(np.asarray(effect, float), 0.0)
    return (-alpha_x + np.sqrt(alpha_x**2 + 4.0 * beta_x * effect)) / (2.0 * beta_x)


def rbe_weighted_dose(dose, alpha, sqrt_beta, alpha_x: float, beta_x: float, axis: int = -1) -> np.ndarray:
    """RBE-weighted dose (Gy(RBE)) of mixed fields; components along ``axis``.

    dose: physical dose of each component (Gy); alpha (Gy⁻¹), sqrt_beta (Gy⁻¹): LQ parameters of each
    component; all broadcast together (e.g. voxels × spots). Zaider–Rossi mixing, module docstring.
    """
    d = np.asarray(dose, float)
    effect = np.sum(d * alpha, axis=axis) + np.sum(d * sqrt_beta, axis=axis) ** 2
    return _rbe_dose_from_effect(effect, alpha_x, beta_x)


def rbe_weighted_dose_dij(dij, alpha_dij, sqrt_beta_dij, weights, alpha_x: float, beta_x: float) -> np.ndarray:
    """RBE-weighted dose for spot weights ``weights`` from influence matrices (voxels × spots, dense
    or scipy.sparse): dij (Gy per unit weight), alpha_dij = dij∘α, sqrt_beta_dij = dij∘√β. The
    effect is E = alpha_dij·w + (sqrt_beta_dij·w)² (Wilkens & Oelfke, Phys Med Biol 50:2893, 2005)."""
    w = np.asarray(weights, float)
    return _rbe_dose_from_effect(alpha_dij @ w + (sqrt_beta_dij @ w) ** 2, alpha_x, beta_x)


def rbe_weighted_dose_gradient(upstream, alpha_dij, sqrt_beta_dij, weights, alpha_x: float, beta_x: float) -> np.ndarray:
    """∂/∂w of Σᵥ upstreamᵥ·D_RBE,ᵥ(w) (the chain rule for an objective whose gradient with respect to
    the RBE-weighted dose is ``upstream``): Aᵀ(g·s) + 2·Bᵀ(g·s·Bw) with s = 1/√(α_x² + 4β_x·E)."""
    w = np.asarray(weights, float)
    b = sqrt_beta_dij @ w
    effect = np.maximum(alpha_dij @ w + b**2, 0.0)
    gs = np.asarray(upstream, float) / np.sqrt(alpha_x**2 + 4.0 * beta_x * effect)
    return alpha_dij.T @ gs + 2.0 * (sqrt_beta_dij.T @ (gs * b))
