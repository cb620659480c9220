"""Ion spot-influence matrix: one proton pencil beam in water (Bragg peak depth, lateral σ, integral),
a single-field SOBP, carbon α/√β matrices and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import plan_objective
from rtautoplan.physics import ion_dose, rbe
from rtautoplan.physics.ion_dij import IonDij, ion_dij_cached, spot_influence
from rtautoplan.plan import Beam, Modality, Objective, ObjectiveKind

AP = (Beam("AP", 0.0, (0.0, 0.0, 0.0), modality=Modality.PROTON),)  # HFS gantry 0: the beam runs along +y


def water_box(shape, spacing, origin, target_half_mm=(10.0, 10.0, 10.0), target_centre=(0.0, 0.0, 0.0)) -> Case:
    """A water box (HU 0, all External) with a box CTV; the water surface is the grid's first row face."""
    grid = Grid(origin, spacing, shape)
    x, y, z = grid.centres()
    (hx, hy, hz), (cx, cy, cz) = target_half_mm, target_centre
    ctv = (np.abs(x - cx) <= hx) & (np.abs(y - cy) <= hy) & (np.abs(z - cz) <= hz)
    ctv = np.broadcast_to(ctv, shape).copy()
    structures = (Structure("External", np.ones(shape, bool), Role.EXTERNAL),
                  Structure("CTV_6000", ctv, Role.CTV, 2, 60.0))
    return Case("water", grid, np.zeros(shape, np.int16), structures, Prescription((DoseLevel("CTV_6000", 60.0),), 30))


# 1 mm along the beam (y), 2 mm across; the surface (first row face) at y = −100.5 mm.
PB_ORIGIN, PB_SPACING, PB_SHAPE = (-30.0, -100.0, -30.0), (2.0, 1.0, 2.0), (31, 220, 31)
ENERGY = 150.0  # MeV


@pytest.fixture(scope="module")
def pencil():
    case = water_box(PB_SHAPE, PB_SPACING, PB_ORIGIN)
    dij = spot_influence(case, AP, spots=[np.array([[0.0, 0.0, ENERGY]])], dose_grid_factor=1)
    dose = dij.dose_array(np.ones(1))
    y = case.grid.centres()[1][0, :, 0]
    wet = y - (PB_ORIGIN[1] - 0.5)  # water-equivalent depth of each row (water: SPR 1)
    return case, dij, dose, wet


def test_pencil_beam_peak_depth_matches_idd(pencil):
    _, dij, dose, wet = pencil
    assert isinstance(dij, IonDij) and dij.matrix.shape[1] == 1
    axis = dose[15, :, 15]  # central axis (x = z = 0)
    curve = ion_dose._curves("proton", ENERGY)
    idd_peak = curve["z"][np.argmax(curve["dose"])]
    assert abs(wet[np.argmax(axis)] - idd_peak) <= 1.0  # one voxel (1 mm)
    # distal fall-off on the axis: the 80 % point lies within 1 mm of the IDD's r80
    peak = int(np.argmax(axis))
    distal = peak + int(np.argmax(axis[peak:] < 0.8 * axis[peak]))
    r80_axis = np.interp(0.8 * axis[peak], [axis[distal], axis[distal - 1]], [wet[distal], wet[distal - 1]])
    assert abs(r80_axis - ion_dose.r80(ENERGY)) <= 1.0


@pytest.mark.parametrize("depth", [50.0, 100.0, 150.0])
def test_pencil_beam_lateral_sigma_and_integral(pencil, depth):
    case, _, dose, wet = pencil
    j = int(np.argmin(np.abs(wet - depth)))
    x = case.grid.centres()[0][0, 0, :]
    profile = dose[15, j, :]
    expected = float(ion_dose.lateral_sigma(wet[j], ENERGY))
    fit = (np.abs(x) <= 2 * expected) & (profile > 0)
    slope = np.polyfit(x[fit] ** 2, np.log(profile[fit]), 1)[0]  # log Gaussian: −1/(2σ²)
    assert np.sqrt(-0.5 / slope) == pytest.approx(expected, rel=0.10)
    # the truncated, renormalised Gaussian keeps the IDD: Σ dose·dx·dz = IDD · particles per MU
    integral = dose[:, j, :].sum() * PB_SPACING[0] * PB_SPACING[2]
    assert integral == pytest.approx(float(ion_dose.idd(wet[j], ENERGY)) * 1e6, rel=0.02)


def test_matrix_layout_and_divergence():
    """CSR float32/int32, rows = External voxels of the dose grid; with divergence the same spot
    lattice covers a wider area deeper (spot axes fan out from the virtual source)."""
    case = water_box((11, 60, 11), (4.0, 4.0, 4.0), (-20.0, -100.0, -20.0))
    spots = [np.array([[10.0, 0.0, 150.0]])]
    near = spot_influence(case, AP, spots=spots, dose_grid_factor=1, sad_mm=500.0)
    far = spot_influence(case, AP, spots=spots, dose_grid_factor=1, sad_mm=1e7)
    m = near.matrix
    assert m.format == "csr" and m.dtype == np.float32 and m.indices.dtype == np.int32 and m.indptr.dtype == np.int32
    assert m.shape[0] == np.prod(case.grid.shape)
    x = case.grid.centres()[0][0, 0, :]

    def centroid_x(dij, j):
        d = dij.dose_array(np.ones(1))[:, j, :].sum(axis=0)
        return float((d * x).sum() / d.sum())

    y = case.grid.centres()[1][0, :, 0]
    j = int(np.argmin(np.abs(y - 20.0)))  # 20 mm beyond the isocentre plane
    t_over_sad = (500.0 + 20.0) / 500.0
    assert centroid_x(near, j) == pytest.approx(10.0 * t_over_sad, abs=0.3)
    assert centroid_x(far, j) == pytest.approx(10.0, abs=0.3)


