"""Beam geometry (IEC 61217) in DICOM patient coordinates, CT → density, and ray tracing.

Coordinate systems (all right-handed, mm):

* DICOM patient (LPS): +x patient left, +y posterior, +z superior.
* IEC 61217 fixed (f): origin at the isocentre, +Z_f up, +Y_f from the isocentre towards the
  gantry stand, +X_f to the right of an observer at the couch foot facing the gantry.
  A head-first-supine (HFS) patient on the couch at 0° lies with left = +X_f,
  superior = +Y_f, anterior = +Z_f.
* Every IEC rotation is right-handed about its axis: gantry about Y_f (0° = source above, 90° =
  source at +X_f, i.e. at the patient's left for HFS), patient support (couch) about Z_f
  (counter-clockwise seen from above; the patient turns with the couch), collimator about the
  beam axis Z_b, which points from the isocentre to the source (the same chain of rotations as
  SlicerRT's IEC transform logic: gantry RotateY, collimator RotateZ, patient support RotateZ).
* Beam's eye view (BEV): axes X_b, Y_b of the beam-limiting-device system; at gantry,
  collimator and couch 0 they are X_f and Y_f. BEV positions (x_b, y_b) are given at the
  isocentre plane, i.e. projected through the source onto the plane normal to the beam axis at
  distance SAD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rtautoplan.case import Grid
from rtautoplan.plan import Beam

SAD_MM = 1000.0  # source-axis distance of C-arm linacs (mm)

# HU → relative electron density (electron density / that of water). RED of the inserts: CIRS
# Model 062M electron density phantom data sheet (lung inhale 0.190, lung exhale 0.489, adipose
# 0.949, muscle 1.043, trabecular bone 200 mg/cm³ HA 1.117, dense bone 800 mg/cm³ HA 1.456);
# HU: typical 120 kVp readings of those inserts; air 0.001 (dry air, 1.205 mg/cm³, NIST);
# the last point extends the bone segment to the 12-bit CT maximum 3071 HU. This is a generic
# calibration for synthetic and test data: clinical use must pass the scanner's own table.
HU_RED_TABLE = np.array(
    [
        (-1000.0, 0.001),
        (-800.0, 0.190),
        (-500.0, 0.489),
        (-90.0, 0.949),
        (0.0, 1.000),
        (40.0, 1.043),
        (240.0, 1.117),
        (930.0, 1.456),
        (3071.0, 2.508),
    ]
)

# Patient (LPS) axes in IEC fixed coordinates at couch 0: v_f = A @ v_patient.
_PATIENT_TO_FIXED = {
    "HFS": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    "HFP": np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float),
    "FFS": np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], float),
    "FFP": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float),
}


def hu_to_red(hu: np.ndarray, table: np.ndarray = HU_RED_TABLE) -> np.ndarray:
    """Relative electron density of CT numbers (HU), piecewise linear in ``table`` (rows HU, RED),
    clamped to the first and last RED outside the table."""
    table = np.asarray(table, float)
    return np.interp(np.asarray(hu, float), table[:, 0], table[:, 1])


def _rotation(axis: int, deg: float) -> np.ndarray:
    """Right-handed rotation matrix by ``deg`` about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@dataclass(frozen=True, eq=False)
