"""Penalty functions of the planning objectives and the plan objective f(x) = Σ w_m·O_m(D x).

Every :class:`ObjectiveKind` has one function in :data:`PENALTIES`,
``fn(d, dose_gy, volume) -> (value, gradient)``, of the doses ``d`` (Gy) of the N voxels of
its structure; the gradient is w.r.t. ``d``. The weight is applied by :func:`plan_objective`.
With r₊ = max(r, 0), r₋ = min(r, 0), D = ``dose_gy``, V = ``volume`` (0–1), n = ⌈V·N⌉:

=========  ======================================================  ===============================
kind       value                                                   source
=========  ======================================================  ===============================
DMAX       (1/N) Σ_v (d_v − D)₊²                                   seed 002 eq. 1 (SPEC §2.9); seed 003 Max
DMIN       (1/N) Σ_v (d_v − D)₋²                                   seed 002 eq. 1; seed 003 Min
DMEAN      (mean(d) − D)₊²                                         seed 002 eq. 1
UNIFORM    (1/N) Σ_v (d_v − D)²                                    seed 003 Uniform [CONVENTION §3.2]
DVH_MIN    (1/N) Σ_{v ∈ H_n} (d_v − D)₋²                           seed 003 DVHmin [CONVENTION §3.2]
DV_MAX     (1/N) Σ_{v ∈ H_n} (d_v − D)₊²                           seed 000 over-dose term (SPEC §1.3)
DVH_MAX    (1/N) Σ_{v ∉ H_n} (d_v − D)₊²                           "at most V above D" (Wu & Mohan 2000)
=========  ======================================================  ===============================

H_n is the set of the n hottest voxels of the structure at the current dose (ties broken by
voxel order). DVH_MIN reads "at least V of the structure receives ≥ D": the requirement holds
exactly when the n-th hottest voxel has d ≥ D, so the voxels that violate it are those of H_n
below D; voxels colder than H_n are given up (the usual DVH-constraint penalty, Wu & Mohan,
Med Phys 27:701, 2000). DV_MAX is seed 000's ``||(Mx − t·d_p)_V||²₊``: over-dose of the
hottest fraction V only ("voxels included in V always receive higher dose than those not
selected"). Both stay continuous when H_n changes (voxels swap only at equal doses); their
gradient is that of the current H_n (a valid subgradient at ties).

Seed 000's eq. 1 (:func:`seed000_objectives`) uses unnormalised squared norms; here every
voxel-wise term is a mean over the structure (1/N), as in seed 002, so λ's weigh structures
independently of their voxel counts. ``normalise_d95`` enforces its D95 = d_p constraint by
rescaling after each solve (SPEC §1.3 [NOT SPECIFIED]: not inside ADMM).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import sparse

from rtautoplan.dvh import _d_at
from rtautoplan.optimize.rowproducts import RowView
from rtautoplan.optimize.screening import RowScreen, dmax_row_limits
from rtautoplan.plan import Objective, ObjectiveKind
from rtautoplan.threads import engine_threads, pool

Penalty = Callable[[np.ndarray, float, "float | None"], tuple[float, np.ndarray]]


def _mean_square(r: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    return float(r @ r) / n, (2.0 / n) * r


def _hottest(d: np.ndarray, volume: float | None) -> np.ndarray:
    """Indices of the ⌈volume·N⌉ hottest entries of d (volume in [0, 1])."""
    if volume is None or not 0.0 <= volume <= 1.0:
        raise ValueError(f"a dose-volume objective needs a volume fraction in [0, 1], got {volume!r}")
    n = min(d.size, math.ceil(volume * d.size - 1e-9))
    if n == 0:
        return np.zeros(0, np.int64)
    return np.argpartition(d, d.size - n)[d.size - n:]


def dmax(d, dose_gy, volume=None):
    return _mean_square(np.maximum(d - dose_gy, 0.0), d.size)


def dmin(d, dose_gy, volume=None):
    return _mean_square(np.minimum(d - dose_gy, 0.0), d.size)


def dmean(d, dose_gy, volume=None):
    excess = max(float(np.mean(d)) - dose_gy, 0.0)
    return excess * excess, np.full(d.size, 2.0 * excess / d.size)


def uniform(d, dose_gy, volume=None):
    return _mean_square(d - dose_gy, d.size)


def _on_hottest(d, dose_gy, volume, clip) -> tuple[float, np.ndarray]:
    hot = _hottest(d, volume)
    r = clip(d[hot] - dose_gy, 0.0)
    grad = np.zeros(d.size)
    grad[hot] = (2.0 / d.size) * r
    return float(r @ r) / d.size, grad


def dvh_min(d, dose_gy, volume):
    return _on_hottest(d, dose_gy, volume, np.minimum)


def dv_max(d, dose_gy, volume):
    return _on_hottest(d, dose_gy, volume, np.maximum)


def dvh_max(d, dose_gy, volume):
    """At most ``volume`` of the structure above D: the hottest ⌊V·N⌋ voxels are allowed over D,
    every other voxel over D is penalised (a clinical Vx ≤ y or Dx% ≤ U goal)."""
    allowed = _hottest(d, math.floor(volume * d.size + 1e-9) / d.size if d.size else 0.0)
    r = np.maximum(d - dose_gy, 0.0)
    r[allowed] = 0.0
    return float(r @ r) / d.size, (2.0 / d.size) * r


PENALTIES: dict[ObjectiveKind, Penalty] = {
    ObjectiveKind.DMAX: dmax,
    ObjectiveKind.DMIN: dmin,
    ObjectiveKind.DMEAN: dmean,
    ObjectiveKind.UNIFORM: uniform,
    ObjectiveKind.DVH_MIN: dvh_min,
    ObjectiveKind.DV_MAX: dv_max,
    ObjectiveKind.DVH_MAX: dvh_max,
}


def _pool(n: int) -> ThreadPoolExecutor:
    return pool(n, "spmv")


PARALLEL_MIN_NNZ = 200_000  # below this, one thread: the hand-off costs more than it saves
ACTIVE_NNZ_FRACTION = 0.3  # Mᵀ g on the active rows only when they hold less than this share of the entries
SCREEN_DMAX_ROWS = True  # M x without the provably inactive DMAX rows (optimize.screening) …
SCREEN_MIN_NNZ = PARALLEL_MIN_NNZ  # … for matrices of at least this many entries


def contiguous(index_sets) -> tuple:
    """Each index array that is a run of consecutive indices as the equal slice (a view, no gather), others as is."""
    def one(i):
        i = np.asarray(i)
        if i.size and i[0] + i.size - 1 == i[-1] and (i.size < 2 or np.all(np.diff(i) == 1)):
            return slice(int(i[0]), int(i[-1]) + 1)
        return i
    return tuple(one(i) for i in index_sets)


def weighted_penalties(objectives, index_sets, weights, d: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ_m w_m P_m(d[I_m]) and its gradient w.r.t. d (each I_m holds unique indices or is a slice, so += is
    exact)."""
    g = np.zeros(d.size)
    value = 0.0
    for o, index, w in zip(objectives, index_sets, weights):
        v, grad = PENALTIES[o.kind](d[index], o.dose_gy, o.volume)
        value += w * v
        g[index] += w * grad
    return value, g


