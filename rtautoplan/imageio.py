"""Images in and out through SimpleITK: our (array, Grid) pairs as SimpleITK images, and resampling.

Geometry, exactly: a Grid's array is indexed ``[k, j, i]`` (slice, row, column), which is what
``sitk.GetArrayFromImage`` returns for an image whose index is (x, y, z) = (i, j, k). So the image's
spacing is (column, row, slice) mm, its origin the patient position (mm) of the centre of voxel
[0, 0, 0] (ITK's origin is a voxel centre too, and ImagePositionPatient is one), and its direction
matrix has as columns the row direction (ImageOrientationPatient[:3]), the column direction
(ImageOrientationPatient[3:]) and the slice normal (their cross product). SimpleITK works in DICOM's
LPS patient coordinates and converts NIfTI's RAS on reading and writing, so a NIfTI or NRRD file
written here opens in the right place in ITK-SNAP, 3D Slicer and nibabel-based tools.

An image whose slice axis runs against row × column (a left-handed direction matrix, as some NIfTI
writers produce) is read with its slices reversed, since a Grid's slice axis is always row × column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtautoplan.case import Grid

GEOMETRY_TOLERANCE_MM = 0.01  # voxel centres this close count as the same grid (NIfTI stores float32)
_ORDERS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    """A SimpleITK image of ``array`` ([k, j, i] on ``grid``; bool becomes uint8) with the grid's geometry."""
    array = np.asarray(array)
    if array.shape != tuple(grid.shape):
        raise ValueError(f"array shape {array.shape} is not the grid's {tuple(grid.shape)}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(tuple(float(v) for v in grid.origin))
    dz, row, col = grid.spacing
    image.SetSpacing((float(col), float(row), float(dz)))
    image.SetDirection(tuple(float(v) for v in _direction(grid).ravel()))
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, Grid]:
    """The array ([k, j, i]) and Grid of a 3D single-component SimpleITK image; ValueError for any other,
    and for a sheared one (its slice axis not perpendicular to the rows and columns)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} components "
                         "per voxel, not a 3D scalar image")
    array = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    handed = float(np.cross(row, col) @ normal)
    if abs(abs(handed) - 1.0) > 1e-4:
        raise ValueError(f"direction matrix {direction.round(5).tolist()} is not orthonormal (sheared image)")
    sx, sy, sz = image.GetSpacing()
    origin = np.asarray(image.GetOrigin(), float)
    if handed < 0:  # slice axis against row × column: reverse the slices, start from the last one
        origin = origin + (array.shape[0] - 1) * sz * normal
        array = np.ascontiguousarray(array[::-1])
    grid = Grid(tuple(float(v) for v in origin), (float(sz), float(sy), float(sx)), tuple(array.shape),
                tuple(float(v) for v in np.concatenate([row, col])))
    return array, grid


def write_image(array: np.ndarray, grid: Grid, path: str | Path) -> Path:
    """Write ``array`` on ``grid`` to ``path`` (the format from the suffix: .nii.gz, .nii, .nrrd, .mha …),
    compressed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(array, grid), str(path), useCompression=True)
    return path


def read_image(path: str | Path) -> sitk.Image:
    """The image in ``path`` (any format SimpleITK reads); RuntimeError when it cannot be read."""
    return sitk.ReadImage(str(path))


def same_grid(a: Grid, b: Grid, tolerance_mm: float = GEOMETRY_TOLERANCE_MM) -> bool:
    """Whether every voxel centre of ``a`` is within ``tolerance_mm`` of the same voxel's centre of ``b``."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    far = np.asarray(a.shape, float) - 1
    corners = np.array([[k, j, i] for k in (0, far[0]) for j in (0, far[1]) for i in (0, far[2])])
    return bool(np.max(np.abs(a.index_to_patient(corners) - b.index_to_patient(corners))) <= tolerance_mm)


def resample(array: np.ndarray, src: Grid, dst: Grid, order: str = "linear", fill: float | None = None) -> np.ndarray:
    """``array`` on ``src`` resampled at the voxel centres of ``dst`` by SimpleITK's ResampleImageFilter.

    order: "linear" (trilinear; the result is floating point, float32 input stays float32) or "nearest"
    (the dtype is kept: labels and masks). fill: the value outside ``src``; None extends the nearest edge
    voxel, as ``physics.dij.dose_to_grid`` does. The grids may differ in every respect, orientation too."""
    if order not in _ORDERS:
        raise ValueError(f"order must be 'linear' or 'nearest', not {order!r}")
    array = np.asarray(array)
    dtype = array.dtype
    if order == "linear" and not np.issubdtype(dtype, np.floating):
        array = array.astype(np.float64)
    if fill is None:
        array, src = _pad_to_cover(array, src, dst)
    image = to_sitk(array, src)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in dst.shape[::-1]])
    resampler.SetOutputOrigin(tuple(float(v) for v in dst.origin))
    resampler.SetOutputSpacing(tuple(float(v) for v in dst.spacing[::-1]))
    resampler.SetOutputDirection(tuple(float(v) for v in _direction(dst).ravel()))
    resampler.SetInterpolator(_ORDERS[order])
    resampler.SetOutputPixelType(image.GetPixelID())
    resampler.SetDefaultPixelValue(0.0 if fill is None else float(fill))
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    return out.astype(bool) if dtype == bool else out


def _pad_to_cover(array: np.ndarray, src: Grid, dst: Grid) -> tuple[np.ndarray, Grid]:
    """``array`` extended by copies of its edge voxels until ``src`` covers every voxel centre of ``dst``.

    ITK's linear interpolator clamps to the edge only within half a voxel of it, and its nearest-neighbour
    extrapolator is nearest in every axis; this makes the value outside ``src`` the trilinear one on the
    nearest face, as scipy's ``map_coordinates(mode="nearest")`` gives."""
    far = np.asarray(dst.shape, float) - 1
    corners = np.array([[k, j, i] for k in (0, far[0]) for j in (0, far[1]) for i in (0, far[2])])
    index = src.patient_to_index(dst.index_to_patient(corners))
    last = np.asarray(src.shape) - 1
    before = np.ceil(np.maximum(0.0, -index.min(axis=0))).astype(int)
    after = np.ceil(np.maximum(0.0, index.max(axis=0) - last)).astype(int)
    if not before.any() and not after.any():
        return array, src
    padded = np.pad(array, list(zip(before, after)), mode="edge")
    origin = src.index_to_patient(-before.astype(float))
    return padded, Grid(tuple(float(v) for v in origin), src.spacing, padded.shape, src.orientation)


def _direction(grid: Grid) -> np.ndarray:
    """ITK's direction matrix of ``grid``: columns are the patient directions of the i, j and k index axes."""
    return grid.axes[::-1].T