class BeamFrame:
    """A beam in patient coordinates (mm): source, isocentre, unit beam direction (source →
    isocentre, −Z_b) and the unit BEV axes u = X_b, v = Y_b."""

    source: np.ndarray
    isocenter: np.ndarray
    direction: np.ndarray
    u: np.ndarray
    v: np.ndarray
    sad_mm: float = SAD_MM

    def to_beam(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BEV position at the isocentre plane (x_b, y_b, mm) and distance along the beam axis
        from the source (t, mm) of patient points ``xyz`` (last axis x y z)."""
        rel = np.asarray(xyz, float) - self.source
        t = rel @ self.direction
        scale = self.sad_mm / t
        return (rel @ self.u) * scale, (rel @ self.v) * scale, t


def beam_frame(beam: Beam, patient_position: str = "HFS", sad_mm: float = SAD_MM) -> BeamFrame:
    """The geometry of ``beam`` in the patient coordinates of a patient in ``patient_position``
    (HFS, HFP, FFS or FFP)."""
    if patient_position not in _PATIENT_TO_FIXED:
        raise ValueError(f"patient position {patient_position!r} is not supported: use one of {sorted(_PATIENT_TO_FIXED)}")
    # Beam-limiting-device axes in f: gantry about Y_f, then collimator about Z_g.
    b_in_f = _rotation(1, beam.gantry_deg) @ _rotation(2, beam.collimator_deg)
    # Fixed → patient: undo the couch rotation about Z_f, then the patient position.
    f_to_patient = _PATIENT_TO_FIXED[patient_position].T @ _rotation(2, beam.couch_deg).T
    x_b, y_b, z_b = (f_to_patient @ b_in_f).T
    iso = np.asarray(beam.isocenter_mm, float)
    return BeamFrame(source=iso + sad_mm * z_b, isocenter=iso, direction=-z_b, u=x_b, v=y_b, sad_mm=sad_mm)


def _fan_coordinates(grid: Grid, frame: BeamFrame, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fan coordinates (a, b, t) of the voxel centres with flat indices ``flat`` (:func:`_fan_of_points`)."""
    return _fan_of_points(frame, grid.index_to_patient(np.stack(np.unravel_index(flat, grid.shape), axis=-1)))


def _fan_of_points(frame: BeamFrame, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fan coordinates (a, b, t) of patient points ``xyz`` (mm): the point is
    source + t·(direction + a·u + b·v), so (a, b) label the ray (tangents) and t the depth (mm)."""
    rel = xyz - frame.source
    t = rel @ frame.direction
    return (rel @ frame.u) / t, (rel @ frame.v) / t, t


def _box_corners(grid: Grid) -> np.ndarray:
    """Patient coordinates of the 8 outer corners of the grid (voxel faces, not centres)."""
    lo, hi = -0.5, np.asarray(grid.shape, float) - 0.5
    corners = np.array(np.meshgrid(*[(lo, h) for h in hi], indexing="ij")).reshape(3, -1).T
    return grid.index_to_patient(corners)


def radiological_depth(
    red: np.ndarray,
    grid: Grid,
    frame: BeamFrame,
    voxels: np.ndarray | None = None,
    lateral_mm: float | None = None,
    step_mm: float | None = None,
    chunk: int = 1 << 21,
) -> np.ndarray:
    """Water-equivalent depth (mm) along the diverging ray from the source to each voxel centre.

    red: relative electron density on ``grid`` ([k, j, i]); outside the grid counts as vacuum.
    voxels: bool mask of the voxels wanted (default all); the others get NaN.
    lateral_mm, step_mm: ray spacing at the isocentre plane and sampling step along each ray
    (both default to half the finest voxel spacing).

    Method: each voxel is a cube of uniform density (as in Siddon's algorithm, Med Phys 12:252,
    1985). The density is sampled (nearest voxel) along a fan of rays from the source, summed
    along each ray (trapezoid rule), and the running sum is interpolated back at the voxel
    centres (trilinear in ray tangents and depth). Divergence is exact; the errors are the
    sampling steps: ≤ step/2 per density edge crossed, and the lateral interpolation between
    rays, which matters only where rays graze a density edge (tangential skin, beam-parallel
    interfaces). Measured in a water box on a 3 × 2 × 1.5 mm grid: median 0.1 mm, max 0.8 mm.
    """
    wanted = np.ones(grid.shape, bool) if voxels is None else np.asarray(voxels, bool)
    flat = np.flatnonzero(wanted)
    out = np.full(grid.shape, np.nan, np.float32)
    if flat.size:
        xyz = grid.index_to_patient(np.stack(np.unravel_index(flat, grid.shape), axis=-1))
        out.flat[flat] = radiological_depth_at(red, grid, frame, xyz, lateral_mm, step_mm, chunk)
    return out


def radiological_depth_at(red: np.ndarray, grid: Grid, frame: BeamFrame, xyz: np.ndarray,
                          lateral_mm: float | None = None, step_mm: float | None = None,
                          chunk: int = 1 << 21) -> np.ndarray:
    """Water-equivalent depth (mm, float32, one per point) at arbitrary patient points ``xyz``
    ((n, 3), mm) through the densities ``red`` on ``grid``: :func:`radiological_depth`'s fan, read
    at the points instead of at the grid's voxel centres (e.g. a dose grid that is not the CT's)."""
    red = np.ascontiguousarray(red, np.float32)
    if red.shape != tuple(grid.shape):
        raise ValueError(f"density shape {red.shape} differs from grid shape {grid.shape}")
    xyz = np.asarray(xyz, float).reshape(-1, 3)
    out = np.full(len(xyz), np.nan, np.float32)
    if not len(xyz):
        return out
    finest = float(min(grid.spacing))
    da = (lateral_mm or finest / 2.0) / frame.sad_mm
    dt = step_mm or finest / 2.0
    a, b, t = _fan_of_points(frame, xyz)
    if np.any(t <= 0):
        raise ValueError("some voxels lie behind the source: check the isocentre (mm) and the grid origin")
    a_axis = np.arange(a.min() - da, a.max() + 2 * da, da)
    b_axis = np.arange(b.min() - da, b.max() + 2 * da, da)
    t_start = max(float(((_box_corners(grid) - frame.source) @ frame.direction).min()) - dt, dt)
    t_axis = np.arange(t_start, t.max() + 2 * dt, dt)
    cumulative = _integrate_fan(red, grid, frame, a_axis, b_axis, t_axis, chunk)
    for lo in range(0, len(xyz), chunk):
        sl = slice(lo, lo + chunk)
        coords = np.stack([(a[sl] - a_axis[0]) / da, (b[sl] - b_axis[0]) / da, (t[sl] - t_start) / dt])
        out[sl] = ndimage.map_coordinates(cumulative, coords, order=1, mode="nearest")
    return out


def _integrate_fan(red, grid: Grid, frame: BeamFrame, a_axis, b_axis, t_axis, chunk: int) -> np.ndarray:
    """Water-equivalent path length (mm) from ``t_axis[0]`` to each fan-grid point [a, b, t]."""
    to_index = grid.axes.T / np.asarray(grid.spacing)  # patient direction → index step
    source = grid.patient_to_index(frame.source)
    d, u, v = (w @ to_index for w in (frame.direction, frame.u, frame.v))
    dt = t_axis[1] - t_axis[0] if t_axis.size > 1 else 0.0
    out = np.zeros((a_axis.size, b_axis.size, t_axis.size), np.float32)
    rows = max(1, chunk // (b_axis.size * t_axis.size))
    t = t_axis[None, None, :]
    bb = b_axis[None, :, None]
    padded = np.append(red.ravel(), np.float32(0.0))  # the last entry stands for "outside"
    strides = np.array(red.strides) // red.itemsize
    for lo in range(0, a_axis.size, rows):
        aa = a_axis[lo : lo + rows, None, None]
        flat = np.zeros((aa.shape[0], b_axis.size, t_axis.size), np.intp)
        outside = np.zeros(flat.shape, bool)
        for c in range(3):  # nearest voxel, as map_coordinates(order=0) but faster
            index = np.rint(source[c] + t * (d[c] + aa * u[c] + bb * v[c])).astype(np.intp)
            outside |= (index < 0) | (index >= red.shape[c])
            flat += index * strides[c]
        flat[outside] = red.size
        rho = padded[flat]
        ray_length = np.sqrt(1.0 + aa**2 + bb**2) * dt  # path length of one step along each ray
        steps = 0.5 * (rho[..., 1:] + rho[..., :-1]) * ray_length
        out[lo : lo + rows, :, 1:] = np.cumsum(steps, axis=-1)
    return out


def beamlet_grid(
    target_mask: np.ndarray, grid: Grid, frame: BeamFrame, size_mm: float = 5.0, margin_mm: float = 5.0
) -> np.ndarray:
    """BEV centres (n, 2: x_b, y_b in mm at the isocentre plane) of the square beamlets of side
    ``size_mm`` whose aperture comes within ``margin_mm`` (Euclidean) of the projection of a target
    voxel centre. Beamlet edges lie on multiples of size_mm, so the central axis runs along a
    beamlet edge, as it does along a leaf edge of common MLCs. Sorted by y_b, then x_b."""
    flat = np.flatnonzero(np.asarray(target_mask, bool))
    if flat.size == 0:
        raise ValueError("the target mask is empty: no beamlets to place")
    a, b, _ = _fan_coordinates(grid, frame, flat)
    p = np.stack([a, b], axis=-1) * frame.sad_mm  # (n, 2) projected voxel centres
    reach = size_mm / 2.0 + margin_mm
    lo = np.ceil((p - reach) / size_mm - 0.5).astype(np.int64)
    k = int(np.floor(2.0 * reach / size_mm)) + 1  # candidate lattice cells per axis
    offsets = np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2)
    cells = lo[:, None, :] + offsets[None, :, :]  # (n, k², 2) lattice indices
    centres = (cells + 0.5) * size_mm
    gap = np.maximum(np.abs(centres - p[:, None, :]) - size_mm / 2.0, 0.0)
    keep = np.einsum("nkc,nkc->nk", gap, gap) <= margin_mm**2 + 1e-9
    kept = cells[keep]
    low, span = kept.min(axis=0), np.ptp(kept, axis=0) + 1
    key = np.unique((kept[:, 1] - low[1]) * span[0] + (kept[:, 0] - low[0]))  # sorted by y_b, then x_b
    unique = np.stack([key % span[0] + low[0], key // span[0] + low[1]], axis=-1)
    return (unique + 0.5) * size_mm