def dmean_columns(cache: dict, objectives, compute) -> np.ndarray:
    """The DMEAN column means Σ_{v∈m} M_vj / N_m of the curvature diagonal (columns × DMEAN objectives): they
    depend on the structures, not on the weights, so ``compute()`` runs once per set of DMEAN objectives and
    the objectives that share the rows (``with_objectives``) share the result (the same numbers)."""
    key = tuple(i for i, o in enumerate(objectives) if o.kind is ObjectiveKind.DMEAN)
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _view(matrix, rows, threads: int) -> RowView:
    return RowView(matrix, rows, threads=threads, pool=_pool, parallel_min_nnz=PARALLEL_MIN_NNZ)


@dataclass(eq=False)
class PlanObjective:
    """f(x) = Σ_m w_m · PENALTIES[kind_m](d[rows_m], D_m, V_m) with d = M x; callable → (value, ∇_x f).

    Only the rows that some objective uses take part, read in place from the dose-influence matrix
    (``view``, a :class:`~rtautoplan.optimize.rowproducts.RowView`: the matrix and an index array of the used
    rows; no copy of their entries), so one evaluation costs one product M x, one Mᵀ g and O(Σ N_m) for the
    penalties. Both products run in the matrix's dtype (float32: half the memory traffic of float64, and
    these products are memory-bound) and, for ≥ ``PARALLEL_MIN_NNZ`` entries, on ``threads`` row blocks of
    equal entries at once: M x block by block into disjoint slices of d, Mᵀ g as the sum of the blocks'
    products. ``weights`` may be changed in place between solves (a planner tuning w). ``matrix`` is the
    materialised sub-matrix, built only when asked for (ADMM's workspace, tests).

    **Active rows** (exact): the penalty gradient g is zero on every voxel that meets its limits,
    so Mᵀ g needs only the rows with g ≠ 0. When they hold less than ``ACTIVE_NNZ_FRACTION`` of
    the entries, Mᵀ g runs over those rows only (a row-index product, nothing gathered). On hn01 (1, 2, 2)
    the active rows hold 60 % of the entries at the uniform start and ≈ 4 % after 20 iterations.

    **Screened rows** (exact): inside ``__call__``, M x skips the rows whose only objectives are
    DMAX limits while a bound proves them below their limit (:mod:`rtautoplan.optimize.screening`);
    values and gradients are bitwise those of the full product. ``dose`` and ``terms`` stay full.
    """

    view: RowView
    objectives: tuple[Objective, ...]
    local_rows: tuple[np.ndarray, ...]
    weights: np.ndarray
    evaluations: int = 0
    _curvature: tuple = field(default=(), repr=False)
    _row_norm: list = field(default_factory=list, repr=False)  # [‖D_v‖₂ per row], shared by with_objectives
    _means: dict = field(default_factory=dict, repr=False)  # DMEAN column means (dmean_columns), shared
    _sub: list = field(default_factory=list, repr=False)  # [materialised sub-matrix], shared, on demand
    _screen: RowScreen | bool | None = field(default=None, repr=False)  # None: not decided; False: off

    @property
    def matrix(self) -> sparse.csr_matrix:
        """The used rows as a CSR matrix (a copy, made once on demand: the optimiser itself never needs it)."""
        if not self._sub:
            self._sub.append(self.view.tocsr())
        return self._sub[0]

    @property
    def row_nnz(self) -> np.ndarray:
        return self.view.row_nnz

    @property
    def threads(self) -> int:
        return self.view.threads

    def with_objectives(self, objectives: Sequence[Objective], weights: Sequence[float] | None = None) -> PlanObjective:
        """The same problem with new limits, volumes or weights (same structures in the same order):
        shares the rows and their norms, and keeps the curvature diagonal when the weights and kinds are
        unchanged (a warm re-optimisation then builds nothing)."""
        objectives = tuple(objectives)
        if [o.structure for o in objectives] != [o.structure for o in self.objectives]:
            raise ValueError("with_objectives needs the same structures in the same order; use plan_objective")
        w = np.array([o.weight for o in objectives] if weights is None else weights, float)
        out = PlanObjective(self.view, objectives, self.local_rows, w, _row_norm=self._row_norm, _sub=self._sub,
                            _means=self._means)
        if [o.kind for o in objectives] == [o.kind for o in self.objectives]:
            out._curvature = self._curvature
        return out

    def _screened_dose(self, x: np.ndarray) -> np.ndarray:
        """Dose for the penalties: exact on every row that can be active (optimize.screening)."""
        x = np.asarray(x, self.view.dtype)
        if self._screen is None:  # decided once, at the first evaluation
            usable = SCREEN_DMAX_ROWS and self.view.nnz >= SCREEN_MIN_NNZ and self.view.data_min() >= 0.0
            self._screen = None if usable else False
        if self._screen is False:
            return np.asarray(self.view @ x, np.float64)
        if self._screen is None:
            if not self._row_norm:
                self._row_norm.append(self.view.row_norms())
            limits = dmax_row_limits(self.view.shape[0], self.objectives, self.local_rows, ObjectiveKind.DMAX)
            self._screen = RowScreen(self.view, limits, self._row_norm[0])
        return np.asarray(self._screen.dose(x), np.float64)

    def _rmatvec_active(self, g: np.ndarray) -> np.ndarray:
        """Mᵀ g, on the rows with g ≠ 0 only when they are few (class docstring)."""
        active = np.flatnonzero(g)
        if self.row_nnz[active].sum() < ACTIVE_NNZ_FRACTION * self.view.nnz:
            return self.view.rmatvec_rows(active, g[active])
        return self.view.rmatvec(g)

    def dose(self, x: np.ndarray) -> np.ndarray:
        """Dose (Gy) of the used rows (float64; the product runs in the matrix's dtype, since a
        float32 matrix times a float64 vector would upcast, and cost twice as much)."""
        return np.asarray(self.view @ np.asarray(x, self.view.dtype), np.float64)

    def terms(self, x: np.ndarray) -> np.ndarray:
        """The unweighted value of every objective at x."""
        d = self.dose(x)
        return np.array([PENALTIES[o.kind](d[r], o.dose_gy, o.volume)[0] for o, r in zip(self.objectives, self.local_rows)])

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.evaluations += 1
        value, g = weighted_penalties(self.objectives, self.local_rows, self.weights, self._screened_dose(x))
        return value, np.asarray(self._rmatvec_active(g.astype(self.view.dtype)), np.float64)

    def curvature_diagonal(self) -> np.ndarray:
        """diag of the Gauss–Newton Hessian of f with every term active, up to the factor 2:
        Σ_m w_m/N_m Σ_{v∈m} M_vj² for the voxel-wise kinds, w_m (Σ_{v∈m} M_vj / N_m)² for DMEAN.
        Its inverse square root is the Jacobi variable scaling of :func:`~rtautoplan.optimize.lbfgs.solve_lbfgs`.
        Computed in the matrix's dtype, the squares entry by entry (no squared copy), cached per weight vector."""
        key = self.weights.tobytes()
        if not self._curvature or self._curvature[0] != key:
            self._curvature = (key, self._curvature_diagonal())
        return self._curvature[1].copy()

    def _curvature_diagonal(self) -> np.ndarray:
        n_rows = self.view.shape[0]
        voxelwise = np.zeros(n_rows, self.view.dtype)
        means = [(rows, w) for o, rows, w in zip(self.objectives, self.local_rows, self.weights)
                 if o.kind is ObjectiveKind.DMEAN]
        for o, rows, w in zip(self.objectives, self.local_rows, self.weights):
            if o.kind is not ObjectiveKind.DMEAN:
                voxelwise[rows] += w / rows.size
        diag = np.zeros(self.view.shape[1])
        if means:  # all DMEAN column means in one pass over M: Mᵀ B, B = [1_rows / N] per objective
            def column_means():
                b = np.zeros((n_rows, len(means)), self.view.dtype)
                for k, (rows, _) in enumerate(means):
                    b[rows, k] = 1.0 / rows.size
                return np.asarray(self.view.rmatmat(b), np.float64)

            col_means = dmean_columns(self._means, self.objectives, column_means)
            diag += (col_means**2) @ np.array([w for _, w in means], float)
        return diag + np.asarray(self.view.rmatvec_squared(voxelwise), np.float64)


