"""Masks to planar contours and back, exactly.

``mask_to_contours`` traces each slice with marching squares (``skimage.measure.find_contours`` at
level 0.5 on the zero-padded slice, so every contour closes): vertices lie halfway between pixel
centres, so no pixel centre is ever on a contour. ``contours_to_mask`` fills the contours of a slice
with the even-odd rule (holes and islands: contours on one slice combine by XOR), testing pixel
centres. The round trip mask → contours → mask is therefore exact, for any pixel size, as long as
the contour points are kept to better than a quarter pixel (we round ContourData to 0.01 mm).

The fill is a vectorised scanline: each polygon edge toggles, on every pixel row it crosses, the
pixels right of the crossing. It gives the same answer as ``matplotlib.path.Path.contains_points``
on pixel centres (tests check this) at a fraction of its cost, which grows with
edges × pixels (seconds per slice for a body outline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import measure

from rtautoplan.case import Grid
from rtautoplan.errors import InputError
from rtautoplan.mask import Mask

SLICE_TOLERANCE = 0.25  # a contour may be off its slice plane by at most this fraction of the slice step
_EDGE_MM = 0.01  # contour points may lie this far beyond the CT's outer pixel edges (ContourData is rounded)


def mask_to_contours(mask: Mask | np.ndarray, grid: Grid) -> list[tuple[int, np.ndarray]]:
    """Closed planar contours of a Mask or a bool ``[k, j, i]`` array: ``(k, points)`` with points (n, 3),
    patient x y z in mm, not repeating the first point (CLOSED_PLANAR). Collinear points are dropped."""
    if isinstance(mask, Mask):
        mask, (k0, j0, i0) = mask.crop, mask.start
    else:
        mask, (k0, j0, i0) = np.asarray(mask, bool), (0, 0, 0)
    contours = []
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        rows = np.flatnonzero(mask[k].any(axis=1))
        cols = np.flatnonzero(mask[k].any(axis=0))
        crop = mask[k, rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        offset = np.array([rows[0] + j0 - 1.0, cols[0] + i0 - 1.0])  # the crop, padded by one pixel
        for rc in measure.find_contours(np.pad(crop, 1).astype(np.float32), 0.5):
            ji = _corners(rc[:-1] + offset)
            kji = np.column_stack([np.full(len(ji), float(k + k0)), ji])
            contours.append((int(k + k0), grid.index_to_patient(kji)))
    return contours


def _corners(ring: np.ndarray) -> np.ndarray:
    """The vertices of a closed polyline (n, 2) that are not repeats nor on a straight line."""
    ring = ring[np.any(ring != np.roll(ring, 1, axis=0), axis=1)]
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(turn) > 1e-9]


@dataclass(frozen=True)
class Outside:
    """What of a ROI's contours lies off the CT, for messages.

    off_slices_z: z (mm) of the contours beyond the first or last CT slice; clipped: contours with
    points beyond the CT's in-plane edge; total: all contours; roi_extent / ct_extent: "z = … to … mm"
    (and x, y when in-plane points are off) of the ROI's points and of the CT."""

    off_slices_z: tuple[float, ...]
    clipped: int
    total: int
    roi_extent: str
    ct_extent: str

    def __str__(self) -> str:
        n = len(self.off_slices_z) + self.clipped
        return (f"{n} of its {self.total} contours lie{'s' if n == 1 else ''} (partly) outside the CT: the ROI spans "
                f"{self.roi_extent}, the CT {self.ct_extent}")


def contours_to_mask(contours: list[np.ndarray], grid: Grid, roi: str) -> np.ndarray:
    """Bool ``[k, j, i]`` mask of closed planar contours (each (n, 3), patient mm).

    Each contour goes to the slice it lies on; contours on one slice combine by the even-odd rule.
    Raises InputError naming ``roi`` and the z of a contour that is not planar, lies between slices
    (more than 1/4 of the slice step off the nearest one) or outside the CT; parts beyond the CT's
    in-plane edge are cut off.
    """
    mask, outside = roi_mask(contours, grid, roi)
    if outside is not None and outside.off_slices_z:
        first, last = (float(grid.index_to_patient([k, 0, 0])[2]) for k in (0, grid.shape[0] - 1))
        raise InputError(f"RTSTRUCT ROI '{roi}'", f"a contour at z = {outside.off_slices_z[0]:.2f} mm lies outside "
                                                  f"the CT (slices from z = {first:.2f} to {last:.2f} mm)",
                         "Export the RTSTRUCT together with the CT series it was drawn on")
    return mask


