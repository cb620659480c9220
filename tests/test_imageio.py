"""rtautoplan.imageio: exact geometry to and from SimpleITK, files, and resampling against dose_to_grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from rtautoplan.case import Grid
from rtautoplan.imageio import from_sitk, read_image, resample, same_grid, to_sitk, write_image
from rtautoplan.physics.dij import dose_to_grid

FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
HFP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


@pytest.mark.parametrize("orientation", [FFS, HFP], ids=["FFS", "HFP"])
def test_round_trip_keeps_geometry_and_voxels(make_small_case, orientation, tmp_path):
    case = make_small_case(orientation=orientation, origin=(12.5, -30.0, 40.0))
    image = to_sitk(case.hu, case.grid)
    # ITK's index (x, y, z) is (i, j, k): voxel [k, j, i] sits at the patient position the Grid gives it
    k, j, i = 5, 7, 11
    assert np.allclose(image.TransformIndexToPhysicalPoint((i, j, k)), case.grid.index_to_patient([k, j, i]))
    assert image.GetPixel(i, j, k) == case.hu[k, j, i]
    assert image.GetSpacing() == (2.0, 1.5, 2.5)
    array, grid = from_sitk(image)
    assert grid == case.grid and array.dtype == np.int16 and np.array_equal(array, case.hu)
    array, grid = from_sitk(read_image(write_image(case.hu, case.grid, tmp_path / "ct.nii.gz")))
    assert np.array_equal(array, case.hu) and same_grid(grid, case.grid, 1e-4)
    assert np.allclose(grid.spacing, case.grid.spacing) and np.allclose(grid.orientation, orientation)


def test_left_handed_image_is_read_with_its_slices_reversed():
    array = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    image = sitk.GetImageFromArray(array)
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetSpacing((1.0, 1.5, 2.5))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # slices run inferior: z = -(row × column)
    back, grid = from_sitk(image)
    assert grid.origin == (1.0, 2.0, 3.0 - 3 * 2.5) and grid.spacing == (2.5, 1.5, 1.0)
    assert np.array_equal(back, array[::-1])
    for k, j, i in [(0, 0, 0), (3, 2, 1), (1, 2, 0)]:
        itk_k = 3 - k
        assert np.allclose(grid.index_to_patient([k, j, i]), image.TransformIndexToPhysicalPoint((i, j, itk_k)))


def test_bool_mask_becomes_uint8_and_back():
    grid = Grid((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), (3, 4, 5))
    mask = np.zeros(grid.shape, bool)
    mask[1, 2, 3] = True
    assert to_sitk(mask, grid).GetPixelID() == sitk.sitkUInt8
    assert resample(mask, grid, grid, order="nearest", fill=0).dtype == bool


def _smooth(grid: Grid) -> np.ndarray:
    x, y, z = grid.centres()
    return 40.0 + 20.0 * np.exp(-((x - 5) ** 2 + (y + 8) ** 2) / 900.0 - (z - 30) ** 2 / 400.0) + 0.05 * x


@pytest.mark.parametrize("orientation", [(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), HFP], ids=["HFS", "HFP"])
def test_linear_resample_agrees_with_dose_to_grid(orientation):
    """Both trilinear with the nearest edge outside: a 3 mm dose grid onto a finer, larger CT-like grid."""
    src = Grid((-30.0, -24.0, 12.0), (3.0, 3.0, 3.0), (12, 17, 21), orientation)
    dst = Grid((-41.0, -33.5, 4.0), (1.0, 1.1, 2.5), (70, 60, 18), orientation)
    dose = _smooth(src)
    ours = dose_to_grid(dose, src, dst)
    theirs = resample(dose, src, dst, order="linear")
    assert theirs.shape == dst.shape
    assert np.max(np.abs(theirs - ours)) <= 1e-5 * np.max(np.abs(ours))
    assert resample(dose.astype(np.float32), src, dst).dtype == np.float32


def test_nearest_resample_of_labels_keeps_values_and_fills_outside():
    src = Grid((0.0, 0.0, 0.0), (2.0, 2.0, 2.0), (6, 6, 6))
    labels = np.zeros(src.shape, np.uint8)
    labels[2:4, 1:5, 1:5] = 3
    labels[4, 3, 3] = 7
    same = resample(labels, src, src, order="nearest", fill=0)
    assert same.dtype == np.uint8 and np.array_equal(same, labels)
    # the same voxel centres in flipped index order (an RAS-stored NIfTI): exactly the same labels
    flipped = Grid((10.0, 10.0, 0.0), (2.0, 2.0, 2.0), (6, 6, 6), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    assert np.array_equal(resample(labels, src, flipped, order="nearest", fill=0), labels[:, ::-1, ::-1])
    shifted = Grid((0.0, 0.0, 20.0), (2.0, 2.0, 2.0), (6, 6, 6))
    assert not resample(labels, src, shifted, order="nearest", fill=0).any()


def test_bad_order_and_shape_are_refused():
    grid = Grid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (2, 2, 2))
    with pytest.raises(ValueError, match="order"):
        resample(np.zeros((2, 2, 2)), grid, grid, order="cubic")
    with pytest.raises(ValueError, match="shape"):
        to_sitk(np.zeros((2, 2, 3)), grid)
