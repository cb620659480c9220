"""Our own engine behind the TPS protocol: intensity-modulated proton therapy (pencil-beam
scanning), seed 002's planning problem (SPEC §2.1, §2.9).

* ``prepare``: the spot-influence matrix (``physics.ion_dij``, Gy per MU, cached on disk) of 3
  equispaced coplanar fields by default (seed 002 plans use up to 5: pass ``n_beams`` or beams).
* ``optimize``: L-BFGS-B (``optimize.lbfgs.solve_lbfgs``) on the seed-002 loss
  (``optimize.objectives.plan_objective``) of the **RBE-weighted dose** D_RBE = 1.1 · D (constant
  proton RBE, ``rbe.RBE_PROTON``): the objectives' limits are Gy(RBE). Warm-started from the
  previous solution (the first solve from uniform spot weights scaled to the highest prescription);
  when the objectives name the same structures as last time, the previous plan objective is
  re-used with the new limits and weights (``PlanObjective.with_objectives``).
* **Minimum MU per spot** (SPEC §2.1, 3 MU; course threshold m = min_mu · fractions), handled inside
  the optimisation as a semi-continuous constraint x_j ∈ {0} ∪ [m, ∞) (``min_mu_method="bounded"``, the
  default): from the unconstrained solution, spots below m/2 are switched off and the others kept with the
  lower bound m; L-BFGS-B then re-optimises the kept spots with that bound (warm start). Each round then
  revises the on/off set by the Gauss–Newton model of f (gradient g, curvature diagonal H): an off spot is
  switched on at m when g_j m + H_jj m² < 0, an on spot at its bound switched off when −g_j x_j + H_jj x_j² < 0,
  and the kept spots are re-optimised, until no spot changes or ``mu_rounds`` rounds; the best plan is
  returned. Every returned spot is 0 or ≥ m by construction (no unoptimised removal). ``min_mu_method=
  "delete"`` is the former rule: spots in (0, m) are deleted and the rest re-optimised without a bound,
  repeatedly, then any left are removed without re-optimisation (``last_run.forced``). SPEC §2.16 leaves
  re-optimisation open; we re-optimise. Every ``optimize`` call starts again from the full spot set
  (warm-started from the last MUs), so spots switched off under one set of objectives can come back.
* ``plan().weights``: MU per fraction of every spot, per beam (the spot order of
  ``IonDij.spots[b]``: x_b, y_b, energy); ``Dose`` is EFFECTIVE (Gy(RBE)), on the CT grid
  (trilinear from the dose grid), the dose-grid dose as its ``native``.

The optimiser variable is the course MU (dose = D·x over the whole course); per-fraction MU =
x / fractions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rtautoplan.adapters.inhouse import dose_of_dij, grid_options
from rtautoplan.case import Case
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import plan_objective, point_objective
from rtautoplan.physics.points import structure_points
from rtautoplan.physics.dij import beams_for
from rtautoplan.physics.ion_dij import IonDij, ion_dij_cached
from rtautoplan.physics.rbe import RBE_PROTON
from rtautoplan.plan import Beam, Dose, Modality, Objective, Plan

log = logging.getLogger(__name__)

MIN_MU_PER_SPOT = 3.0  # SPEC §2.1
MU_ROUNDS = 5  # re-optimisations of the minimum-MU step (bounded; module docstring)
MIN_MU_METHODS = ("bounded", "delete")


@dataclass(frozen=True)
class MURun:
    """What the minimum-MU step of the last ``optimize`` did: objective value (RBE-weighted loss)
    before removal and at the end, re-optimisations done, spots removed (total and still
    removed at the end), spots removed without re-optimisation after the last round, L-BFGS
    iterations (all solves) and wall time."""

    value_unconstrained: float
    value_final: float
    rounds: int
    removed: int
    forced: int
    active: int
    iterations: int
    seconds: float


class _Restricted:
    """f restricted to the active spots: y ↦ f(x) with x = 0 off ``active``, x[active] = y."""

    def __init__(self, f, active: np.ndarray):
        self.f, self.active, self.n = f, np.flatnonzero(active), active.size

    def _embed(self, y):
        x = np.zeros(self.n)
        x[self.active] = y
        return x

    def __call__(self, y):
        value, grad = self.f(self._embed(y))
        return value, grad[self.active]

    def curvature_diagonal(self):
        return np.asarray(self.f.curvature_diagonal())[self.active]


class InHouseProton:
    """Proton PBS (IMPT) with the in-house engine (module docstring).

    n_beams, start_deg: equispaced coplanar fields when ``prepare`` gets none. spot_spacing_mm,
    layer_spacing_mm: the spot-influence matrix (``ion_dij.spot_influence``). dose_grid_mm (default
    ``dij.DOSE_GRID_MM``) or dose_grid_factor: its dose grid, as ``InHousePhoton``'s.
    min_mu: minimum MU per spot per fraction (0 disables the rule). min_mu_method: "bounded" (inside the
    optimisation) or "delete" (the former rule), module docstring. mu_rounds: re-optimisations of the
    minimum-MU step. max_iter: L-BFGS-B iteration cap per solve. particles_per_mu: MU calibration
    (default ``ion_dij.PARTICLES_PER_MU``). solver_options: further ``solve_lbfgs`` options of every solve
    (e.g. the stopping rule's tol, window, f_scale). objective_points: "ct" (the objectives read the dose
    at the structures' CT voxels, ``physics.points``) or "dose_grid", as ``InHousePhoton``'s.
    """

    modality = Modality.PROTON
    name = "inhouse-proton"
    rbe = RBE_PROTON

    def __init__(self, n_beams: int = 3, start_deg: float = 0.0, spot_spacing_mm: float = 5.0,
                 layer_spacing_mm: float | None = None, dose_grid_factor=None, min_mu: float = MIN_MU_PER_SPOT,
                 mu_rounds: int = MU_ROUNDS, max_iter: int = 200, cache_dir=None, particles_per_mu: float | None = None,
                 dose_grid_mm=None, objective_points: str = "ct", min_mu_method: str = "bounded",
                 solver_options: dict | None = None):
        if not 1 <= n_beams <= 9:
            raise ValueError(f"n_beams must be 1–9, got {n_beams}")
        if objective_points not in ("ct", "dose_grid"):
            raise ValueError(f"objective_points must be 'ct' or 'dose_grid', not {objective_points!r}")
        if min_mu_method not in MIN_MU_METHODS:
            raise ValueError(f"min_mu_method must be one of {MIN_MU_METHODS}, not {min_mu_method!r}")
        self.objective_points = objective_points
        self._points: dict[str, object] = {}
        self.min_mu_method = min_mu_method
        self.solver_options = dict(solver_options or {})
        self.n_beams, self.start_deg = n_beams, start_deg
        self.spot_spacing_mm, self.layer_spacing_mm, self.dose_grid_factor = spot_spacing_mm, layer_spacing_mm, dose_grid_factor
        self.grid_options = grid_options(dose_grid_factor, dose_grid_mm)
        self.min_mu, self.mu_rounds, self.max_iter = float(min_mu), int(mu_rounds), max_iter
        self.cache_dir, self.particles_per_mu = cache_dir, particles_per_mu
        self._case: Case | None = None
        self._dij: IonDij | None = None
        self._beams: tuple[Beam, ...] = ()
        self._rows: dict[str, np.ndarray] = {}
        self._x: np.ndarray | None = None
        self._f = None
        self._plan: Plan | None = None
        self.last_run: MURun | None = None

    @property
    def dij(self) -> IonDij:
        if self._dij is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) first")
        return self._dij

    def prepare(self, case: Case, beams: Sequence[Beam] | None = None) -> None:
        self._case = case
        beams = tuple(beams) if beams else beams_for(case, n=self.n_beams, start_deg=self.start_deg,
                                                      modality=Modality.PROTON)
        if any(b.modality is not Modality.PROTON for b in beams):
            raise ValueError(f"{self.name} plans proton beams only; got {[b.modality.value for b in beams]}")
        self._beams = beams
        self._dij = ion_dij_cached(case, beams, cache_dir=self.cache_dir, ion="proton",
                                   spot_spacing_mm=self.spot_spacing_mm, layer_spacing_mm=self.layer_spacing_mm,
                                   particles_per_mu=self.particles_per_mu, **self.grid_options)
        self._rows, self._x, self._f, self._plan, self.last_run = {}, None, None, None, None
        self._points = {}

    def objective(self, objectives: Sequence[Objective]):
        """The seed-002 loss of the RBE-weighted dose 1.1·D x as a function of course MU x:
        Σ w (1/N) Σ (1.1 d − L)² = 1.21 Σ w (1/N) Σ (d − L/1.1)², i.e. ``plan_objective`` on the
        physical matrix with limits / 1.1 and weights × 1.21 (exact, and no scaled copy of D)."""
        from dataclasses import replace
        scaled = tuple(replace(o, dose_gy=o.dose_gy / self.rbe) for o in objectives)
        weights = [o.weight * self.rbe**2 for o in objectives]
        previous = self._f
        if previous is not None and [o.structure for o in scaled] == [o.structure for o in previous.objectives]:
            self._f = previous.with_objectives(scaled, weights=weights)  # same rows: nothing re-built
        elif self.objective_points == "dose_grid":
            self._f = plan_objective(self.dij.matrix, scaled, self._rows, weights=weights)
        else:
            points = {o.structure: self._points_for(o.structure) for o in scaled}
            self._f = point_objective(self.dij.matrix, scaled, points, weights=weights)
        return self._f

    def _points_for(self, name: str):
        """The structure's objective points: its CT voxels, trilinear from the dose-grid rows (``physics.points``)."""
        if name not in self._points:
            self._points[name] = structure_points(self._dij, self._case, name)
        return self._points[name]

    def optimize(self, objectives: Sequence[Objective], start: Sequence[np.ndarray] | None = None) -> Dose:
        """Optimise to ``objectives``; ``start``: per-beam spot weights (MU per fraction, a plan's
        ``Plan.weights``, e.g. the best plan so far) to start from, instead of the previous solution."""
        if self._dij is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before optimize()")
        usable = tuple(o for o in objectives if self._rows_for(o.structure).size)
        dropped = sorted({o.structure for o in objectives} - {o.structure for o in usable})
        if dropped:
            log.warning("%s: no dose-grid voxel in %s; their objectives are skipped", self.name, ", ".join(dropped))
        f = self.objective(usable)
        x0 = self._x if self._x is not None else self._uniform_start()
        if start is not None:
            x0 = np.concatenate([np.asarray(w, float) for w in start]) * self._case.prescription.fractions
            if x0.size != self._dij.n_beamlets:
                raise ValueError(f"{self.name}: a start of {x0.size} weights for {self._dij.n_beamlets} spots")
        first = solve_lbfgs(f, x0, max_iter=self.max_iter, **self.solver_options)
        x = np.asarray(first.x, float)
        iterations, seconds = first.iterations, first.time_s
        x, rounds, removed, forced, its, secs = self._apply_min_mu(f, x)
        value = float(f(x)[0])
        self.last_run = MURun(first.value, value, rounds, removed, forced, int(np.count_nonzero(x)),
                              iterations + its, seconds + secs)
        self._x = x
        self.convergence = {"solver": "lbfgs", "iterations": int(iterations + its), "converged": bool(first.converged),
                            "objective": value, "time_s": round(float(seconds + secs), 3),
                            "message": str(first.message), "min_mu_rounds": int(rounds), "spots_removed": int(removed)}
        dij = self._dij
        dose = dose_of_dij(dij, x, self._case.grid, scale=self.rbe, kind="EFFECTIVE")
        mu = x / self._case.prescription.fractions
        weights = tuple(mu[s] for s in dij.beam_slices)
        self._plan = Plan(self._case.case_id, self.modality, self._beams, tuple(objectives), weights, dose, self.name,
                          dij.spots, dij.beamlet_mm)
        return dose

    def _apply_min_mu(self, f, x):
        """SPEC §2.1 minimum MU per spot (module docstring). Returns (x, rounds, removed, forced,
        iterations, seconds)."""
        if self.min_mu <= 0:
            return x, 0, 0, 0, 0, 0.0
        threshold = self.min_mu * self._case.prescription.fractions  # in course MU
        if self.min_mu_method == "delete":
            return self._delete_below(f, x, threshold)
        start, on = x, x >= threshold / 2
        best, best_value = None, np.inf
        rounds = iterations = 0
        seconds = 0.0
        while on.any() and rounds < max(self.mu_rounds, 1):
            sub = solve_lbfgs(_Restricted(f, on), np.maximum(x[on], threshold), max_iter=self.max_iter,
                              lower=np.full(int(on.sum()), threshold), **self.solver_options)
            x = np.zeros_like(x)
            x[on] = sub.x
            rounds += 1
            iterations += sub.iterations
            seconds += sub.time_s
            value, grad = f(x)
            if value < best_value:
                best, best_value = x, value
            h = np.asarray(f.curvature_diagonal(), float)  # ½ of the Gauss–Newton diagonal
            tiny = 1e-9 * max(abs(value), 1e-12)
            switch_on = ~on & (grad * threshold + h * threshold**2 < -tiny)
            at_bound = on & (x <= threshold * (1.0 + 1e-9))
            switch_off = at_bound & (-grad * x + h * x**2 < -tiny)
            if not (switch_on.any() or switch_off.any()):
                break
            on = (on & ~switch_off) | switch_on
            x = np.where(switch_on, threshold, np.where(switch_off, 0.0, x))
        if best is None:
            best = np.zeros_like(x)
        return best, rounds, int(np.count_nonzero((start > 0) & (best == 0))), 0, iterations, seconds

    def _delete_below(self, f, x, threshold):
        """The former rule: delete spots in (0, threshold) and re-optimise the rest, ``mu_rounds`` times;
        spots still below after that are removed without re-optimisation."""
        active = np.ones(x.size, bool)
        rounds = forced = iterations = 0
        seconds = 0.0
        while True:
            low = active & (x > 0) & (x < threshold)
            if not low.any():
                break
            if rounds == self.mu_rounds:
                forced = int(low.sum())
                x = np.where(low, 0.0, x)
                active &= ~low
                log.info("%s: %d spots still below %.3g MU after %d rounds: removed without re-optimisation",
                         self.name, forced, self.min_mu, rounds)
                break
            active &= ~low
            x = np.where(active, x, 0.0)
            if not active.any():
                break
            sub = solve_lbfgs(_Restricted(f, active), x[active], max_iter=self.max_iter, **self.solver_options)
            x = np.zeros_like(x)
            x[active] = sub.x
            rounds += 1
            iterations += sub.iterations
            seconds += sub.time_s
        return x, rounds, int((~active).sum()), forced, iterations, seconds

    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{self.name}: no plan yet; call prepare() and optimize() first")
        return self._plan

    def _rows_for(self, name: str) -> np.ndarray:
        if name not in self._rows:
            self._rows[name] = self._dij.rows_of(self._case.structure(name).voxels)
        return self._rows[name]

    def _uniform_start(self) -> np.ndarray:
        """Uniform course MU scaled so the highest-dose target's mean RBE-weighted dose is its
        prescription."""
        level = self._case.prescription.levels[0]
        target = self._rows_for(level.target)
        x = np.ones(self._dij.n_beamlets)
        mean = float(np.mean(self._dij.matrix[target] @ x.astype(np.float32))) * self.rbe if target.size else 0.0
        return x * (level.dose_gy / mean if mean > 0 else 1.0)
