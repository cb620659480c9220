"""The simulator's own carbon-ion dose engine and optimiser (PBS, LQ RBE).

Three stages, each where it is cheapest:

1. ``DoseGridModel.from_case`` (session process, block operations only): the dose grid is the CT
   grid in blocks of ``round(dose_grid_mm / spacing)`` voxels per axis; HU are block means, the body
   and the target are "any voxel of the block". Every ROI gets its *objective points*, with their
   tissue (target ROIs α/β = 10 Gy, everything else α/β = 2 Gy) and the interpolation from the
   dose grid to them: the dose-grid voxel centres inside the ROI when there are at least
   ``MIN_GRID_POINTS`` of them, else (small organs: lens, chiasm, a thin CTV crop) its CT voxels
   (at most ``MAX_POINTS_PER_ROI``, an even stride beyond that), trilinear from the dose grid.
2. ``build_influence`` (once per patient, fields and grid; the result is content-addressed on disk
   and shared by every plan and worker): per field, water-equivalent depth by ray tracing the
   SPR (``ion_range.hu_to_spr``, ``geometry.radiological_depth``), spots over the target
   (``ion_dose.spots_for``), and for every spot and dose-grid voxel
   ``d = IDD(WET, E) · exp(−r²/2σ²) / (2πσ²)`` (``ion_dose.carbon_idd`` averaged over the voxel's
   depth extent, σ = ``ion_dose.lateral_sigma``, r the distance to the spot axis, cut at 3σ), plus
   ``h = (α − α_x)/(α_x (R_max − 1))``, the tissue-free LET part of the dose-averaged α of
   ``rbe.carbon_alpha``. Two sparse matrices: D (Gy per 10⁶ ions) and H = D∘h.
3. ``optimise`` (a pool worker): per objective point, α-Dij A = α_x(D + (R_max − 1)H) and √β-Dij
   B = √β_x D (Zaider–Rossi mixing with constant β), RBE-weighted dose per fraction by
   ``rbe.rbe_weighted_dose_dij`` and its gradient by ``rbe.rbe_weighted_dose_gradient``; L-BFGS-B
   with spot weights ≥ 0, warm-started from the plan's previous weights.

Doses are whole-course Gy(RBE) = fractions × the dose of one fraction; the LQ model is applied to
the dose per fraction (that is where it holds), spot weights are per fraction in units of 10⁶ ions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from rtautoplan.case import Case, Grid
from rtautoplan.physics import ion_dose, rbe
from rtautoplan.physics.geometry import beam_frame, radiological_depth
from rtautoplan.physics.ion_range import csda_range, hu_to_spr
from rtautoplan.plan import Beam, Modality

IONS_PER_UNIT = 1.0e6  # one unit of spot weight = 10⁶ carbon ions (per fraction)
MAX_POINTS_PER_ROI = 30_000
MIN_GRID_POINTS = 64  # an ROI with at least this many dose-grid voxel centres is evaluated on the dose grid
LATERAL_CUT_SIGMA = 3.0
TUMOUR = rbe.TISSUES["tumour"]  # α/β = 10 Gy: every target ROI
NORMAL = rbe.TISSUES["late_normal"]  # α/β = 2 Gy: every other voxel
_UNIT = rbe.Tissue(1.0, 1.0, 2.0)  # α_x = 1, R_max − 1 = 1: carbon_alpha − 1 is the LET factor h

# objective catalogue: type → parameter names
CATALOGUE: dict[str, tuple[str, ...]] = {
    "Max": ("obj_value", "weight"),
    "Min": ("obj_value", "weight"),
    "Uniform": ("obj_value", "weight"),
    "DVHmin": ("Dose", "Volume", "weight"),
}
# parameter → (lower, upper) accepted by the API (Gy(RBE) whole course, %, dimensionless)
BOUNDS: dict[str, tuple[float, float]] = {
    "obj_value": (0.0, 150.0),
    "Dose": (0.0, 150.0),
    "Volume": (0.0, 100.0),
    "weight": (0.0, 10_000.0),
}


# ---------------------------------------------------------------------------------------- grids


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
    target: np.ndarray  # dose grid bool
    isocenter: tuple[float, float, float]
    patient_position: str
    tumour_ct: np.ndarray  # CT grid bool: voxels with target tissue
    body_ct: np.ndarray  # CT grid bool
    rois: dict[str, RoiPoints]

    @staticmethod
    def from_case(case: Case, target_roi: str, dose_grid_mm: float) -> "DoseGridModel":
        ct = case.grid
        factor = _factor(ct, dose_grid_mm)
        spacing = tuple(s * f for s, f in zip(ct.spacing, factor))
        # centre of block 0 = centre of CT voxels 0 … f−1
        origin = tuple(ct.index_to_patient(np.array([(f - 1) / 2.0 for f in factor])))
        hu = _block(case.hu.astype(np.float32), factor, np.mean)
        grid = Grid(origin, spacing, hu.shape, ct.orientation)
        externals = [s for s in case.structures if s.role.value == "EXTERNAL"]
        body_ct = externals[0].mask.astype(bool) if externals else case.hu > -500
        body = _block(body_ct, factor, np.any)
        target_ct = case.structure(target_roi).voxels.astype(bool)
        target = _block(target_ct, factor, np.any)
        centroid = np.argwhere(target_ct).mean(axis=0)
        iso = tuple(float(v) for v in ct.index_to_patient(centroid))
        tumour_ct = np.zeros(ct.shape, bool)
        for s in case.structures:
            if s.role.is_target:
                tumour_ct |= s.voxels.astype(bool)
        rois = {}
        # dose-grid voxel centres → nearest CT voxel (to test ROI membership and pick the tissue)
        centre_kji = [np.minimum(np.rint(np.arange(n) * f + (f - 1) / 2.0).astype(np.int64), m - 1)
                      for n, f, m in zip(hu.shape, factor, ct.shape)]
        centre_flat = np.ravel_multi_index(np.meshgrid(*centre_kji, indexing="ij"), ct.shape).ravel()
        for s in case.structures:
            voxels = s.voxels.astype(bool).ravel()
            coarse = np.flatnonzero(voxels[centre_flat])
            if coarse.size >= MIN_GRID_POINTS:  # the dose grid resolves the ROI: evaluate there
                flat = centre_flat[coarse]
                interp = sp.csr_matrix((np.ones(coarse.size), (np.arange(coarse.size), coarse)),
                                       shape=(coarse.size, centre_flat.size))
            else:  # small ROI: its CT voxels, trilinear from the dose grid
                flat = np.flatnonzero(voxels)
                if flat.size == 0:
                    continue
                if flat.size > MAX_POINTS_PER_ROI:
                    flat = flat[np.linspace(0, flat.size - 1, MAX_POINTS_PER_ROI).round().astype(np.int64)]
                kji = np.stack(np.unravel_index(flat, ct.shape), axis=-1)
                interp = interpolation_matrix(kji, factor, hu.shape)
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
        for a in (self.hu, self.body, self.target):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps([self.grid.origin, self.grid.spacing, self.grid.shape, self.grid.orientation,
                             self.isocenter, self.patient_position, [list(f) for f in fields],
                             sorted(options.items())], default=float).encode())
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


# ----------------------------------------------------------------------------- dose influence


@dataclass(frozen=True, eq=False)
class Influence:
    """Dose influence of all spots on the dose grid: D (Gy per 10⁶ ions), H = D∘h, spots per field."""

    d: sp.csr_matrix
    h: sp.csr_matrix
    spots: tuple[np.ndarray, ...]  # per field: (n, 3) x_b, y_b (mm at the isocentre plane), MeV/u

    @property
    def field_slices(self) -> tuple[slice, ...]:
        out, start = [], 0
        for s in self.spots:
            out.append(slice(start, start + len(s)))
            start += len(s)
        return tuple(out)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, d_data=self.d.data, h_data=self.h.data, indices=self.d.indices, indptr=self.d.indptr,
                 shape=np.array(self.d.shape), sizes=np.array([len(s) for s in self.spots]),
                 spots=np.concatenate(self.spots) if self.spots else np.zeros((0, 3)))
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    @staticmethod
    def load(path: Path) -> "Influence":
        with np.load(path) as z:
            shape = tuple(z["shape"])
            d = sp.csr_matrix((z["d_data"], z["indices"], z["indptr"]), shape=shape)
            h = sp.csr_matrix((z["h_data"], z["indices"], z["indptr"]), shape=shape)
            spots = tuple(np.split(z["spots"], np.cumsum(z["sizes"])[:-1]))
        return Influence(d, h, spots)


def build_influence(model: DoseGridModel, fields, spot_spacing_mm: float = 5.0, layer_spacing_mm: float = 3.0,
                    margin_mm: float = 4.0) -> Influence:
    """D and H of every spot of ``fields`` ((gantry°, couch°) pairs) on the model's dose grid."""
    grid = model.grid
    spr = hu_to_spr(model.hu)
    body_flat = np.flatnonzero(model.body)
    kji = np.stack(np.unravel_index(body_flat, grid.shape), axis=-1)
    xyz = grid.index_to_patient(kji)
    rows, cols, dvals, hvals, all_spots = [], [], [], [], []
    offset = 0
    for gantry, couch in fields:
        frame = beam_frame(Beam("F", float(gantry), model.isocenter, float(couch), modality=Modality.CARBON),
                           model.patient_position)
        wet_grid = radiological_depth(spr, grid, frame, voxels=model.body)
        spots = ion_dose.spots_for(model.target, grid, frame, wet_grid, "carbon", spot_spacing_mm=spot_spacing_mm,
                                   layer_spacing_mm=layer_spacing_mm, margin_mm=margin_mm)
        wet = wet_grid.ravel()[body_flat].astype(float)
        px, py, t = frame.to_beam(xyz)
        # voxel thickness along the beam, in water: the IDD is averaged over it (3 points)
        steps = np.abs(grid.axes @ frame.direction) * np.asarray(grid.spacing)
        half = 0.5 * float(np.linalg.norm(steps)) * spr.ravel()[body_flat] / 3.0
        for energy in np.unique(spots[:, 2])[::-1]:
            layer = np.flatnonzero(spots[:, 2] == energy)
            r0 = float(csda_range(energy, "carbon"))
            sxy = spots[layer, :2]
            sig_max = float(ion_dose.lateral_sigma(2.0 * r0, energy, "carbon")) * frame.sad_mm / t.min()
            reach = LATERAL_CUT_SIGMA * sig_max
            near = np.flatnonzero((px >= sxy[:, 0].min() - reach) & (px <= sxy[:, 0].max() + reach)
                                  & (py >= sxy[:, 1].min() - reach) & (py <= sxy[:, 1].max() + reach)
                                  & np.isfinite(wet))
            if near.size == 0:
                continue
            w_near = wet[near]
            dd = sum(ion_dose.carbon_idd(np.maximum(w_near + s * half[near], 0.0), energy) for s in (-1.0, 0.0, 1.0)) / 3.0
            live = dd > 0
            near, w_near, dd = near[live], w_near[live], dd[live]
            h_near = rbe.carbon_alpha(w_near, energy, _UNIT) - 1.0
            sigma = ion_dose.lateral_sigma(w_near, energy, "carbon")  # mm at depth
            scale = frame.sad_mm / t[near]  # depth → isocentre plane
            sig_iso = sigma * scale
            norm = dd * IONS_PER_UNIT / (2.0 * np.pi * sigma**2)
            # spots of the layer on their lattice: cell (ix, iy) → spot
            cell = np.rint(sxy / spot_spacing_mm - 0.5).astype(np.int64)
            c0 = cell.min(axis=0)
            lut = -np.ones(tuple(cell.max(axis=0) - c0 + 1), np.int64)
            lut[cell[:, 0] - c0[0], cell[:, 1] - c0[1]] = np.arange(len(layer))
            vx = np.floor(px[near] / spot_spacing_mm).astype(np.int64) - c0[0]
            vy = np.floor(py[near] / spot_spacing_mm).astype(np.int64) - c0[1]
            k = int(np.ceil(LATERAL_CUT_SIGMA * sig_iso.max() / spot_spacing_mm)) + 1
            for dx in range(-k, k + 1):
                for dy in range(-k, k + 1):
                    cx, cy = vx + dx, vy + dy
                    ok = (cx >= 0) & (cx < lut.shape[0]) & (cy >= 0) & (cy < lut.shape[1])
                    sel = np.flatnonzero(ok)
                    s_local = lut[cx[sel], cy[sel]]
                    sel, s_local = sel[s_local >= 0], s_local[s_local >= 0]
                    if sel.size == 0:
                        continue
                    r2 = (px[near[sel]] - sxy[s_local, 0]) ** 2 + (py[near[sel]] - sxy[s_local, 1]) ** 2
                    inside = r2 <= (LATERAL_CUT_SIGMA * sig_iso[sel]) ** 2
                    sel, s_local, r2 = sel[inside], s_local[inside], r2[inside]
                    val = norm[sel] * np.exp(-0.5 * r2 / sig_iso[sel] ** 2)
                    rows.append(body_flat[near[sel]])
                    cols.append(offset + layer[s_local])
                    dvals.append(val)
                    hvals.append(val * h_near[sel])
        all_spots.append(spots)
        offset += len(spots)
    shape = (int(np.prod(grid.shape)), offset)
    r, c = np.concatenate(rows), np.concatenate(cols)
    d = sp.csr_matrix((np.concatenate(dvals).astype(np.float32), (r, c)), shape=shape)
    h = sp.csr_matrix((np.concatenate(hvals).astype(np.float32), (r, c)), shape=shape)
    d.sort_indices()
    h.sort_indices()
    assert np.array_equal(d.indices, h.indices) and np.array_equal(d.indptr, h.indptr)
    return Influence(d, h, tuple(all_spots))