def plan_objective(matrix: sparse.spmatrix, objectives: Sequence[Objective], rows: Mapping[str, np.ndarray],
                   weights: Sequence[float] | None = None, threads: int | None = None) -> PlanObjective:
    """The plan objective of ``objectives`` on the dose-influence ``matrix`` (rows × beamlets).

    rows: structure name → row indices of ``matrix`` (e.g. ``Dij.rows_of(structure.voxels)``).
    weights: override the objectives' weights (default: ``Objective.weight``).
    threads: threads of the sparse products (default :func:`engine_threads`).
    """
    objectives = tuple(objectives)
    missing = sorted({o.structure for o in objectives} - set(rows))
    if missing:
        raise KeyError(f"no rows for the structures {missing} of the objectives")
    empty = sorted({o.structure for o in objectives if len(rows[o.structure]) == 0})
    if empty:
        raise ValueError(f"structures {empty} have no voxel on the dose grid: drop their objectives")
    used = np.unique(np.concatenate([np.asarray(rows[o.structure], np.int64) for o in objectives]))
    local = tuple(np.searchsorted(used, np.asarray(rows[o.structure], np.int64)) for o in objectives)
    w = np.array([o.weight for o in objectives] if weights is None else weights, float)
    if w.shape != (len(objectives),):
        raise ValueError(f"need {len(objectives)} weights, got {w.shape}")
    view = _view(matrix, used, engine_threads() if threads is None else int(threads))
    return PlanObjective(view, objectives, local, w)


