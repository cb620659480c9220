"""Photon dose-influence matrix D (dose per unit beamlet weight), its dose grid, and a disk cache.

``dose_influence(case, beams)`` returns a :class:`Dij`: a CSR matrix, one row per voxel of the
dose grid inside the External, one column per beamlet, so the dose of beamlet weights x is
``d = D x`` (Gy). The columns of beam b are ``beam_slices[b]``, in the order of
``beamlets[b]`` (BEV centres at the isocentre plane, from :func:`beamlet_grid`).

Dose grid in mm (the default of the engines)
--------------------------------------------
With ``dose_grid_mm`` (a spacing in mm, or (k, j, i) spacings) the dose grid is its own grid, as in
every clinical TPS (:func:`dose_grid_in_mm`): the CT's orientation, covering the External's bounding
box plus one dose voxel on each side (clipped to the CT's box), tiled by the fewest voxels no coarser
than asked, so the spacing is the requested one or slightly finer (3 mm over 200 mm: 67 voxels of
2.985 mm). Its voxel centres need not coincide with CT voxel centres:

* density: none is resampled; the ray tracer runs through the CT's own relative electron density
  and is read at the dose-grid centres (``geometry.radiological_depth_at``);
* External (the rows): every dose voxel of the trilinear stencil of an External CT voxel is a row
  (:func:`stencil_mask`), so the dose reported at every body voxel interpolates computed dose only;
* planning structures (:meth:`Dij.rows_of`, :func:`mask_on_grid`): a dose voxel belongs to a
  structure when its **centre** does (nearest CT voxel); a structure that would vanish keeps every
  dose voxel that contains one of its CT voxel centres (``any``).

Dose grid as a block factor (``dose_grid_factor``)
--------------------------------------------------
The dose grid may instead be coarser than the CT by an integer factor per axis (an int or a
(k, j, i) triple; the trained ACER and SARSA planners' engines). Block f of the CT becomes one dose
voxel centred at the centre of the block (a last, partial block keeps the same nominal centre and
averages the voxels it has):

* density: the block **mean of the relative electron density** (not RED of the mean HU: HU → RED
  is piecewise linear, and the mean RED conserves the water-equivalent path through the block);
* External (the rows): a dose voxel is a row if **any** CT voxel of its block is in the External,
  so every body voxel has a dose;
* planning structures (:meth:`Dij.rows_of`): a dose voxel belongs to a structure if at least
  **half** of its block does (``fraction ≥ 0.5``); a structure that would vanish (a cochlea at
  factor 2) keeps every block it touches (``any``), so no objective loses its voxels.

Kernel truncation (``cutoff_mm``)
---------------------------------
A beamlet deposits dose only in voxels whose BEV position (isocentre plane) lies within
``cutoff_mm`` (Euclidean) of the beamlet centre; elsewhere the entry is dropped. Default 50 mm,
the lateral cutoff of matRad's photon pencil beam (``pbCalc``). A relative cutoff (1 % of the
beamlet's maximum) would not do for this kernel: the scatter Gaussian of one 5 mm beamlet peaks
at ≈ 0.3 % of the primary, so it would drop all phantom scatter. With 50 mm the primary is kept
whole (σ_p < 4 mm) and what is lost is the scatter tail of distant beamlets. Dose missed at the
centre of a square field of 5 mm beamlets in water (isocentre plane; computed with
``beamlet_dose``): 10 × 10 cm² field 0.9 / 1.6 / 2.1 % at 5 / 10 / 20 cm depth; 20 × 20 cm²
4.5 / 8.9 / 15 % (cutoff 60 mm: 0.2 / 0.4 / 0.5 % and 3.0 / 6.6 / 12 %). H&N target fields
are ≲ 10 cm, so 50 mm costs ~2 % in-field; raise ``cutoff_mm`` for large fields or for
out-of-field dose (beyond ~5 cm from the field edge it is 0). Entries are float32, indices int32.

Cache
-----
:func:`dij_cached` keys the matrix by a SHA-256 of everything it depends on: the CT (HU bytes),
grid, External and target masks (the rows and the beamlet placement), patient position, beams,
all parameters, the photon model and :data:`DIJ_VERSION` (bump it whenever the computation
changes). It stores ``<key>.npz`` (``scipy.sparse.save_npz``), ``<key>.arrays.npz`` (rows,
beamlets) and ``<key>.json`` (dose grid, parameters, timing; no patient or case identifier) in
``physics.cache.cache_dir()`` (option, ``$RTAUTOPLAN_CACHE`` or ``~/.cache/rtautoplan/dij``); writes
are atomic (temporary file, then rename); the cache is bounded (``physics.cache``: LRU eviction
above its size cap, ``rtautoplan cache info|clear``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree
from scipy.special import erf

from rtautoplan.case import Case, Grid, Role
from rtautoplan.mask import Mask
from rtautoplan.plan import Beam, Modality
from rtautoplan.physics import cache as dij_cache
from rtautoplan.physics.geometry import (beam_frame, beamlet_grid, hu_to_red, radiological_depth,
                                         radiological_depth_at)
from rtautoplan.physics.photon import SIX_MV, PhotonModel, _normalisation
from rtautoplan.threads import for_each, ordered_map

DIJ_VERSION = "dij-1"  # bump when the dose computation or the stored layout changes
DOSE_GRID_MM = 3.0  # the engines' default dose grid spacing (mm)
CUTOFF_MM = 50.0
MARGIN_MM = 5.0
_SQRT2 = np.sqrt(2.0)


@dataclass(frozen=True, eq=False)
class Dij:
    """Dose-influence matrix (Gy per unit beamlet weight) and what it is indexed by.

    matrix: CSR, float32 data, int32 indices, shape (rows, beamlets).
    dose_grid: the grid the rows live on.
    row_voxels: flat index (into ``dose_grid.shape``) of each row, increasing; the voxels of the
        dose grid in the External. All other voxels have dose 0.
    beamlets: per beam, the (n_b, 2) BEV centres (x_b, y_b, mm at the isocentre plane).
    beam_slices: per beam, its column range in ``matrix``.
    beamlet_mm: beamlet side (mm at the isocentre plane).
    factor: dose grid / CT grid block size (k, j, i); None for a dose grid in mm.
    ct_grid: the CT grid that :meth:`rows_of` maps masks from (needed when ``factor`` is None).
    """

    matrix: sparse.csr_matrix
    dose_grid: Grid
    row_voxels: np.ndarray
    beamlets: tuple[np.ndarray, ...]
    beam_slices: tuple[slice, ...]
    beamlet_mm: float
    factor: tuple[int, int, int] | None
    ct_grid: Grid | None = None

    @property
    def n_beamlets(self) -> int:
        return self.matrix.shape[1]

    def dose_array(self, x: np.ndarray) -> np.ndarray:
        """Dose (Gy) on the full dose grid of beamlet weights x (zero outside the External)."""
        out = np.zeros(self.dose_grid.shape, np.float64)
        out.flat[self.row_voxels] = self.matrix @ np.asarray(x, np.float32)
        return out

    def row_lookup(self) -> np.ndarray:
        """Flat dose-grid index → row (−1 for voxels that are not rows)."""
        lookup = np.full(int(np.prod(self.dose_grid.shape)), -1, np.int64)
        lookup[self.row_voxels] = np.arange(self.row_voxels.size)
        return lookup

    def rows_of(self, mask: Mask | np.ndarray) -> np.ndarray:
        """Rows (int64, sorted) of a structure given as a Mask or bool array on the CT grid, or on the dose grid.
        A CT mask is resampled by :func:`resample_mask` (block factor: rule "half" with the "any"
        fallback) or :func:`mask_on_grid` (dose grid in mm: the centre rule with the "any" fallback).
        Voxels that are not rows (outside the External) are dropped."""
        if not isinstance(mask, Mask):
            mask = np.asarray(mask, bool)
        elif self.factor is not None or self.ct_grid is None:
            mask = mask.to_full()
        if self.factor is None and self.ct_grid is not None and mask.shape == tuple(self.ct_grid.shape):
            mask = mask_on_grid(mask, self.ct_grid, self.dose_grid)
        elif mask.shape != tuple(self.dose_grid.shape):
            mask = resample_mask(mask, self.factor, "half")
        rows = self.row_lookup()[np.flatnonzero(mask)]
        return rows[rows >= 0]


# --- dose grid --------------------------------------------------------------------------------


def _factor3(factor) -> tuple[int, int, int]:
    f = (int(factor),) * 3 if np.isscalar(factor) else tuple(int(v) for v in factor)
    if len(f) != 3 or min(f) < 1:
        raise ValueError(f"dose_grid_factor must be a positive int or three of them, got {factor!r}")
    return f


def coarse_grid(grid: Grid, factor) -> Grid:
    """The grid of blocks of ``factor`` (int or (k, j, i)) CT voxels; voxel centres at block centres."""
    f = np.asarray(_factor3(factor))
    shape = tuple(int(v) for v in -(-np.asarray(grid.shape) // f))
    origin = tuple(float(v) for v in grid.index_to_patient((f - 1) / 2.0))
    spacing = tuple(float(s * k) for s, k in zip(grid.spacing, f))
    return Grid(origin=origin, spacing=spacing, shape=shape, orientation=grid.orientation)


def _block_mean(array: np.ndarray, factor) -> np.ndarray:
    """Mean over blocks of ``factor`` (partial blocks at the far ends average what they have)."""
    f = _factor3(factor)
    a = np.asarray(array, np.float64)
    if f == (1, 1, 1):
        return a.copy()
    pad = [(0, -n % k) for n, k in zip(a.shape, f)]
    values = np.pad(a, pad) if any(p for _, p in pad) else a
    shape = [v for n, k in zip(values.shape, f) for v in (n // k, k)]
    counts = []  # voxels per block along each axis: k, except a partial last block
    for n, k in zip(a.shape, f):
        c = np.full(-(-n // k), float(k))
        c[-1] = n - k * (c.size - 1)
        counts.append(c)
    return values.reshape(shape).sum(axis=(1, 3, 5)) / (counts[0][:, None, None] * counts[1][None, :, None]
                                                        * counts[2][None, None, :])


def resample_mask(mask: np.ndarray, factor, rule: str = "half") -> np.ndarray:
    """A CT-grid mask on the coarse grid: "any" voxel of the block, or "half" (fraction ≥ 0.5,
    falling back to "any" when that would leave the structure empty)."""
    fraction = _block_mean(np.asarray(mask, bool), factor)
    if rule == "any":
        return fraction > 0
    if rule != "half":
        raise ValueError(f"rule must be 'half' or 'any', got {rule!r}")
    half = fraction >= 0.5 - 1e-9
    return half if half.any() or not np.any(mask) else fraction > 0


def dose_grid_in_mm(ct: Grid, external: np.ndarray, mm=DOSE_GRID_MM) -> Grid:
    """The dose grid (module docstring) of spacing ``mm`` (one or three values (k, j, i), mm) over
    the External (bool mask on ``ct``) plus one dose voxel, clipped to the CT's box; per axis the
    fewest voxels of at most ``mm`` that tile that box."""
    mm = np.broadcast_to(np.asarray(mm, float), (3,))
    if mm.size != 3 or not np.all(mm > 0):
        raise ValueError(f"dose_grid_mm must be one or three positive spacings (mm), got {mm!r}")
    external = np.asarray(external, bool)
    used = [np.flatnonzero(external.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(u.size == 0 for u in used):
        raise ValueError("the External is empty: no dose grid to cover it")
    step = np.abs(np.asarray(ct.spacing, float))
    origin, spacing, shape = np.zeros(3), [], []
    for a in range(3):  # box in CT index units: the External's voxel faces ± one dose voxel, within the CT
        lo = max(used[a][0] - 0.5 - mm[a] / step[a], -0.5)
        hi = min(used[a][-1] + 0.5 + mm[a] / step[a], ct.shape[a] - 0.5)
        n = max(1, int(np.ceil((hi - lo) * step[a] / mm[a] - 1e-9)))
        origin[a] = lo + (hi - lo) / (2 * n)
        spacing.append(float((hi - lo) / n * ct.spacing[a]))
        shape.append(n)
    return Grid(tuple(float(v) for v in ct.index_to_patient(origin)), tuple(spacing), tuple(shape), ct.orientation)


def _axis_map(src: Grid, dst: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Per axis, the fractional ``src`` index of ``dst``'s first centre and of one ``dst`` step
    (grids with the same orientation)."""
    if not np.allclose(src.axes, dst.axes, atol=1e-6):
        raise ValueError("the dose grid must have the CT's orientation")
    return src.patient_to_index(np.asarray(dst.origin, float)), np.asarray(dst.spacing) / np.asarray(src.spacing)


