"""The objective catalogue and the RBE-weighted objective function of a plan's spot weights
(what stage 3 of ``engine`` minimises): parameter names and API bounds per objective type, the
penalty of each type, and ``Problem``, their sum with its gradient on the stacked ROI points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rtautoplan.adapters.phoenix_api.dose_grid import RoiPoints
from rtautoplan.adapters.phoenix_api.influence import Influence

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
    """RBE-weighted objective of a plan's spot weights (per fraction) on the stacked ROI points.

    Evaluated in two steps: D·w and H·w on the dose-grid voxels the points interpolate from
    (``nodes``, each once), then trilinear to the points and the LQ model per point (its tissue).
    The gradient runs the same chain backwards. A point's dose is thereby exactly the dose
    ``DoseGridModel.dose_on_ct`` reports on its CT voxel.

    roi_cache: a dict kept by the caller (a worker) to re-use the matrices of the same ROI set.
    """

    def __init__(self, influence: Influence, rois: dict[str, RoiPoints], terms, fractions: int, rx_gy: float,
                 roi_cache: dict | None = None):
        self.terms, self.fractions = tuple(terms), int(fractions)
        self.scale = max(rx_gy, 1.0) ** 2
        names = tuple(dict.fromkeys(t.roi for t in self.terms))
        cache = roi_cache if roi_cache is not None else {}
        if names not in cache:
            cache[names] = _stack(influence, [rois[n] for n in names])
        self.d, self.h, self.interp, self.alpha_x, self.beta_x, self.r_max, sizes = cache[names]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.slices = {n: slice(int(a), int(b)) for n, a, b in zip(names, starts[:-1], starts[1:])}

    def _physical(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Physical dose d and LET product h per fraction at every point."""
        return self.interp @ (self.d @ w), self.interp @ (self.h @ w)

    def physical_dose(self, w: np.ndarray) -> np.ndarray:
        """Whole-course physical dose (Gy) at every stacked point."""
        return self.fractions * self._physical(w)[0]

    def _effect(self, d: np.ndarray, h: np.ndarray) -> np.ndarray:
        """LQ effect per fraction: α_x(d + (R_max − 1)h) + β_x d² (``rbe`` module, Zaider–Rossi mixing)."""
        return np.maximum(self.alpha_x * (d + (self.r_max - 1.0) * h) + self.beta_x * d * d, 0.0)

    def rbe_dose(self, w: np.ndarray) -> np.ndarray:
        """Whole-course RBE-weighted dose (Gy(RBE)) at every stacked point."""
        effect = self._effect(*self._physical(w))
        return self.fractions * (-self.alpha_x + np.sqrt(self.alpha_x**2 + 4.0 * self.beta_x * effect)) / (
            2.0 * self.beta_x)

    def __call__(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        d, h = self._physical(w)
        root = np.sqrt(self.alpha_x**2 + 4.0 * self.beta_x * self._effect(d, h))
        dose = self.fractions * (root - self.alpha_x) / (2.0 * self.beta_x)
        upstream = np.zeros_like(dose)
        value = 0.0
        for term in self.terms:
            sl = self.slices[term.roi]
            v, g = _penalty(term, dose[sl], self.scale)
            value += v
            upstream[sl] += g
        s = self.fractions * upstream / root  # ∂D_RBE/∂E = 1/√(α² + 4βE)
        g_d = self.interp.T @ (s * (self.alpha_x + 2.0 * self.beta_x * d))
        g_h = self.interp.T @ (s * self.alpha_x * (self.r_max - 1.0))
        return value, self.d.T @ g_d + self.h.T @ g_h

    def values(self, w: np.ndarray) -> list[float]:
        dose = self.rbe_dose(w)
        return [_penalty(t, dose[self.slices[t.roi]], self.scale)[0] for t in self.terms]


def _stack(influence: Influence, points: list[RoiPoints]):
    """(D, H on the needed dose-grid voxels, interpolation points × those voxels, α_x, β_x, R_max per
    point, points per ROI) of several ROIs stacked in order."""
    if not points:
        empty = sp.csr_matrix((0, influence.d.shape[1]), dtype=np.float32)
        return empty, empty, sp.csr_matrix((0, 0)), np.zeros(0), np.zeros(0), np.zeros(0), []
    interp = sp.vstack([pts.interp for pts in points]).tocsc()
    nodes = np.flatnonzero(np.diff(interp.indptr))  # dose-grid voxels some point interpolates from
    tissue = [np.concatenate([getattr(pts, name) for pts in points]).astype(float)
              for name in ("alpha_x", "beta_x", "r_max")]
    return (influence.d[nodes], influence.h[nodes], interp[:, nodes].tocsr(), *tissue,
            [pts.flat.size for pts in points])