@dataclass(eq=False)
class PointObjective:
    """f(x) = Σ_m w_m · PENALTIES[kind_m](d[points_m], D_m, V_m) with d = P (M x): the objectives read
    the dose at the structures' CT voxels, trilinear from the dose-grid rows (``physics.points``), where
    the plan's dose is reported. M: the used rows × beamlets, read in place (``view``, no copy); P: points ×
    used rows (≤ 8 entries a row). One evaluation costs M x, P (Mx), Pᵀ g and Mᵀ (Pᵀ g) on the rows with a
    non-zero gradient (a row-index product)."""

    view: RowView
    interp: sparse.csr_matrix
    objectives: tuple[Objective, ...]
    local_points: tuple[np.ndarray, ...]
    weights: np.ndarray
    evaluations: int = 0
    _curvature: tuple = field(default=(), repr=False)
    _sub: list = field(default_factory=list, repr=False)
    _points: list = field(default_factory=list, repr=False)  # [(RowView of P, local_points as slices)], shared
    _means: dict = field(default_factory=dict, repr=False)  # DMEAN column means (dmean_columns), shared

    def _point_side(self) -> tuple[RowView, tuple]:
        """P as a row view on the engine's threads (P y by rows, Pᵀ g by columns: bitwise scipy's for any number
        of threads), and each structure's points as a slice (they are consecutive: ``point_objective``)."""
        if not self._points:
            self._points.append((_view(self.interp, None, self.view.threads), contiguous(self.local_points)))
        return self._points[0]

    @property
    def matrix(self) -> sparse.csr_matrix:
        """The used rows as a CSR matrix (a copy, made once on demand)."""
        if not self._sub:
            self._sub.append(self.view.tocsr())
        return self._sub[0]

    def with_objectives(self, objectives: Sequence[Objective], weights: Sequence[float] | None = None):
        """The same problem with new limits, volumes or weights (same structures in the same order)."""
        objectives = tuple(objectives)
        if [o.structure for o in objectives] != [o.structure for o in self.objectives]:
            raise ValueError("with_objectives needs the same structures in the same order; use point_objective")
        w = np.array([o.weight for o in objectives] if weights is None else weights, float)
        out = PointObjective(self.view, self.interp, objectives, self.local_points, w, _sub=self._sub,
                             _points=self._points, _means=self._means)
        if [o.kind for o in objectives] == [o.kind for o in self.objectives]:
            out._curvature = self._curvature
        return out

    def dose(self, x: np.ndarray) -> np.ndarray:
        """Dose (Gy) at the points (float64)."""
        return np.asarray(self._point_side()[0] @ (self.view @ np.asarray(x, self.view.dtype)), np.float64)

    def terms(self, x: np.ndarray) -> np.ndarray:
        d = self.dose(x)
        return np.array([PENALTIES[o.kind](d[p], o.dose_gy, o.volume)[0]
                         for o, p in zip(self.objectives, self.local_points)])

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.evaluations += 1
        points, blocks = self._point_side()
        value, g = weighted_penalties(self.objectives, blocks, self.weights, self.dose(x))
        active = np.flatnonzero(g)
        g_rows = np.asarray(points.rmatvec_rows(active, g[active]), self.view.dtype)
        active = np.flatnonzero(g_rows)
        if active.size == 0:
            return value, np.zeros(self.view.shape[1])
        return value, np.asarray(self.view.rmatvec_rows(active, g_rows[active]), np.float64)

    def curvature_diagonal(self) -> np.ndarray:
        """diag of the Gauss–Newton Hessian, up to the factor 2, as ``PlanObjective``'s on the rows P maps
        the points to (P's cross terms dropped for the voxel-wise kinds; DMEAN exact, w_m (Σ_v (PM)_vj/N_m)²);
        the squares in float64, entry by entry (no squared copy of M)."""
        key = self.weights.tobytes()
        if not self._curvature or self._curvature[0] != key:
            per_point = np.zeros(self.interp.shape[0])
            means = []
            for o, points, w in zip(self.objectives, self.local_points, self.weights):
                if o.kind is ObjectiveKind.DMEAN:
                    means.append((points, w))
                else:
                    per_point[points] += w / points.size
            diag = self.view.rmatvec_squared(np.asarray(self.interp.T @ per_point, float), np.float64)
            if means:
                def column_means():
                    b = np.zeros((self.interp.shape[0], len(means)))
                    for k, (points, _) in enumerate(means):
                        b[points, k] = 1.0 / points.size
                    return np.asarray(self.view.rmatmat(np.asarray(self.interp.T @ b, self.view.dtype)), np.float64)

                col_means = dmean_columns(self._means, self.objectives, column_means)
                diag = diag + (col_means**2) @ np.array([w for _, w in means], float)
            self._curvature = (key, diag)
        return self._curvature[1].copy()


