"""mask ↔ contours: exact round trips on awkward shapes and grids, and the contour checks."""

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from scipy import ndimage

from rtautoplan.case import Grid
from rtautoplan.dicom.contours import contours_to_mask, fill_even_odd, mask_to_contours
from rtautoplan.errors import InputError

GRIDS = [
    Grid((-30.0, -20.0, 10.0), (2.5, 1.5, 2.0), (8, 30, 26)),  # anisotropic, non-square pixels
    Grid((12.5, -7.25, 40.0), (3.0, 0.8, 1.3), (6, 25, 33), (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),  # FFS
    Grid((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), (5, 20, 20), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)),  # HFP
]


def round_trip(mask, grid, decimals=2):
    """Through contours rounded to 0.01 mm, as written in ContourData."""
    contours = [np.round(points, decimals) for _, points in mask_to_contours(mask, grid)]
    return contours_to_mask(contours, grid, "test")


@pytest.mark.parametrize("grid", GRIDS, ids=["anisotropic", "FFS", "HFP"])
def test_random_shapes_round_trip_exactly(grid):
    """Exact (no voxel differs) on noise blobs: holes, islands, diagonal touching, edge of the grid."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        mask = ndimage.binary_opening(rng.random(grid.shape) < 0.45) | (rng.random(grid.shape) < 0.04)
        mask[:, 0, :] |= rng.random(grid.shape[2]) < 0.5  # touching the border of the image
        assert np.array_equal(round_trip(mask, grid), mask)


def test_hole_island_and_single_voxel():
    grid = GRIDS[0]
    j, i = np.indices(grid.shape[1:])
    r2 = (j - 15) ** 2 + (i - 13) ** 2
    mask = np.zeros(grid.shape, bool)
    mask[2] = (r2 <= 64) & (r2 >= 16)  # ring with a hole
    mask[3] = mask[2] | (r2 <= 2)  # island in the hole
    mask[5, 4, 7] = True  # one voxel
    mask[6, 0, 0] = mask[6, 29, 25] = True  # corners of the grid
    contours = mask_to_contours(mask, grid)
    assert [k for k, _ in contours].count(3) == 3
    assert np.array_equal(round_trip(mask, grid), mask)


def test_checkerboard_saddles():
    """Diagonal neighbours only (marching-squares saddles everywhere)."""
    grid = GRIDS[0]
    k, j, i = np.indices(grid.shape)
    mask = (j + i) % 2 == 0
    assert np.array_equal(round_trip(mask, grid), mask)


def test_contours_are_planar_closed_and_without_repeats():
    grid = GRIDS[1]
    mask = np.zeros(grid.shape, bool)
    mask[2, 5:12, 4:9] = True
    ((k, points),) = mask_to_contours(mask, grid)
    assert k == 2
    assert np.ptp(points[:, 2]) == 0 and points[0, 2] == pytest.approx(grid.index_to_patient([2, 0, 0])[2])
    assert len(points) == 8  # a rectangle: 4 corners cut at 45° by marching squares, collinear points dropped
    assert not np.any(np.all(points == np.roll(points, 1, axis=0), axis=1))


def test_fill_matches_matplotlib_contains_points():
    rng = np.random.default_rng(2)
    rows, cols = 23, 31
    jj, ii = np.mgrid[:rows, :cols]
    centres = np.column_stack([jj.ravel(), ii.ravel()])
    for _ in range(200):
        polygons = [rng.random((rng.integers(3, 12), 2)) * [rows + 6, cols + 6] - 3 for _ in range(rng.integers(1, 3))]
        expected = np.zeros(rows * cols, bool)
        for polygon in polygons:
            expected ^= MplPath(polygon).contains_points(centres)
        assert np.array_equal(fill_even_odd(polygons, (rows, cols)).ravel(), expected)


def test_contours_off_the_slices_are_refused_with_roi_and_z():
    grid = Grid((0.0, 0.0, 0.0), (3.0, 1.0, 1.0), (4, 10, 10))
    square = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]])
    at = lambda z: np.column_stack([square, np.full(4, z)])  # noqa: E731
    assert contours_to_mask([at(3.7)], grid, "Brain")[1].any()  # 0.7 mm off a 3 mm step: within 1/4
    with pytest.raises(InputError, match=r"ROI 'Brain'.*z = 4\.50 mm.*off the nearest CT slice"):
        contours_to_mask([at(4.5)], grid, "Brain")
    with pytest.raises(InputError, match=r"ROI 'Brain'.*z = 15\.00 mm lies outside the CT"):
        contours_to_mask([at(15.0)], grid, "Brain")
    tilted = at(3.0)
    tilted[2:, 2] = 6.0
    with pytest.raises(InputError, match=r"ROI 'Brain'.*not planar"):
        contours_to_mask([tilted], grid, "Brain")