def mask_on_grid(mask: Mask | np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """A Mask or bool array on ``src`` (the CT) on ``dst`` (the dose grid): a ``dst`` voxel is in when
    its centre lies in a mask voxel (nearest ``src`` voxel); when none is, every ``dst`` voxel that
    contains a mask voxel's centre ("any"), so a small structure never vanishes."""
    if not isinstance(mask, Mask):
        mask = Mask(np.shape(mask), (0, 0, 0), np.asarray(mask, bool))
    start, step = _axis_map(src, dst)
    index, inside = [], []
    for a in range(3):  # nearest CT index of each dose-voxel centre, then its place in the mask's box
        c = np.rint(start[a] + np.arange(dst.shape[a]) * step[a]) - mask.start[a]
        inside.append((c >= 0) & (c < mask.crop.shape[a]))
        index.append(np.clip(c, 0, max(mask.crop.shape[a] - 1, 0)).astype(np.intp))
    if not mask.any():
        return np.zeros(dst.shape, bool)
    out = mask.crop[np.ix_(*index)] & inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    if out.any():
        return out
    kji = np.rint((np.argwhere(mask.crop) + mask.start - start) / step).astype(np.intp)
    keep = np.all((kji >= 0) & (kji < np.asarray(dst.shape)), axis=1)
    out[tuple(kji[keep].T)] = True
    return out


def stencil_mask(mask: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """The ``dst`` voxels that trilinear interpolation (:func:`dose_to_grid`) reads at some voxel of
    ``mask`` (bool on ``src``): per axis the two neighbours of each source index, reduced axis by
    axis with "any" (exact, as the stencil is a product over the axes)."""
    start, step = _axis_map(dst, src)
    out = np.asarray(mask, bool)
    for a in range(3):
        lo, hi, _ = _linear_weights(start[a] + np.arange(src.shape[a]) * step[a], dst.shape[a])
        reduced = np.zeros(out.shape[:a] + (dst.shape[a],) + out.shape[a + 1:], bool)
        for target in (lo, hi):
            order = np.argsort(target, kind="stable")
            starts = np.flatnonzero(np.diff(target[order], prepend=-1))
            values = np.logical_or.reduceat(np.take(out, order, axis=a), starts, axis=a)
            index = [slice(None)] * 3
            index[a] = target[order][starts]
            reduced[tuple(index)] |= values
        out = reduced
    return out


def dose_grid_of(case: Case, dose_grid_factor=None, dose_grid_mm=None, density=hu_to_red):
    """(dose grid, density, External rows mask or None, row flat indices, factor or None) of a case.

    Block factor (``dose_grid_factor``, or neither given: the CT grid): block-mean density and the
    "any" External on the coarse grid. Dose grid in mm: the density stays on the CT grid (float32,
    ``density`` of the HU slab by slab) and the mask is None (the depths are read at the rows'
    centres, :func:`row_depths`). Both given: ValueError."""
    if dose_grid_factor is not None and dose_grid_mm is not None:
        raise ValueError("give dose_grid_factor or dose_grid_mm, not both")
    if dose_grid_mm is None:
        factor = _factor3(1 if dose_grid_factor is None else dose_grid_factor)
        ext = resample_mask(case.external.mask.to_full(), factor, "any")
        return (coarse_grid(case.grid, factor), _block_mean(density(case.hu), factor).astype(np.float32), ext,
                np.flatnonzero(ext), factor)
    external = case.external.mask.to_full()
    grid = dose_grid_in_mm(case.grid, external, dose_grid_mm)
    rho = np.empty(case.hu.shape, np.float32)
    for k in range(0, rho.shape[0], 16):
        rho[k:k + 16] = density(case.hu[k:k + 16])
    return grid, rho, None, np.flatnonzero(stencil_mask(external, case.grid, grid)), None


def row_depths(density: np.ndarray, ext, dose_grid: Grid, rows_flat: np.ndarray, frame, ct_grid: Grid) -> np.ndarray:
    """Water-equivalent depth (mm) of each row: traced on the dose grid when ``density`` lives there
    (block factor, ``ext`` its External mask), else through the CT (``ext`` None) and read at the
    rows' centres (ray spacing half the finest dose spacing, step half the finest CT spacing)."""
    if ext is not None:
        return radiological_depth(density, dose_grid, frame, voxels=ext).ravel()[rows_flat]
    xyz = dose_grid.index_to_patient(np.stack(np.unravel_index(rows_flat, dose_grid.shape), axis=-1))
    return radiological_depth_at(density, ct_grid, frame, xyz, lateral_mm=min(np.abs(dose_grid.spacing)) / 2.0,
                                 step_mm=min(np.abs(ct_grid.spacing)) / 2.0)


def _linear_weights(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper sample and upper weight (float32) of 1-D linear interpolation at fractional
    indices ``coords`` on ``n`` samples; outside [0, n − 1] the edge sample (``mode="nearest"``)."""
    c = np.clip(coords, 0.0, n - 1.0)
    lo = np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
    return lo, np.minimum(lo + 1, n - 1), (c - lo).astype(np.float32)


def _interpolate_axis(a: np.ndarray, axis: int, weights) -> np.ndarray:
    """``a`` linearly interpolated along ``axis`` at the samples of :func:`_linear_weights` (float32)."""
    lo, hi, w = weights
    out = np.take(a, lo, axis=axis)
    if not w.any():
        return out
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    out *= 1.0 - w
    upper = np.take(a, hi, axis=axis)
    upper *= w
    out += upper
    return out


def dose_to_grid(dose: np.ndarray, src: Grid, dst: Grid, block: int = 8) -> np.ndarray:
    """Trilinear interpolation (float32) of ``dose`` on ``src`` at the voxel centres of ``dst``;
    outside ``src`` the nearest edge value (``map_coordinates(order=1, mode="nearest")``).

    The grids must have the same axes up to order and sign (axis-aligned, as every CT and dose
    grid here), so the interpolation is separable: three 1-D passes with per-axis index vectors,
    the last two over ``block`` output slices at a time (on the engine's threads: each block writes its own
    slices, so the result does not depend on them). Memory: the output plus about two source-sized float32
    arrays and two blocks per thread; no coordinate arrays of the output's size.
    """
    jacobian = (dst.axes * np.asarray(dst.spacing)[:, None]) @ src.axes.T / np.asarray(src.spacing)
    order = np.argmax(np.abs(jacobian), axis=1)  # the src axis each dst axis runs along
    if sorted(order) != [0, 1, 2] or np.abs(jacobian).sum() - np.abs(jacobian[[0, 1, 2], order]).sum() > 1e-9:
        raise ValueError("dose_to_grid needs grids with the same axes up to order and sign (no oblique resampling)")
    start = src.patient_to_index(np.asarray(dst.origin, float))
    values = np.transpose(np.asarray(dose, np.float32), order)
    weights = [_linear_weights(start[m] + np.arange(n) * jacobian[a, m], values.shape[a])
               for a, (m, n) in enumerate(zip(order, dst.shape))]
    stage = _interpolate_axis(values, 0, weights[0])
    out = np.empty(tuple(dst.shape), np.float32)

    def fill(k):
        out[k:k + block] = _interpolate_axis(_interpolate_axis(stage[k:k + block], 1, weights[1]), 2, weights[2])

    for_each(fill, range(0, out.shape[0], block), name="grid")
    return out


# --- beams ----------------------------------------------------------------------------------


def _target_mask(case: Case) -> np.ndarray:
    """Where beamlets and spots go: every target with a dose level; all targets when none has one. A target
    without a dose (a whole breast typed GTV beside a boosted tumour bed) is not irradiated for its own
    sake: beamlets through it alone would deliver dose where no objective reads it."""
    targets = case.by_role(Role.GTV, Role.CTV, Role.PTV)
    if not targets:
        raise ValueError(f"case {case.case_id!r} has no target (GTV, CTV or PTV) to place beamlets on")
    dosed = [s for s in targets if s.rx_gy is not None and s.mask.any()]
    return np.logical_or.reduce([s.mask.to_full() for s in dosed or targets])


def isocentre(case: Case) -> tuple[float, float, float]:
    """Centroid (patient mm) of the highest-dose PTV (else CTV, GTV); all targets when no
    target carries a prescription."""
    for role in (Role.PTV, Role.CTV, Role.GTV):
        dosed = [s for s in case.by_role(role) if s.rx_gy is not None and s.mask.any()]
        if dosed:
            mask = max(dosed, key=lambda s: s.rx_gy).mask
            centre = (np.argwhere(mask.crop) + mask.start).mean(axis=0)
            break
    else:
        centre = np.argwhere(_target_mask(case)).mean(axis=0)
    return tuple(float(v) for v in case.grid.index_to_patient(centre))


def beams_for(case: Case, n: int = 7, start_deg: float = 0.0, modality: Modality = Modality.PHOTON) -> tuple[Beam, ...]:
    """``n`` equispaced coplanar beams (gantry start + 360°·i/n, couch and collimator 0) at the
    :func:`isocentre` of the case."""
    if n < 1:
        raise ValueError(f"need at least one beam, got n={n}")
    iso = isocentre(case)
    angles = [(start_deg + 360.0 * i / n) % 360.0 for i in range(n)]
    return tuple(Beam(f"G{a:05.1f}", a, iso, modality=modality) for a in angles)


# --- the matrix -----------------------------------------------------------------------------


def _aperture(offset, half, sigma):
    return 0.5 * (erf((offset + half) / (_SQRT2 * sigma)) - erf((offset - half) / (_SQRT2 * sigma)))


def _mapped(n: int, dtype) -> np.ndarray:
    """An empty array in its own anonymous memory map: returned to the system as soon as it is released
    (small heap blocks freed by malloc may stay resident, which would defeat :class:`CsrStack`)."""
    dtype = np.dtype(dtype)
    if n == 0:
        return np.zeros(0, dtype)
    return np.frombuffer(mmap.mmap(-1, n * dtype.itemsize), dtype, n)


class CsrStack:
    """A CSR matrix assembled beam by beam (columns appended in order) with little memory beyond the result.

    ``add`` keeps one beam's CSR entries as ``chunks`` row chunks (copies in their own memory maps; the
    caller then releases the beam); ``finish`` allocates the result and fills it chunk by chunk, releasing each
    beam chunk as soon as it is copied, so the peak is about the result plus one beam (≈ 8 B per entry of
    the result + 16 B per entry of the largest beam) instead of all triplets plus a CSR copy. Within a row
    the columns are sorted (each beam's CSR is sorted, and beams follow in column order): the matrix is the
    same, bit for bit, as one COO/CSC → CSR conversion of all entries without duplicates.
    """

    def __init__(self, n_rows: int, chunks: int = 32):
        self.n_rows, self.n_cols = int(n_rows), 0
        self.edges = np.unique(np.linspace(0, self.n_rows, max(1, min(chunks, self.n_rows)) + 1).astype(np.int64))
        self.parts: list[list] = []  # per beam: per chunk (indptr int64 from 0, indices int32, data float32)

    def add(self, beam: sparse.spmatrix, n_cols: int) -> None:
        """Append ``beam`` (rows × n_cols, any sparse format; float32 values) as the next columns."""
        csr = beam.tocsr() if beam.format != "csr" else beam
        csr.sum_duplicates()
        csr.sort_indices()
        offset, parts = self.n_cols, []
        for a, b in zip(self.edges[:-1], self.edges[1:]):
            p0, p1 = int(csr.indptr[a]), int(csr.indptr[b])
            ip, ind, val = _mapped(b - a + 1, np.int64), _mapped(p1 - p0, np.int32), _mapped(p1 - p0, np.float32)
            np.subtract(csr.indptr[a:b + 1], p0, out=ip)
            np.add(csr.indices[p0:p1], offset, out=ind, casting="unsafe")
            val[:] = csr.data[p0:p1]
            parts.append((ip, ind, val))
        self.parts.append(parts)
        self.n_cols += int(n_cols)

    def finish(self) -> sparse.csr_matrix:
        """The stacked CSR matrix: float32 data, int32 indices and indptr (ValueError beyond int32)."""
        per_row = np.zeros(self.n_rows, np.int64)
        for parts in self.parts:
            for (a, b), (ip, _, _) in zip(zip(self.edges[:-1], self.edges[1:]), parts):
                per_row[a:b] += np.diff(ip)
        indptr = np.zeros(self.n_rows + 1, np.int64)
        np.cumsum(per_row, out=indptr[1:])
        nnz = int(indptr[-1])
        if nnz >= np.iinfo(np.int32).max or self.n_cols >= np.iinfo(np.int32).max:
            raise ValueError(f"{nnz} dose-influence entries: more than int32 indices hold; use a coarser dose grid")
        data, indices = np.empty(nnz, np.float32), np.empty(nnz, np.int32)
        for c, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            start = indptr[a:b].copy()  # next free slot of each row of the chunk
            for parts in self.parts:
                ip, ind, val = parts[c]
                parts[c] = None
                n = np.diff(ip)
                dest = np.repeat(start - ip[:-1], n) + np.arange(ind.size)
                indices[dest], data[dest] = ind, val
                start += n
                del ip, ind, val, dest
        self.parts = []
        return sparse.csr_matrix((data, indices, indptr.astype(np.int32)), shape=(self.n_rows, self.n_cols),
                                 copy=False)


def _beam_columns(red, ext, dose_grid, rows_flat, beam, patient_position, target, ct_grid, beamlet_mm, cutoff_mm,
                  margin_mm, model, chunk_pairs=1_000_000):
    """(CSR matrix of one beam's columns, beamlet centres), gathered column by column, only the entries > 0.
    Candidate pairs are queried and evaluated about ``chunk_pairs`` at a time, so the temporaries do not
    grow with the beam."""
    frame = beam_frame(beam, patient_position, model.sad_mm)
    centres = beamlet_grid(target, ct_grid, frame, beamlet_mm, margin_mm)
    kji = np.stack(np.unravel_index(rows_flat, dose_grid.shape), axis=-1)
    xb, yb, t = frame.to_beam(dose_grid.index_to_patient(kji))
    del kji
    depth = row_depths(red, ext, dose_grid, rows_flat, frame, ct_grid)
    # Everything that depends on the voxel only, once per beam (photon.py's model, term by term).
    primary, scatter, sigma_p, sigma_s = model.depth_terms(depth)
    to_iso = model.sad_mm / t
    norm = _normalisation(model) * to_iso**2
    amp_p, amp_s = norm * primary, norm * scatter
    sp, ss = sigma_p * to_iso, sigma_s * to_iso
    tree = cKDTree(np.stack([xb, yb], axis=-1))
    half = beamlet_mm / 2.0
    out_r, out_v, out_n = [], [], []
    # Candidate voxels of each beamlet: within cutoff_mm of its centre in the BEV plane.
    counts = np.asarray(tree.query_ball_point(centres, r=cutoff_mm, return_length=True), np.int64)
    edges, acc = [0], 0
    for i, n in enumerate(counts):  # chunks of about chunk_pairs (voxel, beamlet) pairs
        acc += n
        if acc >= chunk_pairs or i == len(counts) - 1:
            edges.append(i + 1)
            acc = 0
    for lo, hi in zip(edges[:-1], edges[1:]):
        neighbours = tree.query_ball_point(centres[lo:hi], r=cutoff_mm, return_sorted=False)
        v = np.fromiter(itertools.chain.from_iterable(neighbours), np.int64, int(counts[lo:hi].sum()))
        del neighbours
        c = np.repeat(np.arange(lo, hi), counts[lo:hi])
        dx, dy = xb[v] - centres[c, 0], yb[v] - centres[c, 1]
        val = (amp_p[v] * _aperture(dx, half, sp[v]) * _aperture(dy, half, sp[v])
               + amp_s[v] * _aperture(dx, half, ss[v]) * _aperture(dy, half, ss[v]))
        keep = val > 0
        out_r.append(v[keep].astype(np.int32))
        out_v.append(val[keep].astype(np.float32))
        out_n.append(np.bincount(c[keep] - lo, minlength=hi - lo))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dt))
    indices, data = cat(out_r, np.int32), cat(out_v, np.float32)
    del out_r, out_v
    indptr = np.concatenate([[0], np.cumsum(cat(out_n, np.int64))])
    csr = sparse.csc_matrix((data, indices, indptr), shape=(rows_flat.size, len(centres)), copy=False).tocsr()
    return csr, centres


def dose_influence(case: Case, beams, beamlet_mm: float = 5.0, dose_grid_factor=None, cutoff_mm: float = CUTOFF_MM,
                   margin_mm: float = MARGIN_MM, model: PhotonModel = SIX_MV, dose_grid_mm=None) -> Dij:
    """The photon dose-influence matrix of ``beams`` on ``case`` (module docstring).

    beamlet_mm: beamlet side at the isocentre plane; beamlets cover the targets with a dose level
    (GTV, CTV, PTV; all of them when none has one) + ``margin_mm`` in each beam's eye view.
    dose_grid_factor: int or (k, j, i) block size of the dose grid; dose_grid_mm: or a dose grid in mm
    (module docstring); neither: the CT grid. cutoff_mm: lateral kernel cutoff (BEV, isocentre plane).

    Memory: each beam's entries are gathered column by column (CSC), converted to CSR and stacked
    (:class:`CsrStack`): about the finished matrix plus two copies of one beam per engine thread at the peak
    (no COO triplets, no CSR copy of the whole matrix, no per-pair Python lists for a whole beam).

    Threads: the beams are independent, so up to :func:`~rtautoplan.threads.engine_threads` of them are computed
    at once and stacked in beam order: the matrix is the same, bit for bit, for any number of threads.
    """
    beams = tuple(beams)
    if not beams:
        raise ValueError("no beams")
    if any(b.modality is not Modality.PHOTON for b in beams):
        raise ValueError("dose_influence computes photon beams only")
    dose_grid, red, ext, rows_flat, factor = dose_grid_of(case, dose_grid_factor, dose_grid_mm)
    target = _target_mask(case)
    stack, beamlets, slices = CsrStack(rows_flat.size), [], []

    def columns(beam):
        return _beam_columns(red, ext, dose_grid, rows_flat, beam, case.refs.patient_position, target, case.grid,
                             beamlet_mm, cutoff_mm, margin_mm, model)

    for beam_csr, centres in ordered_map(columns, beams, name="beams"):
        slices.append(slice(stack.n_cols, stack.n_cols + len(centres)))
        stack.add(beam_csr, len(centres))
        del beam_csr
        beamlets.append(centres)
    red = ext = target = None  # released before the matrix is assembled
    matrix = stack.finish()
    return Dij(matrix, dose_grid, rows_flat, tuple(beamlets), tuple(slices), float(beamlet_mm), factor, case.grid)


# --- cache ----------------------------------------------------------------------------------


def cache_dir_default() -> Path:
    return dij_cache.cache_dir()


def dij_key(case: Case, beams, beamlet_mm=5.0, dose_grid_factor=None, cutoff_mm=CUTOFF_MM, margin_mm=MARGIN_MM,
            model: PhotonModel = SIX_MV, dose_grid_mm=None) -> str:
    """SHA-256 (hex) of every input of :func:`dose_influence` (module docstring)."""
    h = hashlib.sha256()

    def add(tag: str, data: bytes):
        h.update(tag.encode() + len(data).to_bytes(8, "little") + data)

    add("version", DIJ_VERSION.encode())
    add("hu", np.ascontiguousarray(case.hu).tobytes() + str(case.hu.dtype).encode())
    add("grid", repr(case.grid).encode())
    add("external", np.packbits(case.external.mask.to_full()).tobytes())
    add("target", np.packbits(_target_mask(case)).tobytes())
    add("position", case.refs.patient_position.encode())
    add("beams", repr(tuple(beams)).encode())
    factor = None if dose_grid_mm is not None else _factor3(1 if dose_grid_factor is None else dose_grid_factor)
    add("params", repr((float(beamlet_mm), factor, float(cutoff_mm), float(margin_mm))).encode())
    if dose_grid_mm is not None:
        add("dose_grid_mm", repr(np.broadcast_to(np.asarray(dose_grid_mm, float), (3,)).tolist()).encode())
    add("model", repr(asdict(model)).encode())
    return h.hexdigest()


def _atomic(path: Path, write):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_paths(key: str, cache_dir: Path) -> tuple[Path, Path, Path]:
    return cache_dir / f"{key}.npz", cache_dir / f"{key}.arrays.npz", cache_dir / f"{key}.json"


def dij_cached(case: Case, beams, cache_dir: str | Path | None = None, beamlet_mm: float = 5.0, dose_grid_factor=None,
               cutoff_mm: float = CUTOFF_MM, margin_mm: float = MARGIN_MM, model: PhotonModel = SIX_MV,
               dose_grid_mm=None) -> Dij:
    """:func:`dose_influence`, loaded from the disk cache when the same inputs were computed before."""
    beams = tuple(beams)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    key = dij_key(case, beams, beamlet_mm, dose_grid_factor, cutoff_mm, margin_mm, model, dose_grid_mm)
    m_path, a_path, j_path = cache_paths(key, cache_dir)
    if m_path.exists() and a_path.exists() and j_path.exists():
        try:
            meta = json.loads(j_path.read_text())
            arrays = np.load(a_path)
            matrix = sparse.load_npz(m_path).tocsr()
            counts = arrays["beamlet_counts"]
            centres = arrays["beamlets"]
            row_voxels = arrays["row_voxels"]
        except (OSError, ValueError, KeyError, EOFError):  # evicted or damaged meanwhile: compute it again
            meta = None
    else:
        meta = None
    if meta is not None:
        dij_cache.touch(cache_dir, key)
        edges = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        g = meta["dose_grid"]
        grid = Grid(tuple(g["origin"]), tuple(g["spacing"]), tuple(g["shape"]), tuple(g["orientation"]))
        return Dij(matrix, grid, row_voxels, tuple(centres[a:b] for a, b in zip(edges[:-1], edges[1:])),
                   tuple(slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])), float(meta["beamlet_mm"]),
                   None if meta["factor"] is None else tuple(meta["factor"]), case.grid)
    start = time.perf_counter()
    dij = dose_influence(case, beams, beamlet_mm, dose_grid_factor, cutoff_mm, margin_mm, model, dose_grid_mm)
    seconds = time.perf_counter() - start
    cache_dir.mkdir(parents=True, exist_ok=True)

    def save_matrix(p):
        with open(p, "wb") as fh:
            sparse.save_npz(fh, dij.matrix, compressed=False)

    def save_arrays(p):
        with open(p, "wb") as fh:
            np.savez(fh, row_voxels=dij.row_voxels, beamlets=np.concatenate(dij.beamlets),
                     beamlet_counts=np.array([len(b) for b in dij.beamlets]))

    _atomic(m_path, save_matrix)
    _atomic(a_path, save_arrays)
    meta = {"version": DIJ_VERSION, "beams": [asdict(b) for b in beams],
            "dose_grid": asdict(dij.dose_grid), "factor": None if dij.factor is None else list(dij.factor),
            "dose_grid_mm": dose_grid_mm, "beamlet_mm": dij.beamlet_mm,
            "cutoff_mm": cutoff_mm, "margin_mm": margin_mm, "shape": list(dij.matrix.shape),
            "nnz": int(dij.matrix.nnz), "seconds": seconds}
    _atomic(j_path, lambda p: Path(p).write_text(json.dumps(meta, indent=1, default=str)))
    dij_cache.evict(cache_dir, keep=key)
    return dij