def point_objective(matrix: sparse.spmatrix, objectives: Sequence[Objective],
                    points: Mapping[str, sparse.csr_matrix], weights: Sequence[float] | None = None,
                    threads: int | None = None) -> PointObjective:
    """The plan objective of ``objectives`` read at objective points (``PointObjective``).

    points: structure name → its interpolation P_s (its points × all rows of ``matrix``, e.g.
    ``physics.points.interpolation``). threads: threads of M x (default :func:`engine_threads`)."""
    objectives = tuple(objectives)
    names = list(dict.fromkeys(o.structure for o in objectives))
    missing = sorted(set(names) - set(points))
    if missing:
        raise KeyError(f"no objective points for the structures {missing} of the objectives")
    stacked = sparse.vstack([points[n] for n in names], format="csr")
    used = np.unique(stacked.indices)
    remap = np.full(stacked.shape[1], -1, np.int64)
    remap[used] = np.arange(used.size)
    interp = sparse.csr_matrix((stacked.data, remap[stacked.indices], stacked.indptr),
                               shape=(stacked.shape[0], used.size))
    starts = np.cumsum([0] + [points[n].shape[0] for n in names])
    block = {n: np.arange(starts[i], starts[i + 1]) for i, n in enumerate(names)}
    w = np.array([o.weight for o in objectives] if weights is None else weights, float)
    view = _view(matrix, used, engine_threads() if threads is None else int(threads))
    return PointObjective(view, interp.astype(np.float32), objectives, tuple(block[o.structure] for o in objectives), w)


