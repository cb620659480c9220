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
from rtautoplan.physics import rbe

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
