"""Margins in mm on anisotropic grids: expansion, shrinking and distance maps (SPEC §2.3, §3.1).

A mask stands for the solid made of its voxels' boxes, as a contour drawn around them would.
A margin is exact in mm on that solid: a voxel belongs to ``expand(mask, spacing, mm)`` iff its
centre lies within ``mm`` of the solid (of the nearest mask voxel's box); ``shrink`` is the dual
(a voxel stays iff its centre is farther than ``mm`` from every outside voxel's box). So a 2 mm
Gap on 2.5 mm pixels is one voxel thick (its centres are 1.25 mm from the PTV surface), not empty,
and a 3 mm margin on a 1 mm grid adds exactly three voxels. Distances come from one Euclidean
distance transform of the voxel-box metric (separable, see ``_box_distance``) — never from
iterated dilation, whose kernel is a diamond or a cube, not a ball, and whose error grows with
the margin.

Arrays are indexed ``[k, j, i]`` and ``spacing`` is ``(dz, dy, dx)`` in mm, as ``Grid.spacing``.
The transforms run on the mask's bounding box padded by the margin, so their cost scales with
the structure, not with the grid. The grid edge is not a boundary: voxels beyond it are
neither in the mask nor outside it (a structure cut by the scan extent is not shrunk from
the cut face), exactly what a full-grid transform would give.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rtautoplan.threads import for_each, slabs

Box = tuple[slice, slice, slice]

# Tolerance (mm) on the margin comparison, so that a distance equal to the margin up to
# floating-point rounding (e.g. 3 mm on a 3 mm axis) counts as inside.
_EPS_MM = 1e-6


def bounding_box(mask: np.ndarray, pad: tuple[int, int, int] = (0, 0, 0)) -> Box | None:
    """The smallest box (slices) holding every True voxel, grown by ``pad`` voxels per axis and
    clipped to the array; None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(hits[0] - pad[axis], 0), min(hits[-1] + 1 + pad[axis], mask.shape[axis])))
    return tuple(box)


def intersect(a: Box | None, b: Box | None) -> Box | None:
    """The common part of two boxes, or None when they do not overlap."""
    if a is None or b is None:
        return None
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.start >= s.stop for s in box) else box


def _pad(spacing: tuple[float, float, float], mm: float) -> tuple[int, int, int]:
    """Voxels per axis that a margin of ``mm`` can reach, plus one."""
    return tuple(int(math.ceil((mm + _EPS_MM) / s)) + 1 for s in spacing)


def _check(mask: np.ndarray, spacing, mm: float) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"need a 3-D mask and three positive spacings (mm); got shape {mask.shape}, spacing {spacing}")
    if not mm >= 0:
        raise ValueError(f"margin must be ≥ 0 mm, got {mm}")
    return mask


def _box_distance(mask: np.ndarray, spacing, limit_mm: float | None = None) -> np.ndarray:
    """Distance (mm) from every voxel centre to the nearest mask voxel's box: 0 inside the mask,
    half a spacing for a face neighbour.

    Exact, by a separable transform: the squared distance to a box is a sum of per-axis terms
    ((|n| − ½)·s)² for an offset of n ≥ 1 voxels, so three 1-D min-plus convolutions (one per axis,
    :func:`_min_plus_lines`) give the minimum over all mask voxels. Distances ≤ limit_mm are
    exact; larger ones come back as some value > limit_mm (or +inf)."""
    squared = np.where(mask, 0.0, np.inf)
    for axis, step in enumerate(spacing):
        reach = mask.shape[axis] - 1 if limit_mm is None else min(int(math.ceil(limit_mm / step + 0.5)),
                                                                    mask.shape[axis] - 1)
        costs = np.array([0.0] + [((n - 0.5) * step) ** 2 for n in range(1, reach + 1)])
        # (outer, line, columns) for the first two axes: whole rows of the last axis are read and written at a
        # time. The lines are independent, so slabs of the outer axis run on the engine's threads (exact).
        kernel, a = ((_min_plus_lines, squared) if axis == 2 else
                     (_min_plus_columns, squared if axis == 1 else np.moveaxis(squared, 0, 1)))
        for_each(lambda part: kernel(a[part], costs), slabs(a.shape[0]), name="distance")
    return np.sqrt(squared, out=squared)


@njit(nogil=True, cache=True)
def _min_plus_columns(a, costs):
    """:func:`_min_plus_lines` along the middle axis of ``a`` (outer, line, columns), the columns copied
    slab by slab into contiguous lines so that memory is read row by row, not one page per value."""
    outer, length, width = a.shape
    lines = np.empty((1, width, length))
    for p in range(outer):
        for m in range(length):
            for w in range(width):
                lines[0, w, m] = a[p, m, w]
        _min_plus_lines(lines, costs)
        for m in range(length):
            for w in range(width):
                a[p, m, w] = lines[0, w, m]


