"""Photon dose-influence matrix: geometry, sparsity, dtypes, dose grid and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest

from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure
from scipy import sparse

from rtautoplan.physics.dij import (CsrStack, cache_paths, coarse_grid, dij_cached, dij_key, dose_influence,
                                    dose_to_grid, resample_mask)
from rtautoplan.physics.geometry import beam_frame, hu_to_red, radiological_depth
from rtautoplan.physics.photon import beamlet_dose
from rtautoplan.plan import Beam


def water_box(shape=(51, 51, 31), spacing=(4.0, 4.0, 4.0), ctv_half_mm=15.0) -> Case:
    """A water cube (HU 0) whose centre voxel is at the patient origin, with a central cubic CTV."""
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing[::-1]))  # (x, y, z) from (i, j, k)
    grid = Grid(origin=origin, spacing=spacing, shape=shape)
    x, y, z = grid.centres()
    body = np.ones(shape, bool)
    ctv = (np.abs(x) <= ctv_half_mm) & (np.abs(y) <= ctv_half_mm) & (np.abs(z) <= ctv_half_mm)
    structures = (Structure("External", body, Role.EXTERNAL), Structure("CTV_6000", ctv, Role.CTV, 2, 60.0))
    return Case("water", grid, np.zeros(shape, np.int16), structures,
                Prescription((DoseLevel("CTV_6000", 60.0),), 30))


OPPOSED = (Beam("G090", 90.0, (0.0, 0.0, 0.0)), Beam("G270", 270.0, (0.0, 0.0, 0.0)))


@pytest.fixture(scope="module")
def box():
    return water_box()


@pytest.fixture(scope="module")
def box_dij(box):
    return dose_influence(box, OPPOSED)


def test_opposed_beams_symmetric_about_mid_plane(box, box_dij):
    dose = box_dij.dose_array(np.ones(box_dij.n_beamlets))
    # Gantry 90/270 run along patient x (the column axis i): mirror i about the centre column.
    mirrored = dose[:, :, ::-1]
    high = dose > 0.1 * dose.max()
    rel = np.abs(dose - mirrored)[high] / dose.max()
    assert rel.max() < 0.02, f"opposed-beam dose asymmetric by {100 * rel.max():.2f} % of Dmax"
    # and the two beams are each other's mirror image column for column
    one, two = box_dij.beam_slices
    d1 = box_dij.dose_array(np.r_[np.ones(one.stop - one.start), np.zeros(two.stop - two.start)])
    d2 = box_dij.dose_array(np.r_[np.zeros(one.stop - one.start), np.ones(two.stop - two.start)])
    assert np.abs(d1 - d2[:, :, ::-1]).max() < 0.02 * d1.max()


def test_dij_is_sparse_float32_int32(box_dij, box):
    m = box_dij.matrix
    assert m.format == "csr" and m.dtype == np.float32
    assert m.indices.dtype == np.int32 and m.indptr.dtype == np.int32
    assert m.shape == (int(box.external.mask.count), sum(len(b) for b in box_dij.beamlets))
    fraction = m.nnz / (m.shape[0] * m.shape[1])
    assert fraction < 0.3, f"nnz fraction {fraction:.3f}"
    assert [s.stop - s.start for s in box_dij.beam_slices] == [len(b) for b in box_dij.beamlets]


def test_csr_stack_equals_one_conversion():
    """Beams stacked by CsrStack give the matrix of one COO → CSR conversion, bit for bit."""
    rng = np.random.default_rng(3)
    n_rows, beams = 257, []
    for n_cols in (5, 1, 40, 0, 17):
        dense = np.where(rng.random((n_rows, n_cols)) < 0.2, rng.random((n_rows, n_cols)), 0.0).astype(np.float32)
        beams.append(sparse.csc_matrix(dense))
    stack = CsrStack(n_rows, chunks=7)
    for b in beams:
        stack.add(b, b.shape[1])
    got = stack.finish()
    want = sparse.hstack(beams, format="coo").tocsr()
    want.sort_indices()
    assert got.indices.dtype == np.int32 and got.indptr.dtype == np.int32 and got.dtype == np.float32
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert got.data.tobytes() == want.data.tobytes()


def test_dose_influence_equals_the_single_beam_matrices(box, box_dij):
    """The builder stacks beams (CsrStack) into the matrix of the previous builder (all columns gathered as CSC,
    one CSR conversion): bit for bit, so the cache key is unchanged."""
    singles = [dose_influence(box, (beam,)).matrix for beam in OPPOSED]
    want = sparse.hstack(singles, format="csc").tocsr()
    want.sort_indices()
    got = box_dij.matrix
    assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    assert got.data.tobytes() == want.data.tobytes()


def test_column_equals_beamlet_dose(box, box_dij):
    """One column against photon.beamlet_dose evaluated directly (depth, BEV offset, distance)."""
    beam, col = OPPOSED[0], 3
    frame = beam_frame(beam)
    centre = box_dij.beamlets[0][col]
    column = box_dij.matrix[:, col].toarray().ravel()
    rows = np.flatnonzero(column)
    flat = box_dij.row_voxels[rows]
    kji = np.stack(np.unravel_index(flat, box.grid.shape), axis=-1)
    xb, yb, t = frame.to_beam(box.grid.index_to_patient(kji))
    depth = radiological_depth(hu_to_red(box.hu), box.grid, frame).ravel()[flat]
    expected = beamlet_dose(depth, xb - centre[0], yb - centre[1], t, box_dij.beamlet_mm)
    np.testing.assert_allclose(column[rows], expected, rtol=1e-5)
    assert np.hypot(xb - centre[0], yb - centre[1]).max() <= 50.0 + 1e-6  # the lateral cutoff


def test_dose_grid_factor_and_masks(box):
    dij = dose_influence(box, OPPOSED[:1], dose_grid_factor=(1, 2, 2))
    grid = coarse_grid(box.grid, (1, 2, 2))
    assert dij.dose_grid == grid and grid.shape == (51, 26, 16)
    # block centre of block 0 = mean of the CT voxel centres it holds
    np.testing.assert_allclose(grid.origin, box.grid.index_to_patient([0.0, 0.5, 0.5]))
    tiny = np.zeros(box.grid.shape, bool)
    tiny[25, 25, 15] = True
    assert resample_mask(tiny, 2, "half").sum() == 1  # "half" falls back to "any" rather than vanish
    assert len(dij.rows_of(box.structure("CTV_6000").mask)) > 0
    fine = dose_to_grid(dij.dose_array(np.ones(dij.n_beamlets)), dij.dose_grid, box.grid)
    assert fine.shape == box.grid.shape


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)],
                         ids=["HFS", "flipped", "transposed"])
def test_dose_to_grid_is_trilinear_with_nearest_edges(orientation):
    """The separable interpolation equals map_coordinates(order=1, mode="nearest") at every output voxel
    centre, also beyond the source grid and for a destination with its axes reordered or reversed."""
    from scipy import ndimage

    src = coarse_grid(Grid((-10.0, 5.0, 3.0), (3.0, 2.5, 1.7), (13, 17, 19)), (1, 2, 2))
    dst = Grid((-17.3, 1.1, -4.0), (2.0, 1.0, 1.3), (20, 25, 30), orientation)
    dose = np.random.default_rng(0).random(src.shape) * 70.0
    kji = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in dst.shape), indexing="ij"), axis=-1)
    coords = np.moveaxis(src.patient_to_index(dst.index_to_patient(kji)), -1, 0)
    expected = ndimage.map_coordinates(dose, coords, order=1, mode="nearest")
    got = dose_to_grid(dose, src, dst)
    assert got.dtype == np.float32 and got.shape == dst.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.max())


def test_cache_roundtrip(box, tmp_path):
    first = dij_cached(box, OPPOSED, cache_dir=tmp_path)
    files = cache_paths(dij_key(box, OPPOSED), tmp_path)
    assert all(p.exists() for p in files), files
    second = dij_cached(box, OPPOSED, cache_dir=tmp_path)
    assert (first.matrix != second.matrix).nnz == 0 and second.matrix.dtype == np.float32
    assert second.dose_grid == first.dose_grid and second.factor == first.factor
    np.testing.assert_array_equal(first.row_voxels, second.row_voxels)
    for a, b in zip(first.beamlets, second.beamlets):
        np.testing.assert_array_equal(a, b)
    assert first.beam_slices == second.beam_slices
    # any input change is a new key
    assert dij_key(box, OPPOSED, cutoff_mm=40.0) != dij_key(box, OPPOSED)
    assert dij_key(box, OPPOSED[:1]) != dij_key(box, OPPOSED)
