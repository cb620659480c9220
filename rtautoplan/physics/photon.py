"""A 6 MV photon pencil-beam model (analytic, double Gaussian) for beamlet dose.

The dose per unit weight of a square beamlet of side ``s`` (at the isocentre plane) at a point of
radiological depth d, BEV offset (Δx, Δy) from the beamlet centre at the isocentre plane and
distance t from the source along the beam axis is

    D = N · (SAD/t)² · [ P(d) · F(Δx, Δy; σ_p(d)·SAD/t) + S(d) · F(Δx, Δy; σ_s(d)·SAD/t) ]

* (SAD/t)²: inverse square (fluence is defined at the isocentre plane);
* P(d) = (1 − (1 − b₀)·e^(−β·d)) · e^(−μ·d): primary dose with build-up from the surface
  value b₀ to charged-particle equilibrium, and attenuation;
* S(d) = k_s · (1 − e^(−d/λ_s)) · e^(−μ·d): phantom scatter, which builds up with depth;
* F: a square aperture convolved with a 2-D Gaussian of width σ,
  F = ¼·[erf((Δx + s/2)/(√2σ)) − erf((Δx − s/2)/(√2σ))]·[same in y]; σ grows linearly with depth,
  σ(d) = σ₀ + σ₁·d (mm, in the plane at the point), and is scaled to the isocentre plane;
* N: 1 cGy per unit weight at the depth of maximum dose on the axis of a 10 × 10 cm² field of
  unit-weight beamlets with the isocentre at that depth (an "SAD calibration").

Parameters (``SIX_MV``) were fitted to central-axis data of a generic 6 MV beam at SSD 100 cm —
BJR Suppl. 25 (1996) 6 MV: d_max 1.5 cm, %DD(10 cm) 67.0 % / (20 cm) 38.5 % for 10 × 10 cm²,
62.7 % and 71.0 % at 10 cm for 5 × 5 and 20 × 20 cm²; surface dose ≈ 16 % for 10 × 10 cm²
(Apipunyasopon et al., JACMP 14(5) 2013). The primary width σ_p (σ₀, σ₁) is fitted to the measured
80–20 % penumbra of a narrow MLC-defined 6 MV field, 1 × 20 cm²: 1.7 ± 0.1 mm at 1.5 cm and
3.7 ± 0.3 mm at 10 cm depth (J Appl Clin Med Phys 12(3):142–160, 2011, doi:10.1120/jacmp.v12i3.3475,
Table 2) — the field an IMRT beamlet's edge is; the model then gives 4.5 mm for a 10 × 10 cm² field at
10 cm (phantom scatter widens a large field's edge). The fitted μ = 0.0425 cm⁻¹ is below
the narrow-beam water value at 2 MeV (0.0494 cm⁻¹, NIST XCOM) because it also absorbs beam
hardening and the growth of scatter with depth.

Approximations (standard for pencil-beam models): laterally homogeneous water for the lateral
spread (no lateral scaling in lung or bone, density enters only through the radiological depth),
no head scatter or horns, no off-axis softening, Gaussian instead of exponential scatter tails.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import erf

from rtautoplan.physics.geometry import SAD_MM

_SQRT2 = np.sqrt(2.0)


@dataclass(frozen=True)
class PhotonModel:
    """Parameters of the pencil-beam model (module docstring); lengths in mm."""

    mu_per_mm: float = 0.00425  # effective attenuation coefficient μ
    buildup_per_mm: float = 0.259  # build-up rate β
    surface: float = 0.148  # primary dose at the surface relative to equilibrium, b₀
    scatter: float = 0.675  # scatter amplitude k_s relative to primary at equilibrium
    scatter_buildup_mm: float = 239.0  # depth scale λ_s of the scatter build-up
    sigma_primary_mm: float = 0.80  # σ_p at the surface (source size and electron range)
    sigma_primary_per_mm: float = 0.01363  # growth of σ_p with depth
    sigma_scatter_mm: float = 31.4  # σ_s at the surface
    sigma_scatter_per_mm: float = 0.122  # growth of σ_s with depth
    sad_mm: float = SAD_MM
    reference_gy: float = 0.01  # dose per unit weight at the reference point (1 cGy)

    def depth_terms(self, depth_mm: np.ndarray) -> tuple[np.ndarray, ...]:
        """Primary and scatter integrals P(d), S(d) and widths σ_p(d), σ_s(d) (mm) at depth d (mm)."""
        d = np.maximum(np.asarray(depth_mm, float), 0.0)
        attenuation = np.exp(-self.mu_per_mm * d)
        primary = (1.0 - (1.0 - self.surface) * np.exp(-self.buildup_per_mm * d)) * attenuation
        scatter = self.scatter * (1.0 - np.exp(-d / self.scatter_buildup_mm)) * attenuation
        sigma_p = self.sigma_primary_mm + self.sigma_primary_per_mm * d
        sigma_s = self.sigma_scatter_mm + self.sigma_scatter_per_mm * d
        return primary, scatter, sigma_p, sigma_s


SIX_MV = PhotonModel()
# The model before the narrow-field refit (s4-tg119): σ_p fitted to typical jaw-defined penumbrae (4 mm at d_max,
# 6 mm at 10 cm). The trained photon planners (ACER, DQN, SARSA) learned on it, so their engines keep it: a trained
# planner runs on the engine it was trained on (docs/decisions.md, "The photon beam model and the trained planners").
SIX_MV_JAW = replace(SIX_MV, sigma_primary_mm=2.16, sigma_primary_per_mm=0.00863)
MODELS = {"6MV": SIX_MV, "6MV-jaw": SIX_MV_JAW}  # names the engine options and training records use


def model_named(model: "PhotonModel | str") -> PhotonModel:
    """The beam model ``model`` (a ``PhotonModel``, or one of ``MODELS``' names)."""
    if isinstance(model, PhotonModel):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown photon beam model {model!r}; known: {', '.join(MODELS)}")
    return MODELS[model]


def _aperture(offset: np.ndarray, half: float, sigma: np.ndarray) -> np.ndarray:
    """1-D square aperture of half-width ``half`` convolved with a Gaussian of width ``sigma``."""
    return 0.5 * (erf((offset + half) / (_SQRT2 * sigma)) - erf((offset - half) / (_SQRT2 * sigma)))


def _relative_dose(depth_mm, dx_mm, dy_mm, distance_mm, size_mm, model: PhotonModel) -> np.ndarray:
    """Dose before normalisation N (see module docstring); size_mm may be a field side."""
    primary, scatter, sigma_p, sigma_s = model.depth_terms(depth_mm)
    to_iso = model.sad_mm / np.asarray(distance_mm, float)
    half = size_mm / 2.0
    dx, dy = np.asarray(dx_mm, float), np.asarray(dy_mm, float)
    sp, ss = sigma_p * to_iso, sigma_s * to_iso
    lateral_p = _aperture(dx, half, sp) * _aperture(dy, half, sp)
    lateral_s = _aperture(dx, half, ss) * _aperture(dy, half, ss)
    return to_iso**2 * (primary * lateral_p + scatter * lateral_s)


def beamlet_dose(
    depth_mm: np.ndarray,
    dx_mm: np.ndarray,
    dy_mm: np.ndarray,
    distance_mm: np.ndarray,
    size_mm: float = 5.0,
    model: PhotonModel = SIX_MV,
) -> np.ndarray:
    """Dose (Gy per unit weight) of one square beamlet.

    depth_mm: radiological depth; dx_mm, dy_mm: BEV offset of the point from the beamlet centre,
    both at the isocentre plane; distance_mm: the point's distance t from the source along the
    beam axis; size_mm: beamlet side at the isocentre plane. Arrays broadcast together.
    Depths ≤ 0 (air before the surface) get the surface dose: score dose inside the EXTERNAL only.
    """
    return _normalisation(model) * _relative_dose(depth_mm, dx_mm, dy_mm, distance_mm, size_mm, model)


def field_dose(depth_mm, x_mm=0.0, y_mm=0.0, field_mm=100.0, ssd_mm=1000.0, model: PhotonModel = SIX_MV):
    """Dose (Gy per unit weight) of an open square field (side ``field_mm`` at the surface) in a
    water phantom at SSD ``ssd_mm``, at depth d and lateral position (x, y) in that plane (mm)."""
    depth = np.asarray(depth_mm, float)
    t = ssd_mm + depth
    to_iso = model.sad_mm / t
    size = field_mm * model.sad_mm / ssd_mm
    return beamlet_dose(depth, np.asarray(x_mm) * to_iso, np.asarray(y_mm) * to_iso, t, size, model)


def d_max_mm(field_mm: float = 100.0, ssd_mm: float = 1000.0, model: PhotonModel = SIX_MV) -> float:
    """Depth of maximum dose (mm, to 0.05 mm) on the axis of a square field in water."""
    return _d_max(field_mm, ssd_mm, model)


def pdd(depth_mm: np.ndarray, field_mm: float = 100.0, ssd_mm: float = 1000.0, model: PhotonModel = SIX_MV):
    """Percent depth dose (%) on the axis of a square field (side at the surface) in water."""
    def axis_dose(depth):
        return _relative_dose(depth, 0.0, 0.0, ssd_mm + depth, field_mm * model.sad_mm / ssd_mm, model)

    return 100.0 * axis_dose(np.asarray(depth_mm, float)) / axis_dose(_d_max(field_mm, ssd_mm, model))


@functools.lru_cache(maxsize=64)
def _d_max(field_mm: float, ssd_mm: float, model: PhotonModel) -> float:
    depth = np.arange(0.0, 60.0, 0.05)
    size = field_mm * model.sad_mm / ssd_mm
    return float(depth[np.argmax(_relative_dose(depth, 0.0, 0.0, ssd_mm + depth, size, model))])


@functools.lru_cache(maxsize=16)
def _normalisation(model: PhotonModel) -> float:
    """N: ``reference_gy`` at d_max on the axis of a 10 × 10 cm² field, isocentre at d_max."""
    d_max = _d_max(100.0, model.sad_mm, model)
    return model.reference_gy / float(_relative_dose(d_max, 0.0, 0.0, model.sad_mm, 100.0, model))
