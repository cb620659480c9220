"""Analytic solids on a voxel grid: the building blocks of the synthetic phantoms.

Each function takes the voxel-centre coordinates ``(x, y, z)`` of a grid (mm, from
``Grid.centres()``) and returns a boolean mask; nothing loops over voxels.
"""

from __future__ import annotations

import numpy as np

Coordinates = tuple[np.ndarray, np.ndarray, np.ndarray]


def ellipsoid(xyz: Coordinates, centre, semi_axes) -> np.ndarray:
    """Voxels inside the axis-aligned ellipsoid with the given centre and semi-axes (mm)."""
    return sum(((c - c0) / a) ** 2 for c, c0, a in zip(xyz, centre, semi_axes)) <= 1.0


def sphere(xyz: Coordinates, centre, radius: float) -> np.ndarray:
    return ellipsoid(xyz, centre, (radius, radius, radius))


def elliptic_cylinder(xyz: Coordinates, centre_xy, semi_xy, z_range) -> np.ndarray:
    """Voxels inside a cylinder along z with an elliptic cross-section, between z_range (mm)."""
    x, y, z = xyz
    inside = ((x - centre_xy[0]) / semi_xy[0]) ** 2 + ((y - centre_xy[1]) / semi_xy[1]) ** 2 <= 1.0
    return inside & (z >= z_range[0]) & (z <= z_range[1])


def capsule(xyz: Coordinates, start, end, radius: float) -> np.ndarray:
    """Voxels within ``radius`` (mm) of the segment from ``start`` to ``end``: a tube with round ends."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    rel = [c - s for c, s in zip(xyz, start)]
    t = np.clip(sum(r * a for r, a in zip(rel, axis)) / float(axis @ axis), 0.0, 1.0)
    return sum((r - t * a) ** 2 for r, a in zip(rel, axis)) <= radius**2


def parabolic_arch(xyz: Coordinates, apex, curvature: float, half_width: float, thickness: float, z_range) -> np.ndarray:
    """A U-shaped bar (mandible body): voxels within ``thickness`` (mm) of the curve
    y = apex_y + curvature·(x − apex_x)², |x − apex_x| ≤ half_width, between z_range."""
    x, y, z = xyz
    xs = np.linspace(-half_width, half_width, 121)
    curve = np.stack([apex[0] + xs, apex[1] + curvature * xs**2], axis=1)
    near = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)
    for cx, cy in curve:  # a loop over the 121 curve points, each step vectorised over the grid
        near |= (x - cx) ** 2 + (y - cy) ** 2 <= thickness**2
    return near & (z >= z_range[0]) & (z <= z_range[1])