def influence_cached(model: DoseGridModel, fields, store: Path, **options) -> tuple[Path, Influence | None]:
    """Path of the (content-addressed) influence file, building and saving it when absent."""
    path = Path(store) / f"dij-{model.key(fields, options)}.npz"
    if path.is_file():
        return path, None
    influence = build_influence(model, fields, **options)
    influence.save(path)
    return path, influence


# ---------------------------------------------------------------------------------- optimiser


class Cancelled(Exception):
    """Raised inside the optimiser when the job's cancel flag is set."""


@dataclass(frozen=True)
class ObjectiveTerm:
    """One catalogue objective as the optimiser sees it (doses Gy(RBE) whole course, volume %)."""

    roi: str
    type: str
    params: tuple[tuple[str, float], ...]

    def p(self, name: str) -> float:
        return dict(self.params)[name]


def _penalty(term: ObjectiveTerm, dose: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Value and gradient (w.r.t. the whole-course RBE dose of the ROI's points) of one objective,
    normalised by the point count and by Rx² (``scale``)."""
    n = dose.size
    w = term.p("weight") / (n * scale)
    if term.type == "Max":
        diff = np.maximum(dose - term.p("obj_value"), 0.0)
    elif term.type == "Min":
        diff = np.minimum(dose - term.p("obj_value"), 0.0)
    elif term.type == "Uniform":
        diff = dose - term.p("obj_value")
    elif term.type == "DVHmin":
        # Wu & Mohan (Med Phys 27:701, 2000): the points below Dose that must come up for Volume %
        # to reach Dose are those between D_Volume (the dose the hottest Volume % receives) and Dose.
        level, vol = term.p("Dose"), term.p("Volume") / 100.0
        m = int(np.ceil(vol * n))
        if m == 0:
            return 0.0, np.zeros(n)
        d_v = np.partition(dose, n - m)[n - m]
        diff = np.where((dose < level) & (dose >= d_v), dose - level, 0.0)
    else:  # pragma: no cover - the API validates types
        raise ValueError(term.type)
    return float(w * diff @ diff), 2.0 * w * diff


class Problem:
    """RBE-weighted objective of a plan's spot weights (per fraction) on the stacked ROI points."""

    def __init__(self, influence: Influence, rois: dict[str, RoiPoints], terms, fractions: int, rx_gy: float,
                 roi_cache: dict | None = None):
        self.terms, self.fractions = tuple(terms), int(fractions)
        self.scale = max(rx_gy, 1.0) ** 2
        names = list(dict.fromkeys(t.roi for t in self.terms))
        cache = roi_cache if roi_cache is not None else {}
        a_parts, b_parts, ax, bx, self.slices, start = [], [], [], [], {}, 0
        for name in names:
            if name not in cache:
                pts = rois[name]
                d_roi = (pts.interp @ influence.d).tocsr()
                h_roi = (pts.interp @ influence.h).tocsr()
                a = sp.diags(pts.alpha_x) @ (d_roi + sp.diags(pts.r_max - 1.0) @ h_roi)
                b = sp.diags(np.sqrt(pts.beta_x)) @ d_roi
                cache[name] = (a.tocsr(), b.tocsr(), pts.alpha_x, pts.beta_x)
            a, b, al, be = cache[name]
            a_parts.append(a)
            b_parts.append(b)
            ax.append(al)
            bx.append(be)
            self.slices[name] = slice(start, start + a.shape[0])
            start += a.shape[0]
        self.a = sp.vstack(a_parts).tocsr() if a_parts else sp.csr_matrix((0, influence.d.shape[1]))
        self.b = sp.vstack(b_parts).tocsr() if b_parts else sp.csr_matrix((0, influence.d.shape[1]))
        self.alpha_x = np.concatenate(ax) if ax else np.zeros(0)
        self.beta_x = np.concatenate(bx) if bx else np.zeros(0)

    def rbe_dose(self, w: np.ndarray) -> np.ndarray:
        """Whole-course RBE-weighted dose (Gy(RBE)) at every stacked point."""
        return self.fractions * rbe.rbe_weighted_dose_dij(None, self.a, self.b, w, self.alpha_x, self.beta_x)

    def __call__(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        dose = self.rbe_dose(w)
        upstream = np.zeros_like(dose)
        value = 0.0
        for term in self.terms:
            sl = self.slices[term.roi]
            v, g = _penalty(term, dose[sl], self.scale)
            value += v
            upstream[sl] += g
        grad = self.fractions * rbe.rbe_weighted_dose_gradient(upstream, self.a, self.b, w, self.alpha_x, self.beta_x)
        return value, grad

    def values(self, w: np.ndarray) -> list[float]:
        dose = self.rbe_dose(w)
        return [_penalty(t, dose[self.slices[t.roi]], self.scale)[0] for t in self.terms]


def initial_weights(influence: Influence, target: RoiPoints, fractions: int, rx_gy: float) -> np.ndarray:
    """Uniform spot weights scaled so the target's mean RBE-weighted dose is Rx: the scale that
    gives Rx of *physical* dose bounds it from above (RBE ≥ 1 in the target), bisection (log scale)
    below that."""
    probe = Problem(influence, {"t": target}, [ObjectiveTerm("t", "Uniform", (("obj_value", 0.0), ("weight", 1.0)))],
                    fractions, rx_gy)
    ones = np.ones(influence.d.shape[1])
    physical = fractions * float(np.mean((probe.b @ ones) / np.sqrt(probe.beta_x)))
    if physical <= 0:
        raise ValueError("no spot reaches the target")
    hi = np.log10(rx_gy / physical)
    lo = hi - 2.0
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        if probe.rbe_dose(ones * 10.0**mid).mean() < rx_gy:
            lo = mid
        else:
            hi = mid
    return ones * 10.0 ** (0.5 * (lo + hi))


def optimise(problem: Problem, x0: np.ndarray, max_iterations: int, tolerance: float | None = 1e-9,
             progress=None, cancelled=None) -> dict:
    """L-BFGS-B on ``problem`` from ``x0`` (weights ≥ 0). ``progress(fraction)`` is called each
    iteration; ``cancelled()`` returning True stops the run with ``Cancelled``. tolerance None or 0:
    run all ``max_iterations`` (no convergence test), for benchmarks."""
    iterations = [0]

    def callback(_x):
        iterations[0] += 1
        if progress is not None:
            progress(min(iterations[0] / max(max_iterations, 1), 1.0))
        if cancelled is not None and cancelled():
            raise Cancelled()

    tol = tolerance if tolerance else 0.0
    t0 = time.perf_counter()
    res = scipy.optimize.minimize(problem, np.maximum(np.asarray(x0, float), 0.0), jac=True, method="L-BFGS-B",
                                  bounds=[(0.0, None)] * len(x0), callback=callback,
                                  options={"maxiter": int(max_iterations), "ftol": tol, "gtol": tol * 1e-2,
                                           "maxls": 30})
    return {"x": np.maximum(res.x, 0.0), "value": float(res.fun), "iterations": int(res.nit),
            "message": str(res.message), "seconds": time.perf_counter() - t0}


def scratch_store() -> Path:
    return Path(tempfile.mkdtemp(prefix="phoenix-store-"))
