"""Pencil-beam depth dose, lateral spread and spot placement for scanned proton and carbon beams.

Integrated depth dose (IDD, laterally integrated dose of one pencil beam per primary particle,
Gy·mm²; 1 MeV cm²/g = 1.602e-8 Gy·mm²) in water, computed numerically on a 0.05 mm depth grid
in the spirit of Bortfeld's analytical model (Med Phys 24:2024, 1997):

* primaries slow down along the CSDA range–energy relation of ``ion_range`` (residual energy
  E(R₀ − z)); the energy lost in each depth bin by the surviving primaries is deposited in it;
* protons: primary fluence falls linearly, Φ(z) = (1 + β(R₀ − z)) / (1 + βR₀), β = 0.012 cm⁻¹,
  and a fraction γ = 0.6 of the energy of the removed protons is deposited locally (Bortfeld 1997,
  after Janni 1982);
* carbon: primary fluence falls exponentially, Φ(z) = exp(−μz), μ = 0.0476 cm⁻¹ (mean free path
  21 cm: total charge-changing cross sections of ¹²C on H and O, about 0.23 b and 1.05 b, as
  measured by Golovchenko et al. PRC 66:014609, 2002 and Kox et al. PRC 35:1678, 1987; after
  27.5 cm, the range at 400 MeV/u, 27 % of the primaries remain, near the ≈ 30 % of Haettner et
  al. Radiat Prot Dosim 122:485, 2006). The fragments (mostly H and He, whose range at the same
  velocity is 3× that of carbon) deposit F(z) = f·S(E₀)·(1 − Φ(z)) before R₀ and continue
  beyond it as F(R₀)·exp(−(z − R₀)/(0.3 R₀)), f = 0.35: a tail of ≈ 25 % of the entrance dose
  just behind a 400 MeV/u peak (≈ 2 % at 100 MeV/u), ≈ 5 % at 1.5 R₀ — roughly the shape of the
  measured curves shown by Schardt et al. (Rev Mod Phys 82:383, 2010). A documented
  approximation, not a fragment transport: no lateral fragment halo, one LET for all fragments;
* the CSDA curve is convolved with a Gaussian of width σ² = σ_straggling² + (σ_E·dR/dE)²:
  protons σ_straggling = 0.012·R₀^0.935 cm (Bortfeld 1997), energy spread σ_E = 0.4 % of E₀
  (typical of cyclotron PBS beams; machine-specific); carbon σ_straggling = proton value / √12
  (relative straggling ∝ 1/√M; Schardt 2010: 3.5× smaller), σ_E = 0.1 % (synchrotron) and a
  ripple filter (3 mm, Weber & Kraft, Phys Med Biol 44:2765, 1999) as a uniform range spread of
  width 3 mm, i.e. σ = 3/√12 mm.

Lateral spread (σ in mm, in the plane normal to the beam): σ(z)² = σ₀(E)² + σ_MCS(z)², where
σ_MCS comes from Highland's formula in Gottschalk's generalised form (Highland NIM 129:497, 1975;
Gottschalk et al. NIM B74:467, 1993): σ_MCS² = θ²-weighted integral ∫₀ᶻ (z − z')² T(z') dz' with
T = (14.1 MeV · z_ion / pv)² / X₀ and the factor (1 + log10(z/X₀)/9)² applied over the whole path,
X₀ = 36.08 cm (water). It gives 0.0225–0.023 R at the end of range for protons of 70–230 MeV
(Gottschalk's rule of thumb is ≈ 2 %; the fit 0.0294·R^0.896 cm gives 10–14 % less) and about a
third of that for carbon at equal range. σ₀ is the in-air spot size at
the isocentre: protons 6 mm at 70 MeV to 3 mm at 230 MeV, carbon 4 mm at 100 MeV/u to 2 mm at
430 MeV/u (generic values, linear in energy; machines differ).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from rtautoplan.case import Grid
from rtautoplan.physics import ion_range as ir
from rtautoplan.physics.geometry import BeamFrame, _fan_coordinates

MEV_CM2_G_TO_GY_MM2 = 1.602176634e-8  # 1 MeV cm²/g per particle → Gy·mm² per particle
DZ_MM = 0.05  # depth grid of the tabulated curves
X0_WATER_MM = 360.8  # radiation length of water (PDG)
PROTON_BETA_PER_MM = 0.0012  # Bortfeld 1997
PROTON_GAMMA = 0.6
CARBON_MU_PER_MM = 0.00476
CARBON_FRAGMENT_F = 0.35
CARBON_TAIL_LENGTH = 0.3  # × R₀
ENERGY_SPREAD = {"proton": 0.004, "carbon": 0.001}
RIPPLE_FILTER_MM = 3.0  # carbon
SIGMA0_MM = {"proton": ((70.0, 6.0), (230.0, 3.0)), "carbon": ((100.0, 4.0), (430.0, 2.0))}


def _name(ion) -> str:
    return ir.ion_of(ion).name


def _straggling_sigma_mm(r0_mm: float, ion: str, energy: float) -> float:
    r_cm = r0_mm / 10.0
    strag = 10.0 * 0.012 * r_cm**0.935
    if ion == "carbon":
        strag /= np.sqrt(12.0)
    de = ENERGY_SPREAD[ion] * energy
    drde = (ir.csda_range(energy * 1.001, ion) - ir.csda_range(energy * 0.999, ion)) / (0.002 * energy)
    sigma2 = strag**2 + (de * drde) ** 2
    if ion == "carbon":
        sigma2 += RIPPLE_FILTER_MM**2 / 12.0
    return float(np.sqrt(sigma2))


@functools.lru_cache(maxsize=512)
def _curves(ion: str, energy: float) -> dict[str, np.ndarray]:
    """Depth grid (mm) and per-particle curves of one energy (rounded to 0.01 MeV/u by callers):
    'dose' total IDD (MeV cm²/g), 'primary' primary part, 'let' dose-averaged LET of the
    primaries (keV/µm), 'sigma_mcs' (mm)."""
    r0 = float(ir.csda_range(energy, ion))
    sigma = _straggling_sigma_mm(r0, ion, energy)
    zmax = r0 * (2.0 if ion == "carbon" else 1.0) + 8.0 * sigma + 5.0
    edges = np.arange(0.0, zmax + DZ_MM, DZ_MM)
    z = 0.5 * (edges[1:] + edges[:-1])
    e_edges = ir.residual_energy(r0 - edges, ion)  # MeV/u at each edge, 0 beyond R₀
    a = ir.ion_of(ion).a
    de = -np.diff(e_edges) * a  # MeV lost per primary in each bin (CSDA)
    inside = z < r0

    def phi(x):  # primary fluence per incident particle
        if ion == "proton":
            return (1.0 + PROTON_BETA_PER_MM * np.maximum(r0 - x, 0.0)) / (1.0 + PROTON_BETA_PER_MM * r0)
        return np.exp(-CARBON_MU_PER_MM * np.minimum(x, r0))

    fluence = phi(z)
    primary = fluence * de / DZ_MM  # MeV/mm per incident particle
    lost = (phi(edges[:-1]) - phi(edges[1:])) / DZ_MM  # primaries removed per mm
    e_mid = 0.5 * (e_edges[1:] + e_edges[:-1]) * a
    if ion == "proton":
        secondary = PROTON_GAMMA * lost * e_mid
    else:
        s0 = float(ir.stopping_power(energy, ion)) / 10.0  # MeV/mm at unit density
        secondary = CARBON_FRAGMENT_F * s0 * (1.0 - fluence)
        beyond = ~inside
        secondary[beyond] = CARBON_FRAGMENT_F * s0 * (1.0 - phi(r0)) * np.exp(-(z[beyond] - r0) / (CARBON_TAIL_LENGTH * r0))
    let_bin = de / DZ_MM  # unrestricted LET of the primaries in each bin (MeV/mm = keV/µm)

    def smooth(f):  # range straggling, energy spread and ripple filter
        return ndimage.gaussian_filter1d(f, sigma / DZ_MM, mode="nearest", truncate=5.0)

    prim_s = smooth(primary)
    let_s = smooth(primary * let_bin) / np.maximum(prim_s, 1e-30)
    dose = prim_s + (smooth(secondary) if ion == "proton" else secondary)
    to_mev_cm2_g = 10.0  # MeV/mm at ρ = 1 g/cm³ → MeV cm²/g
    return {
        "z": z,
        "dose": dose * to_mev_cm2_g,
        "primary": prim_s * to_mev_cm2_g,
        "let": let_s,
        "sigma_mcs": _mcs_sigma(z, e_edges[:-1], ion),
        "r0": np.array(r0),
    }


def _mcs_sigma(z: np.ndarray, energy_u: np.ndarray, ion: str) -> np.ndarray:
    """σ_MCS (mm) at depths z (uniform grid) for the residual energies along the path (module docstring)."""
    ion_t = ir.ion_of(ion)
    e_tot = energy_u * ion_t.a
    m = ion_t.mass_mev
    pv = np.where(e_tot > 0, e_tot * (e_tot + 2 * m) / (e_tot + m), np.inf)  # MeV
    t = (14.1 * ion_t.z / pv) ** 2 / X0_WATER_MM  # rad²/mm
    # ∫₀ᶻ (z − z')² T dz' = z²·∫T − 2z·∫z'T + ∫z'²T  (cumulative sums)
    c0, c1, c2 = (np.cumsum(z**k * t) * DZ_MM for k in range(3))
    var = np.maximum(z**2 * c0 - 2 * z * c1 + c2, 0.0)
    log_factor = 1.0 + np.log10(np.maximum(z, DZ_MM) / X0_WATER_MM) / 9.0
    return log_factor * np.sqrt(var)


def _key(ion, energy) -> tuple[str, float]:
    """Cache key of ``_curves``: ion name and energy rounded to 0.01 MeV/u."""
    return _name(ion), round(float(energy), 2)


def _lookup(key: str, depth_mm, energy, ion) -> np.ndarray:
    depth = np.asarray(depth_mm, float)
    energies = np.asarray(energy, float)
    depth, energies = np.broadcast_arrays(depth, energies)
    out = np.zeros(depth.shape)
    for e in np.unique(energies):
        c = _curves(*_key(ion, e))
        sel = energies == e
        out[sel] = np.interp(depth[sel], c["z"], c[key], left=c[key][0], right=0.0 if key != "sigma_mcs" else c[key][-1])
    return out


def idd(depth_mm, energy, ion="proton") -> np.ndarray:
    """Integrated depth dose (Gy·mm² per primary particle) in water at water-equivalent depth
    ``depth_mm`` for energy ``energy`` (MeV for protons, MeV/u for carbon); arrays broadcast. Energies
    are rounded to 0.01 MeV/u (curves are cached per energy); depths ≤ 0 get the surface value."""
    return MEV_CM2_G_TO_GY_MM2 * _lookup("dose", depth_mm, energy, ion)


def proton_idd(depth_mm, energy_mev) -> np.ndarray:
    """Proton IDD (Gy·mm² per proton) in water; see ``idd``."""
    return idd(depth_mm, energy_mev, "proton")


def carbon_idd(depth_mm, energy_mev_u) -> np.ndarray:
    """¹²C IDD (Gy·mm² per ion, primaries and fragments) in water; see ``idd``."""
    return idd(depth_mm, energy_mev_u, "carbon")


def primary_fraction(depth_mm, energy, ion="carbon") -> np.ndarray:
    """Fraction of the IDD deposited by primary ions (the rest by fragments / secondaries)."""
    total = _lookup("dose", depth_mm, energy, ion)
    return np.where(total > 0, _lookup("primary", depth_mm, energy, ion) / np.where(total > 0, total, 1.0), 0.0)


def let_primary(depth_mm, energy, ion="carbon") -> np.ndarray:
    """Dose-averaged LET in water (keV/µm) of the primary ions at depth (over the straggled spectrum)."""
    return _lookup("let", depth_mm, energy, ion)


def r80(energy, ion="proton") -> float:
    """Depth (mm) of the distal 80 % of the maximum of the IDD of one energy."""
    c = _curves(*_key(ion, energy))
    dose, z = c["dose"], c["z"]
    peak = int(np.argmax(dose))
    distal = dose[peak:]
    below = int(np.argmax(distal < 0.8 * dose[peak]))
    i = peak + below
    return float(np.interp(0.8 * dose[peak], [dose[i], dose[i - 1]], [z[i], z[i - 1]]))


def sigma0_mm(energy, ion="proton") -> np.ndarray:
    """In-air spot σ at the isocentre (mm), linear in energy between the documented end points."""
    (e0, s0), (e1, s1) = SIGMA0_MM[_name(ion)]
    return np.interp(np.asarray(energy, float), [e0, e1], [s0, s1])


def lateral_sigma(depth_mm, energy, ion="proton") -> np.ndarray:
    """Spot σ (mm) at water-equivalent depth: √(σ₀² + σ_MCS²), σ_MCS computed in water (as in the
    photon model, heterogeneities enter only through the depth; no beam divergence, no nuclear halo)."""
    return np.sqrt(sigma0_mm(energy, ion) ** 2 + _lookup("sigma_mcs", depth_mm, energy, ion) ** 2)


def spots_for(
    target_mask: np.ndarray,
    grid: Grid,
    frame: BeamFrame,
    wet_mm: np.ndarray,
    ion="proton",
    spot_spacing_mm: float = 5.0,
    layer_spacing_mm: float | None = None,
    margin_mm: float = 5.0,
) -> np.ndarray:
    """Spots (n, 3: x_b, y_b at the isocentre plane in mm, energy in MeV or MeV/u) covering the target.

    wet_mm: water-equivalent depth on ``grid`` (``radiological_depth`` of ``hu_to_spr``), needed on
    the target voxels. Lateral: a square lattice of pitch ``spot_spacing_mm`` with nodes on
    (k + ½)·pitch (as ``geometry.beamlet_grid``), kept where a node lies within pitch/2 + margin, in
    both x_b and y_b, of a target voxel centre projected to the isocentre plane. Depth: a common set of layers whose CSDA ranges are spaced
    ``layer_spacing_mm`` of water (default 3 mm protons, 2.5 mm carbon) from the shallowest target
    WET − margin to the deepest + margin; each lattice node gets the layers whose range lies within
    [min WET − margin, max WET + margin] of the target voxels it covers. Margins act in water-
    equivalent depth (a geometric margin in tissue of SPR ≈ 1). Sorted by energy (high first), y_b, x_b.
    """
    name = _name(ion)
    flat = np.flatnonzero(np.asarray(target_mask, bool))
    if flat.size == 0:
        raise ValueError("the target mask is empty: no spots to place")
    w = np.asarray(wet_mm, float).flat[flat]
    if not np.all(np.isfinite(w)):
        raise ValueError("water-equivalent depth is missing (NaN) on some target voxels")
    step = layer_spacing_mm or (3.0 if name == "proton" else 2.5)
    a, b, _ = _fan_coordinates(grid, frame, flat)
    p = np.stack([a, b], axis=-1) * frame.sad_mm
    reach = spot_spacing_mm / 2.0 + margin_mm
    lo = np.ceil((p - reach) / spot_spacing_mm - 0.5).astype(np.int64)
    k = int(np.floor(2.0 * reach / spot_spacing_mm)) + 1
    offsets = np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2)
    cells = lo[:, None, :] + offsets[None, :, :]  # (n, k², 2)
    gap = np.abs((cells + 0.5) * spot_spacing_mm - p[:, None, :])
    keep = np.all(gap <= reach + 1e-9, axis=-1)
    cell_keys, inverse = np.unique(cells[keep], axis=0, return_inverse=True)
    depth_of = np.broadcast_to(w[:, None], keep.shape)[keep]
    wmin = np.full(len(cell_keys), np.inf)
    wmax = np.full(len(cell_keys), -np.inf)
    np.minimum.at(wmin, inverse.ravel(), depth_of)
    np.maximum.at(wmax, inverse.ravel(), depth_of)
    r_lo = max(wmin.min() - margin_mm, float(ir.csda_range(ir.E_LOW * 1.2, name)))
    ranges = np.arange(wmax.max() + margin_mm, r_lo - 1e-9, -step)
    energies = ir.energy_for_range(ranges, name)
    use = (ranges[None, :] >= wmin[:, None] - margin_mm - 1e-9) & (ranges[None, :] <= wmax[:, None] + margin_mm + 1e-9)
    ci, li = np.nonzero(use)
    xy = (cell_keys[ci] + 0.5) * spot_spacing_mm
    spots = np.column_stack([xy, energies[li]])
    order = np.lexsort((spots[:, 0], spots[:, 1], -spots[:, 2]))
    return spots[order]