@pytest.fixture(scope="module")
def sobp_box():
    """Water box 64 × 150 × 64 mm (3 mm voxels in depth, 4 mm across), surface at y = −100 mm; box
    target 30 mm wide at 85–115 mm water-equivalent depth."""
    shape, spacing = (16, 50, 16), (4.0, 3.0, 4.0)
    origin = (-30.0, -100.0 + 1.5, -30.0)
    return water_box(shape, spacing, origin, target_half_mm=(15.0, 15.0, 15.0), target_centre=(0.0, 0.0, 0.0))


def test_single_field_sobp_is_flat(sobp_box):
    """One field, DMIN 2 Gy and DMAX 2 Gy (weight 1 each) on the target, L-BFGS-B: every target
    voxel within ±3 % of the mean target dose."""
    case = sobp_box
    dij = spot_influence(case, AP, dose_grid_factor=1, spot_spacing_mm=5.0)
    target = case.structure("CTV_6000").mask
    rows = {"CTV_6000": dij.rows_of(target)}
    objectives = (Objective("CTV_6000", ObjectiveKind.DMIN, 2.0), Objective("CTV_6000", ObjectiveKind.DMAX, 2.0))
    f = plan_objective(dij.matrix, objectives, rows)
    x0 = np.ones(dij.n_beamlets)
    x0 *= 2.0 / float(np.mean(dij.matrix[rows["CTV_6000"]] @ x0.astype(np.float32)))
    solution = solve_lbfgs(f, x0, max_iter=500, tol=1e-5)
    d = dij.dose_array(solution.x)[target]
    assert d.mean() == pytest.approx(2.0, rel=0.01)
    assert d.max() / d.mean() - 1.0 <= 0.03 and 1.0 - d.min() / d.mean() <= 0.03, (d.min(), d.mean(), d.max())


def test_carbon_alpha_and_sqrt_beta_matrices():
    case = water_box((11, 80, 11), (4.0, 3.0, 4.0), (-20.0, -100.0, -20.0))
    tissue = rbe.TISSUES["tumour"]
    spots = [np.array([[0.0, 0.0, 200.0], [5.0, 0.0, 180.0]])]
    dij = spot_influence(case, (Beam("AP", 0.0, (0, 0, 0), modality=Modality.CARBON),), ion="carbon", spots=spots,
                         dose_grid_factor=1, tissue=tissue)
    assert dij.alpha_matrix is not None and dij.alpha_matrix.nnz == dij.matrix.nnz
    assert np.array_equal(dij.alpha_matrix.indices, dij.matrix.indices)
    ratio = dij.alpha_matrix.data / dij.matrix.data
    assert ratio.min() >= tissue.alpha_x * 0.999 and ratio.max() <= tissue.alpha_x * tissue.r_max * 1.001
    assert np.allclose(dij.sqrt_beta_matrix.data / dij.matrix.data, np.sqrt(tissue.beta_x), rtol=1e-5)
    w = np.array([1.0, 1.0])
    d_rbe = rbe.rbe_weighted_dose_dij(dij.matrix, dij.alpha_matrix, dij.sqrt_beta_matrix, w, tissue.alpha_x,
                                      tissue.beta_x)
    assert np.all(d_rbe >= dij.matrix @ w - 1e-6)  # carbon RBE ≥ 1 with these parameters


def test_proton_has_no_rbe_matrices(pencil):
    _, dij, _, _ = pencil
    assert dij.alpha_matrix is None and dij.sqrt_beta_matrix is None and dij.ion == "proton"


def test_cache_roundtrip(sobp_box, tmp_path):
    first = ion_dij_cached(sobp_box, AP, cache_dir=tmp_path, dose_grid_factor=(1, 2, 2))
    assert len(list(tmp_path.glob("*.json"))) == 1
    second = ion_dij_cached(sobp_box, AP, cache_dir=tmp_path, dose_grid_factor=(1, 2, 2))
    assert (first.matrix != second.matrix).nnz == 0 and second.dose_grid == first.dose_grid
    assert np.array_equal(np.concatenate(first.spots), np.concatenate(second.spots))
    assert second.beam_slices == first.beam_slices and second.factor == first.factor
    assert isinstance(second, IonDij) and second.particles_per_mu == first.particles_per_mu
    other = ion_dij_cached(sobp_box, AP, cache_dir=tmp_path, dose_grid_factor=(1, 2, 2), spot_spacing_mm=6.0)
    assert len(list(tmp_path.glob("*.json"))) == 2 and other.beamlet_mm == 6.0
    assert other.matrix.nnz != first.matrix.nnz