def roi_mask(contours: list[np.ndarray], grid: Grid, roi: str) -> tuple[np.ndarray, Outside | None]:
    """The mask of the contours' part on the CT, and what lies outside it (None: nothing).

    Contours beyond the first or last slice are left out, contours beyond the in-plane edge cut off;
    the caller decides whether that is acceptable for the ROI. InputError as ``contours_to_mask``
    for a contour that is not planar or lies between slices."""
    mask = np.zeros(grid.shape, bool)
    by_slice: dict[int, list[np.ndarray]] = {}
    off_slices, clipped = [], 0
    low = -0.5 - _EDGE_MM / np.asarray(grid.spacing[1:])
    high = np.asarray(grid.shape[1:]) - 0.5 + _EDGE_MM / np.asarray(grid.spacing[1:])
    for points in contours:
        points = np.asarray(points, float).reshape(-1, 3)
        k, ji = _slice_of(points, grid, roi)
        if k is None:
            off_slices.append(float(np.mean(points[:, 2])))
            continue
        clipped += bool(np.any(ji < low) or np.any(ji > high))
        by_slice.setdefault(k, []).append(ji)
    for k, polygons in by_slice.items():
        mask[k] = fill_even_odd(polygons, grid.shape[1:])
    if not off_slices and not clipped:
        return mask, None
    return mask, Outside(tuple(off_slices), clipped, len(contours), *_extents(contours, grid, clipped > 0))


def _extents(contours: list[np.ndarray], grid: Grid, in_plane: bool) -> tuple[str, str]:
    """"z = a to b mm" (and x, y when ``in_plane``) of the contour points and of the CT (voxel edges in-plane)."""
    points = np.concatenate([np.asarray(p, float).reshape(-1, 3) for p in contours])
    nk, nj, ni = grid.shape
    corners = np.array([[k, j, i] for k in (0, nk - 1) for j in (-0.5, nj - 0.5) for i in (-0.5, ni - 0.5)])
    ct = grid.index_to_patient(corners)
    axes = (0, 1, 2) if in_plane else (2,)
    return _span(points, axes), _span(ct, axes)


def _span(xyz: np.ndarray, axes: tuple[int, ...]) -> str:
    return ", ".join(f"{'xyz'[a]} = {xyz[:, a].min():.2f} to {xyz[:, a].max():.2f} mm" for a in axes)


def _slice_of(points: np.ndarray, grid: Grid, roi: str) -> tuple[int | None, np.ndarray]:
    """The slice index of a planar contour (None beyond the first or last slice) and its (n, 2)
    fractional (j, i) vertices."""
    kji = grid.patient_to_index(points)
    k_all = kji[:, 0]
    k = int(np.rint(np.median(k_all)))
    dz = grid.spacing[0]
    z = float(np.mean(points[:, 2]))
    where = f"RTSTRUCT ROI '{roi}'"
    if np.ptp(k_all) > 2 * SLICE_TOLERANCE:
        raise InputError(where, f"the contour near z = {z:.2f} mm is not planar: its points span "
                                f"{np.ptp(k_all) * dz:.2f} mm across the slices (slice step {dz:g} mm)",
                         "Contour the ROI slice by slice on this CT in the TPS and re-export the RTSTRUCT")
    if not 0 <= k < grid.shape[0]:
        return None, kji[:, 1:]
    off = float(np.max(np.abs(k_all - k)))
    if off > SLICE_TOLERANCE:
        slice_z = float(grid.index_to_patient([k, 0, 0])[2])
        raise InputError(where, f"a contour at z = {z:.2f} mm is {off * dz:.2f} mm off the nearest CT slice "
                                f"(z = {slice_z:.2f} mm; tolerance 1/4 of the {dz:g} mm slice step)",
                         "Export the RTSTRUCT together with the CT series it was drawn on")
    return k, kji[:, 1:]


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool (rows, columns) image of the pixel centres inside ``polygons`` (each (n, 2) fractional row,
    column vertices, implicitly closed) by the even-odd rule."""
    rows, cols = shape
    starts = np.concatenate([np.asarray(p, float) for p in polygons])
    ends = np.concatenate([np.roll(np.asarray(p, float), -1, axis=0) for p in polygons])
    low = np.minimum(starts[:, 0], ends[:, 0])
    high = np.maximum(starts[:, 0], ends[:, 0])
    # an edge crosses rows r with low <= r < high (half-open, so a vertex on a row counts once)
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    count = stop - first
    edge = np.repeat(np.arange(len(starts)), count)
    row = first[edge] + np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count)
    a, b = starts[edge], ends[edge]
    x = a[:, 1] + (row - a[:, 0]) * (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0])
    column = np.clip(np.floor(x).astype(np.int64) + 1, 0, cols)  # first pixel centre right of the crossing
    out = np.zeros(shape, bool)
    if row.size == 0:
        return out
    # Only the crossings' box: left of the first crossing the parity is 0, right of the last every row has
    # crossed its (closed) polygons an even number of times, so 0 too; inside it, the cumulative parity.
    r0, c0 = int(row.min()), int(column.min())
    nr, nc = int(row.max()) - r0 + 1, int(column.max()) - c0 + 1
    toggles = np.bincount((row - r0) * nc + (column - c0), minlength=nr * nc).reshape(nr, nc)
    width = min(c0 + nc - 1, cols) - c0
    out[r0:r0 + nr, c0:c0 + width] = (np.cumsum(toggles[:, :width], axis=1) % 2).astype(bool)
    return out