# --- seed 000 ----------------------------------------------------------------------------------


def seed000_objectives(ptv: str, d_p: float, lam: float, t: float, v_ptv: float,
                       oars: Sequence[tuple[str, float, float, float]]) -> tuple[Objective, ...]:
    """Seed 000's eq. 1 (SPEC §1.3) as objectives:

    ½‖Mx − d_p‖²₋ → DMIN(PTV, d_p, weight ½); λ/2‖(Mx − t·d_p)_{V_PTV}‖²₊ → DV_MAX(PTV, t·d_p,
    weight λ/2, volume V_PTV); λ_i/2‖(M_i x − t_i·d_p)_{V_i}‖²₊ → DV_MAX(OAR_i, t_i·d_p, λ_i/2, V_i).
    ``oars``: (name, λ_i, t_i, V_i). Volumes are fractions 0–1; terms are voxel means (module
    docstring). The D95 = d_p constraint is :func:`normalise_d95`, applied after each solve.
    """
    out = [Objective(ptv, ObjectiveKind.DMIN, d_p, 0.5, adjustable=False),
           Objective(ptv, ObjectiveKind.DV_MAX, t * d_p, lam / 2.0, volume=v_ptv)]
    out += [Objective(name, ObjectiveKind.DV_MAX, t_i * d_p, lam_i / 2.0, volume=v_i) for name, lam_i, t_i, v_i in oars]
    return tuple(out)


def normalise_d95(x: np.ndarray, matrix: sparse.spmatrix, ptv_rows: np.ndarray, d_p: float) -> np.ndarray:
    """x scaled so that D95 of the PTV (``rtautoplan.dvh`` definition) equals d_p exactly.

    Dose is linear in x and D95 is positively homogeneous, so one scale factor
    d_p / D95(M x) does it. Applied after each solve (SPEC §1.3 [NOT SPECIFIED]).
    """
    sub = sparse.csr_matrix(matrix)[np.asarray(ptv_rows)]
    d = np.asarray(sub @ np.asarray(x, sub.dtype), np.float64)
    d95 = float(_d_at(np.sort(d), 0.95))
    if d95 <= 0:
        raise ValueError("D95 of the PTV is 0: no beamlet reaches it, nothing to normalise")
    return np.asarray(x, np.float64) * (d_p / d95)
