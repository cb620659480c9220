"""The patient on the simulator's dose grid (stage 1 of ``engine``): blocks of CT voxels, the
objective points of every ROI with their tissue, and the trilinear interpolation between the two
grids (to the objective points, and of whole dose arrays back to the CT grid).

Objective points are the ROI's CT voxels, trilinear from the dose grid: the dose the optimiser
sees is exactly the dose ``dose_on_ct`` reports there, so an objective met is met on the written
dose. (Points at the dose-grid voxel centres inside an ROI, the earlier choice, never see the
ROI's edge voxels, which the interpolation fills from dose-grid voxels outside the ROI: a carbon
CTV of 18 cm³ met every objective at its 103 centres with D98 = 38 of 70 Gy(RBE) on the CT grid.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from rtautoplan.case import Case, Grid
from rtautoplan.physics import rbe

MAX_POINTS_PER_ROI = 60_000  # CT voxels of one ROI beyond this: an even stride
GEOMETRY_VERSION = 2  # part of the content address: 2 = objective points on CT voxels, several targets
TUMOUR = rbe.TISSUES["tumour"]  # α/β = 10 Gy: every target ROI
NORMAL = rbe.TISSUES["late_normal"]  # α/β = 2 Gy: every other voxel


def _factor(grid: Grid, dose_grid_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(dose_grid_mm / s))) for s in grid.spacing)


def _block(array: np.ndarray, factor, reduce) -> np.ndarray:
    """Reduce ``array`` over blocks of ``factor`` voxels (edge blocks padded with their own edge)."""
    pads = [(0, (-n) % f) for n, f in zip(array.shape, factor)]
    a = np.pad(array, pads, mode="edge")
    shape = []
    for n, f in zip(a.shape, factor):
        shape += [n // f, f]
    return reduce(a.reshape(shape), axis=(1, 3, 5))


def _coarse_coordinate(index: np.ndarray, f: int, n_coarse: int) -> np.ndarray:
    """Fractional dose-grid index of CT index ``index`` along one axis, clamped to the grid."""
    return np.clip((np.asarray(index, float) - (f - 1) / 2.0) / f, 0.0, n_coarse - 1.0)


def interpolation_matrix(kji: np.ndarray, factor, coarse_shape) -> sp.csr_matrix:
    """Trilinear interpolation (CT voxels ``kji`` (n, 3) ← dose grid), clamped at the edges: (n, N)."""
    n = kji.shape[0]
    lo, w = [], []
    for axis in range(3):
        c = _coarse_coordinate(kji[:, axis], factor[axis], coarse_shape[axis])
        i0 = np.minimum(np.floor(c).astype(np.int64), max(coarse_shape[axis] - 2, 0))
        lo.append(i0)
        w.append(c - i0)
    rows, cols, vals = [], [], []
    for corner in range(8):
        bits = [(corner >> a) & 1 for a in range(3)]
        idx = [np.minimum(lo[a] + bits[a], coarse_shape[a] - 1) for a in range(3)]
        weight = np.ones(n)
        for a in range(3):
            weight = weight * (w[a] if bits[a] else 1.0 - w[a])
        rows.append(np.arange(n))
        cols.append(np.ravel_multi_index(idx, coarse_shape))
        vals.append(weight)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, int(np.prod(coarse_shape))))
    m.eliminate_zeros()
    return m


def resample_to_ct(values: np.ndarray, factor, ct_shape) -> np.ndarray:
    """Dose-grid array → CT grid, separable trilinear with the same convention as ``interpolation_matrix``."""
    out = np.asarray(values, np.float32)
    for axis in range(3):
        n_c = out.shape[axis]
        c = _coarse_coordinate(np.arange(ct_shape[axis]), factor[axis], n_c)
        i0 = np.minimum(np.floor(c).astype(np.int64), max(n_c - 2, 0))
        i1 = np.minimum(i0 + 1, n_c - 1)
        t = (c - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        t = t.reshape(shape)
        out = out.take(i0, axis=axis) * (1.0 - t) + out.take(i1, axis=axis) * t
    return out


@dataclass(frozen=True, eq=False)
class RoiPoints:
    """Objective points of one ROI: CT flat indices, interpolation from the dose grid, tissue."""

    flat: np.ndarray
    interp: sp.csr_matrix
    alpha_x: np.ndarray
    beta_x: np.ndarray
    r_max: np.ndarray


@dataclass(frozen=True, eq=False)
class DoseGridModel:
    """What the dose engine needs of a patient on its dose grid (see the module docstring)."""

    ct_grid: Grid
    grid: Grid
    factor: tuple[int, int, int]
    hu: np.ndarray  # dose grid, block-mean HU
    body: np.ndarray  # dose grid bool
    target: np.ndarray  # dose grid bool: the union of the targets the spots cover
    isocenter: tuple[float, float, float]
    patient_position: str
    tumour_ct: np.ndarray  # CT grid bool: voxels with target tissue
    body_ct: np.ndarray  # CT grid bool
    rois: dict[str, RoiPoints]

    @staticmethod
    def from_case(case: Case, target_rois: str | Sequence[str], dose_grid_mm: float) -> "DoseGridModel":
        """The model of ``case`` whose spots cover the union of ``target_rois`` (isocentre at its centroid)."""
        ct = case.grid
        factor = _factor(ct, dose_grid_mm)
        spacing = tuple(s * f for s, f in zip(ct.spacing, factor))
        # centre of block 0 = centre of CT voxels 0 … f−1
        origin = tuple(ct.index_to_patient(np.array([(f - 1) / 2.0 for f in factor])))
        hu = _block(case.hu.astype(np.float32), factor, np.mean)
        grid = Grid(origin, spacing, hu.shape, ct.orientation)
        externals = [s for s in case.structures if s.role.value == "EXTERNAL"]
        body_ct = externals[0].mask.to_full() if externals else case.hu > -500
        body = _block(body_ct, factor, np.any)
        names = (target_rois,) if isinstance(target_rois, str) else tuple(target_rois)
        target_ct = np.logical_or.reduce([case.structure(n).voxels.to_full() for n in names])
        target = _block(target_ct, factor, np.any)
        centroid = np.argwhere(target_ct).mean(axis=0)
        iso = tuple(float(v) for v in ct.index_to_patient(centroid))
        tumour_ct = np.zeros(ct.shape, bool)
        for s in case.structures:
            if s.role.is_target:
                tumour_ct[s.voxels.box] |= s.voxels.crop
        rois = {}
        for s in case.structures:
            flat = s.voxels.indices
            if flat.size == 0:
                continue
            if flat.size > MAX_POINTS_PER_ROI:
                flat = flat[np.linspace(0, flat.size - 1, MAX_POINTS_PER_ROI).round().astype(np.int64)]
            interp = interpolation_matrix(np.stack(np.unravel_index(flat, ct.shape), axis=-1), factor, hu.shape)
            tum = tumour_ct.ravel()[flat]
            rois[s.name] = RoiPoints(
                flat, interp,
                np.where(tum, TUMOUR.alpha_x, NORMAL.alpha_x), np.where(tum, TUMOUR.beta_x, NORMAL.beta_x),
                np.where(tum, TUMOUR.r_max, NORMAL.r_max))
        return DoseGridModel(ct, grid, factor, hu, body, target, iso, case.refs.patient_position or "HFS",
                             tumour_ct, body_ct, rois)

    def key(self, fields, options: dict) -> str:
        """Content address of the dose influence matrices of this model and these fields."""
        h = hashlib.sha256()
        h.update(str(GEOMETRY_VERSION).encode())
        for a in (self.hu, self.body, self.target):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps([self.grid.origin, self.grid.spacing, self.grid.shape, self.grid.orientation,
                             self.isocenter, self.patient_position, [list(f) for f in fields],
                             sorted(options.items())], default=float).encode())
        return h.hexdigest()[:24]

    def rois_key(self) -> str:
        """Content address of the ROI objective points (names, CT voxels, tissue) of this model."""
        h = hashlib.sha256(self.key([], {}).encode())
        for name, pts in self.rois.items():
            h.update(name.encode())
            for a in (pts.flat, pts.alpha_x):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:24]

    def dose_on_ct(self, dw: np.ndarray, hw: np.ndarray, fractions: int) -> tuple[np.ndarray, np.ndarray]:
        """(RBE-weighted, physical) whole-course dose on the CT grid from the dose-grid products
        D·w and H·w of one fraction; zero outside the body."""
        shape = self.grid.shape
        d = np.maximum(resample_to_ct(dw.reshape(shape), self.factor, self.ct_grid.shape), 0.0)
        h = np.maximum(resample_to_ct(hw.reshape(shape), self.factor, self.ct_grid.shape), 0.0)
        ax = np.where(self.tumour_ct, TUMOUR.alpha_x, NORMAL.alpha_x).astype(np.float32)
        bx = np.where(self.tumour_ct, TUMOUR.beta_x, NORMAL.beta_x).astype(np.float32)
        rm = np.where(self.tumour_ct, TUMOUR.r_max, NORMAL.r_max).astype(np.float32)
        effect = ax * (d + (rm - 1.0) * h) + bx * d * d  # Σαd + (Σ√β d)², rbe module docstring
        d_rbe = (-ax + np.sqrt(ax * ax + 4.0 * bx * effect)) / (2.0 * bx)
        d_rbe = np.where(self.body_ct, np.maximum(d_rbe, 0.0) * fractions, 0.0).astype(np.float32)
        phys = np.where(self.body_ct, d * fractions, 0.0).astype(np.float32)
        return d_rbe, phys