@njit(nogil=True, cache=True)
def _min_plus_lines(a, costs):
    """In place along the last axis of ``a`` (squared mm, ≥ 0 or +inf): a[m] ← min(a[m], a[m ± n] +
    costs[n]) for 1 ≤ n < len(costs), costs increasing. Offsets are visited from the nearest finite
    value outwards and the search stops once costs[n] ≥ the best value (no farther value can be
    lower), so a voxel costs its distance to its minimum, not the reach; the candidates and their
    sums are those of the all-offsets loop, so the result is the same to the bit."""
    n0, n1, length = a.shape
    reach = costs.size - 1
    line = np.empty(length)
    before = np.empty(length, np.int64)
    after = np.empty(length, np.int64)
    for p in range(n0):
        for q in range(n1):
            last = -1
            for m in range(length):
                line[m] = a[p, q, m]
                if line[m] < np.inf:
                    last = m
                before[m] = last
            if last < 0:
                continue
            nearest = -1
            for m in range(length - 1, -1, -1):
                if line[m] < np.inf:
                    nearest = m
                after[m] = nearest
            for m in range(length):
                best = line[m]
                left = m - before[m] if before[m] >= 0 else length
                right = after[m] - m if after[m] >= 0 else length
                n = max(1, min(left, right))
                while n <= reach and costs[n] < best:
                    if m - n >= 0 and line[m - n] + costs[n] < best:
                        best = line[m - n] + costs[n]
                    if m + n < length and line[m + n] + costs[n] < best:
                        best = line[m + n] + costs[n]
                    n += 1
                a[p, q, m] = best


def _near(mask: np.ndarray, spacing, mm: float) -> tuple[Box | None, np.ndarray | None]:
    """Distances (mm) to the mask on its bounding box padded by ``mm``: exact for every voxel in
    the box, since the box holds the whole mask."""
    box = bounding_box(mask, _pad(spacing, mm))
    if box is None:
        return None, None
    return box, _box_distance(mask[box], spacing, mm)


def expand(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """``mask ⊕ mm``: every voxel whose centre lies within ``mm`` (mm) of the mask's voxel boxes."""
    mask = _check(mask, spacing, mm)
    out = np.zeros_like(mask)
    box, distance = _near(mask, spacing, mm)
    if box is not None:
        out[box] = distance <= mm + _EPS_MM
    return out


def shrink(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """``mask ⊖ mm``: the mask voxels whose centre is farther than ``mm`` (mm) from every
    non-mask voxel box of the grid; equal to ``~expand(~mask, mm)``."""
    mask = _check(mask, spacing, mm)
    out = np.zeros_like(mask)
    box = bounding_box(mask, (1, 1, 1))  # one layer of outside voxels suffices (see module doc)
    if box is None:
        return out
    inside = mask[box]
    if inside.all():  # no outside voxel on the grid within reach: nothing to shrink from
        return mask.copy()
    out[box] = _box_distance(~inside, spacing, mm) > mm + _EPS_MM
    return out


def distance_mm(mask: np.ndarray, spacing: tuple[float, float, float], within_mm: float | None = None) -> np.ndarray:
    """Distance (mm, float64) from every voxel centre to the mask's voxel boxes; 0 inside the
    mask, +inf everywhere for an empty mask.

    within_mm: when only distances up to this are needed, the transform runs on the mask's box
    padded by it, and every voxel farther than ``within_mm`` is +inf.
    """
    mask = _check(mask, spacing, 0.0 if within_mm is None else within_mm)
    out = np.full(mask.shape, np.inf)
    if within_mm is None:
        if mask.any():
            out = _box_distance(mask, spacing)
        return out
    box, distance = _near(mask, spacing, within_mm)
    if box is not None:
        out[box] = np.where(distance <= within_mm + _EPS_MM, distance, np.inf)
    return out


def shell(mask: np.ndarray, spacing: tuple[float, float, float], inner_mm: float, outer_mm: float) -> np.ndarray:
    """``(mask ⊕ outer_mm) \\ (mask ⊕ inner_mm)``: voxels farther than ``inner_mm`` and at most
    ``outer_mm`` (mm) from the mask; ``inner_mm = 0`` excludes the mask itself."""
    if not 0 <= inner_mm <= outer_mm:
        raise ValueError(f"need 0 ≤ inner_mm ≤ outer_mm, got {inner_mm}, {outer_mm}")
    mask = _check(mask, spacing, outer_mm)
    out = np.zeros_like(mask)
    box, distance = _near(mask, spacing, outer_mm)
    if box is not None:
        out[box] = (distance > inner_mm + _EPS_MM) & (distance <= outer_mm + _EPS_MM)
    return out
