"""Safe screening of inactive maximum-dose rows for the plan objective's M x (exact).

Most entries of a plan's dose-influence matrix sit in rows whose only objectives are DMAX limits
(rings, skin, organs at risk: 69 % of the entries on hn01 (1, 2, 2)), and most of those voxels are
well below their limit, where their penalty and gradient are exactly 0. Their dose need not be
computed while it provably stays below the limit.

Bound. For D ≥ 0 (a dose matrix) and a reference point x_r with dose d_r,

    d_v(x) − d_v(x_r) = D_v (x − x_r) ≤ D_v (x − x_r)₊ ≤ ‖D_v‖₂ · ‖(x − x_r)₊‖₂,

so row v stays at or below its limit L_v (the lowest DMAX limit it carries) for every x with
‖(x − x_r)₊‖₂ < ρ_v = (L_v − d_v(x_r)) / ‖D_v‖₂. At a refresh (a full product at x_r) the rows
with ρ_v ≤ R are kept, together with every row that carries any other kind
of objective; until an evaluation point leaves the ball ‖(x − x_r)₊‖₂ < R, only those rows
are multiplied and the screened rows keep their reference dose (below every limit they carry, so
their terms are 0, as they are at the true dose). Outside the ball: a new refresh.

Radius R: ``ball_steps`` times the mean distance ‖(x − x_r)₊‖₂ per evaluation since the last
refresh (the solver's speed), so a refresh comes about every ``ball_steps`` evaluations; the
first refresh screens nothing beyond ρ_v > 0 … R = 0, i.e. it only measures the speed. A refresh
costs one full product and a new row list (the kept rows are read in place through a
:class:`~rtautoplan.optimize.rowproducts.RowView`, never copied); with 8 steps per ball and ~40 % of the
entries kept, M x costs about 0.6 of the full product on average.
"""

from __future__ import annotations

import numpy as np

BALL_STEPS = 8.0
MIN_SCREENED_FRACTION = 0.2  # below this share of the entries screened out, keep the full product


class RowScreen:
    """Screening state of one plan objective (module docstring).

    view: the objective's rows (a ``RowView`` of a matrix ≥ 0). limits: per row, the lowest DMAX limit
    (Gy), +inf for rows that carry any other objective kind (never screened). row_norm: ‖D_v‖₂ per row
    (``RowView.row_norms``).
    """

    def __init__(self, view, limits: np.ndarray, row_norm: np.ndarray, ball_steps: float = BALL_STEPS):
        self.view, self.limits, self.row_norm = view, np.asarray(limits, float), row_norm
        self.ball_steps = ball_steps
        self.screenable = np.isfinite(self.limits)
        self.refreshes = self.inside = 0  # full products, evaluations inside the ball
        self._x_ref = None
        self._d_ref = None
        self._rows = None  # rows multiplied inside the ball
        self._sub = None  # their RowView
        self._radius = 0.0
        self._travel, self._evals = 0.0, 0

    def dose(self, x: np.ndarray) -> np.ndarray:
        """M x (in the matrix's dtype) on every row that can be active; the screened rows hold their
        reference dose, which is below every limit they carry."""
        if self._x_ref is not None:
            delta = float(np.linalg.norm(np.maximum(x - self._x_ref, 0.0)))
            if delta < self._radius:
                self._travel, self._evals = max(self._travel, delta), self._evals + 1
                self.inside += 1
                d = self._d_ref.copy()
                d[self._rows] = self._sub @ x
                return d
            self._travel, self._evals = max(self._travel, delta), self._evals + 1
        return self._refresh(x)

    def _refresh(self, x: np.ndarray) -> np.ndarray:
        d = self.view @ x
        speed = self._travel / self._evals if self._evals else 0.0
        self._radius = self.ball_steps * speed
        self._x_ref, self._d_ref = x.copy(), d
        self._travel, self._evals = 0.0, 0
        self.refreshes += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(self.row_norm > 0, (self.limits - d) / self.row_norm, np.inf)
        keep = ~(self.screenable & (rho > self._radius))
        if self._radius <= 0 or self.view.row_nnz[~keep].sum() < MIN_SCREENED_FRACTION * self.view.nnz:
            self._radius = 0.0  # not worth it: the next call refreshes (and measures the speed)
            return d
        self._rows = np.flatnonzero(keep)
        self._sub = self.view.subset(self._rows)
        return d


def dmax_row_limits(n_rows: int, objectives, local_rows, dmax_kind) -> np.ndarray:
    """Per row: the lowest limit of the DMAX objectives on it, +inf where any other kind (or none)
    applies (those rows are always computed)."""
    limit = np.full(n_rows, np.inf)
    other = np.zeros(n_rows, bool)
    has_max = np.zeros(n_rows, bool)
    for o, rows in zip(objectives, local_rows):
        if o.kind is dmax_kind:
            limit[rows] = np.minimum(limit[rows], o.dose_gy)
            has_max[rows] = True
        else:
            other[rows] = True
    return np.where(has_max & ~other, limit, np.inf)
