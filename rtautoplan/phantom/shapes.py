"""Analytic solids on a voxel grid: the building blocks of the synthetic phantoms.

Each function takes the voxel-centre coordinates ``(x, y, z)`` of a grid (mm, from
``Grid.centres()``: arrays broadcastable to the grid's shape) and returns a bool mask of that
shape; nothing loops over voxels. On an open grid (each coordinate along one index axis, as
``Grid.centres()`` gives for axis-aligned grids) a solid is evaluated only on the box of voxels
its bounding box (mm) covers, so its temporaries scale with the solid, not with the grid; the
voxels it selects are exactly those of a whole-grid evaluation.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Coordinates = tuple[np.ndarray, np.ndarray, np.ndarray]

_PAD_MM = 1e-3  # the crop box is this much larger than the solid's bounds: a margin for rounding


def _on_box(xyz: Coordinates, lo, hi, inside: Callable[[Coordinates], np.ndarray]) -> np.ndarray:
    """``inside(xyz)`` (a bool mask) evaluated on the voxels whose x, y, z lie within [lo, hi] (mm),
    False elsewhere; evaluated on the whole grid when the coordinates are not an open grid."""
    shape = np.broadcast_shapes(*(np.shape(c) for c in xyz))
    axes = [np.flatnonzero(np.array(np.shape(c)) > 1) for c in xyz]
    if any(a.size > 1 for a in axes) or len({int(a[0]) for a in axes if a.size}) < sum(a.size for a in axes):
        return np.broadcast_to(inside(xyz), shape).copy()
    box = [slice(None)] * len(shape)
    for c, a, low, high in zip(xyz, axes, lo, hi):
        values = np.ravel(c)
        hits = np.flatnonzero((values >= low - _PAD_MM) & (values <= high + _PAD_MM))
        if hits.size == 0:
            return np.zeros(shape, bool)
        if a.size:
            box[int(a[0])] = slice(int(hits[0]), int(hits[-1]) + 1)
    box = tuple(box)
    out = np.zeros(shape, bool)
    cropped = tuple(np.asarray(c)[tuple(b if n > 1 else slice(None) for b, n in zip(box, np.shape(c)))] for c in xyz)
    out[box] = inside(cropped)
    return out


def ellipsoid(xyz: Coordinates, centre, semi_axes) -> np.ndarray:
    """Voxels inside the axis-aligned ellipsoid with the given centre and semi-axes (mm)."""
    lo = [c0 - abs(a) for c0, a in zip(centre, semi_axes)]
    hi = [c0 + abs(a) for c0, a in zip(centre, semi_axes)]
    return _on_box(xyz, lo, hi, lambda p: sum(((c - c0) / a) ** 2 for c, c0, a in zip(p, centre, semi_axes)) <= 1.0)


def sphere(xyz: Coordinates, centre, radius: float) -> np.ndarray:
    return ellipsoid(xyz, centre, (radius, radius, radius))


def elliptic_cylinder(xyz: Coordinates, centre_xy, semi_xy, z_range) -> np.ndarray:
    """Voxels inside a cylinder along z with an elliptic cross-section, between z_range (mm)."""

    def inside(p):
        x, y, z = p
        disc = ((x - centre_xy[0]) / semi_xy[0]) ** 2 + ((y - centre_xy[1]) / semi_xy[1]) ** 2 <= 1.0
        return disc & (z >= z_range[0]) & (z <= z_range[1])

    lo = (centre_xy[0] - abs(semi_xy[0]), centre_xy[1] - abs(semi_xy[1]), z_range[0])
    hi = (centre_xy[0] + abs(semi_xy[0]), centre_xy[1] + abs(semi_xy[1]), z_range[1])
    return _on_box(xyz, lo, hi, inside)


def capsule(xyz: Coordinates, start, end, radius: float) -> np.ndarray:
    """Voxels within ``radius`` (mm) of the segment from ``start`` to ``end``: a tube with round ends."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start

    def inside(p):
        rel = [c - s for c, s in zip(p, start)]
        t = np.clip(sum(r * a for r, a in zip(rel, axis)) / float(axis @ axis), 0.0, 1.0)
        return sum((r - t * a) ** 2 for r, a in zip(rel, axis)) <= radius**2

    return _on_box(xyz, np.minimum(start, end) - radius, np.maximum(start, end) + radius, inside)


def parabolic_arch(xyz: Coordinates, apex, curvature: float, half_width: float, thickness: float, z_range) -> np.ndarray:
    """A U-shaped bar (mandible body): voxels within ``thickness`` (mm) of the curve
    y = apex_y + curvature·(x − apex_x)², |x − apex_x| ≤ half_width, between z_range."""
    xs = np.linspace(-half_width, half_width, 121)
    curve = np.stack([apex[0] + xs, apex[1] + curvature * xs**2], axis=1)

    def inside(p):
        x, y, z = p
        near = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
        for cx, cy in curve:  # a loop over the 121 curve points, each step vectorised over the grid
            near |= (x - cx) ** 2 + (y - cy) ** 2 <= thickness**2
        return near & (z >= z_range[0]) & (z <= z_range[1])

    lo = (curve[:, 0].min() - thickness, curve[:, 1].min() - thickness, z_range[0])
    hi = (curve[:, 0].max() + thickness, curve[:, 1].max() + thickness, z_range[1])
    return _on_box(xyz, lo, hi, inside)
