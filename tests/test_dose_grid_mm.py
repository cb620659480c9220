"""The dose grid in mm (issue 13): its own grid over the External, structure rows on a non-aligned
grid, the depth dose against the block-factor grid, and the RTDOSE written on it."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import sparse

from rtautoplan.adapters.inhouse import InHousePhoton, grid_options
from rtautoplan.case import Grid
from rtautoplan.dicom.rtdose import read_rtdose, write_rtdose
from rtautoplan.physics.dij import (Dij, dose_grid_in_mm, dose_influence, dose_to_grid, mask_on_grid,
                                    stencil_mask)
from rtautoplan.plan import Beam
from test_dij import water_box


@pytest.mark.parametrize("mm", [3.0, (2.5, 3.0, 4.0)])
def test_spacing_is_requested_and_external_is_covered(small_case, mm):
    grid = dose_grid_in_mm(small_case.grid, small_case.external.mask, mm)
    want = np.broadcast_to(np.asarray(mm, float), (3,))
    spacing = np.asarray(grid.spacing)
    assert np.all(spacing <= want + 1e-9) and np.all(spacing >= want * (1 - 1 / np.asarray(grid.shape)) - 1e-9)
    assert grid.orientation == small_case.grid.orientation
    kji = np.argwhere(small_case.external.mask)
    inside = grid.patient_to_index(small_case.grid.index_to_patient(kji))
    assert np.all(inside >= -0.5) and np.all(inside <= np.asarray(grid.shape) - 0.5)
    # centres are not CT centres: the grids are not aligned
    assert not np.allclose(small_case.grid.patient_to_index(np.asarray(grid.origin)) % 1, 0)


def test_grid_keeps_a_voxel_of_margin_inside_a_large_ct():
    ct = Grid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (60, 60, 60))
    body = np.zeros(ct.shape, bool)
    body[20:40, 15:45, 10:50] = True
    grid = dose_grid_in_mm(ct, body, 3.0)
    lo = ct.patient_to_index(grid.index_to_patient(np.full(3, -0.5)))
    hi = ct.patient_to_index(grid.index_to_patient(np.asarray(grid.shape) - 0.5))
    np.testing.assert_allclose(lo, [19.5 - 3, 14.5 - 3, 9.5 - 3], atol=1e-9)
    np.testing.assert_allclose(hi, [39.5 + 3, 44.5 + 3, 49.5 + 3], atol=1e-9)


def test_rows_of_an_analytic_sphere_on_a_non_aligned_grid():
    ct = Grid((-40.0, -40.0, -36.0), (1.25, 0.9, 0.8), (58, 90, 100))
    x, y, z = ct.centres()
    centre, radius = np.array([1.3, -2.2, 0.7]), 14.0
    sphere = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2
    body = np.ones(ct.shape, bool)
    grid = dose_grid_in_mm(ct, body, 3.0)
    rows = np.flatnonzero(stencil_mask(body, ct, grid))
    dij = Dij(sparse.csr_matrix((rows.size, 1), dtype=np.float32), grid, rows, (), (), 5.0, None, ct)
    got = dij.rows_of(sphere)
    volume = got.size * np.prod(grid.spacing)
    assert abs(volume / (4 / 3 * np.pi * radius ** 3) - 1) < 0.03
    centres = grid.index_to_patient(np.stack(np.unravel_index(dij.row_voxels[got], grid.shape), -1))
    assert np.all(np.linalg.norm(centres - centre, axis=1) <= radius + 0.5 * np.linalg.norm(ct.spacing))
    tiny = np.zeros(ct.shape, bool)
    tiny[30, 45, 50] = True  # a one-voxel structure keeps the dose voxel that holds it ("any")
    assert mask_on_grid(tiny, ct, grid).sum() == 1 and dij.rows_of(tiny).size == 1


def test_depth_dose_at_3mm_agrees_with_the_factor_grid():
    box = water_box(shape=(31, 61, 61), spacing=(2.0, 2.0, 2.0))
    beam = (Beam("G090", 90.0, (0.0, 0.0, 0.0)),)
    fine = dose_influence(box, beam, dose_grid_factor=1)
    mm = dose_influence(box, beam, dose_grid_mm=3.0)
    ref = dose_to_grid(fine.dose_array(np.ones(fine.n_beamlets)), fine.dose_grid, mm.dose_grid)
    got = mm.dose_array(np.ones(mm.n_beamlets))
    xyz = mm.dose_grid.index_to_patient(np.argwhere(np.ones(mm.dose_grid.shape, bool))).reshape(*got.shape, 3)
    axis = (np.abs(xyz[..., 1]) < 3.0) & (np.abs(xyz[..., 2]) < 3.0) & (np.abs(xyz[..., 0]) < 50.0)
    assert axis.sum() >= 20
    np.testing.assert_allclose(got[axis], ref[axis], rtol=0.01)


def test_rtdose_on_the_dose_grid_round_trips(small_case, tmp_path):
    tps = InHousePhoton(n_beams=3, cache_dir=tmp_path / "dij")
    tps.prepare(small_case)
    dose = tps.dose_of([np.ones(s.stop - s.start) for s in tps._dij.beam_slices])
    native = dose.as_computed
    assert dose.grid == small_case.grid and native.grid == tps._dij.dose_grid and native.grid != small_case.grid
    np.testing.assert_allclose(dose.gy, dose_to_grid(native.gy, native.grid, small_case.grid), rtol=1e-5, atol=1e-6)
    path = write_rtdose(small_case, native, tmp_path / "RD.dcm", plan_sop_instance_uid="1.2.3.4", uid_seed="t")
    back = read_rtdose(path)
    np.testing.assert_allclose(back.grid.origin, native.grid.origin, atol=1e-6)
    np.testing.assert_allclose(back.grid.spacing, native.grid.spacing, atol=1e-6)
    assert back.grid.shape == native.grid.shape and back.grid.orientation == native.grid.orientation
    scaling = float(pydicom.dcmread(path).DoseGridScaling)
    assert np.max(np.abs(back.gy - native.gy)) <= scaling
    assert pydicom.dcmread(path).FrameOfReferenceUID == small_case.refs.frame_of_reference_uid
    scaled = dose.scaled(2.0)
    np.testing.assert_allclose(scaled.as_computed.gy, 2.0 * native.gy, rtol=1e-6)


def test_grid_options_are_exclusive():
    assert grid_options() == {"dose_grid_factor": None, "dose_grid_mm": 3.0}
    assert grid_options(dose_grid_factor=(1, 2, 2)) == {"dose_grid_factor": (1, 2, 2)}
    with pytest.raises(ValueError, match="not both"):
        grid_options((1, 2, 2), 3.0)


@pytest.mark.tools
def test_dciodvfy_finds_no_error_on_the_dose_grid(small_case, tmp_path, tool):
    from dicom_checks import dciodvfy, to_16_bit

    tps = InHousePhoton(n_beams=3, cache_dir=tmp_path / "dij")
    tps.prepare(small_case)
    dose = tps.dose_of([np.ones(s.stop - s.start) for s in tps._dij.beam_slices]).as_computed
    path = write_rtdose(small_case, dose, tmp_path / "RD.dcm", plan_sop_instance_uid="1.2.3.4", uid_seed="t")
    errors, output = dciodvfy(tool, to_16_bit(path, tmp_path / "RD16.dcm"))
    assert not errors, output
