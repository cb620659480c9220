"""Our own engine behind the TPS protocol: photon IMRT (pencil-beam dose influence matrix,
L-BFGS-B of seed 002 or ADMM of seed 000, both warm-started unless ``warm_start=False``).

The dose influence matrix is computed once per case and beam set (and cached on disk), so a
closed loop pays only for re-optimisations. A re-optimisation whose objectives name the same
structures in the same order (new limits, volumes or weights: the closed loop's tuning steps)
re-uses the plan objective of the previous one (``PlanObjective.with_objectives``: no row
extraction, no new curvature diagonal when the weights are unchanged) and warm-starts from its
solution (docs/decisions.md, "Engine speed (issue 3)").

``warm_start=False`` optimises every plan from the uniform start with a fresh plan objective, so a
plan is a function of its objectives alone: what an RL planner needs when an action that loosens
an objective the warm-started solution already meets must still change the plan (docs/results.md,
ACER). It is the setting the ACER planner was trained with.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from rtautoplan.case import Case
from rtautoplan.optimize.admm import solve_admm
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import plan_objective, point_objective
from rtautoplan.optimize.segments import segment_objective
from rtautoplan.physics.points import structure_points
from rtautoplan.physics.dij import DOSE_GRID_MM, Dij, beams_for, dij_cached, dose_to_grid
from rtautoplan.physics.photon import SIX_MV, PhotonModel, model_named
from rtautoplan.plan import Beam, Dose, Modality, Objective, Plan

log = logging.getLogger(__name__)


def grid_options(dose_grid_factor=None, dose_grid_mm=None) -> dict:
    """The dose-grid keywords of the matrix builders: the block factor when given (as before issue 13,
    so those matrices and their cache keys are unchanged), else ``dose_grid_mm`` (default
    ``DOSE_GRID_MM``). Both: ValueError."""
    if dose_grid_factor is not None and dose_grid_mm is not None:
        raise ValueError("give dose_grid_factor or dose_grid_mm, not both")
    if dose_grid_factor is not None:
        return {"dose_grid_factor": dose_grid_factor}
    return {"dose_grid_factor": None, "dose_grid_mm": DOSE_GRID_MM if dose_grid_mm is None else dose_grid_mm}


def dose_of_dij(dij: Dij, x: np.ndarray, ct_grid, scale: float = 1.0, kind: str = "PHYSICAL") -> Dose:
    """Dose (Gy) of weights ``x`` × ``scale`` on the CT grid (trilinear, clipped at 0), its dose-grid
    dose as ``native`` (what the RTDOSE holds)."""
    native = dij.dose_array(x)
    if scale != 1.0:
        native = scale * native
    gy = dose_to_grid(native, dij.dose_grid, ct_grid)
    on_grid = Dose(dij.dose_grid, np.maximum(native, 0.0).astype(np.float32), kind)
    return Dose(ct_grid, np.maximum(gy, 0.0, out=gy), kind, on_grid)


class InHousePhoton:
    """Photon IMRT with the in-house engine.

    solver: "lbfgs" (SPEC §2.9) or "admm" (SPEC §1.3). n_beams: equispaced coplanar beams when
    ``prepare`` gets none. dose_grid_mm: the dose grid's spacing (mm, one or three values; default
    ``DOSE_GRID_MM``, its own grid over the External: ``physics.dij``); dose_grid_factor: instead a
    block of (k, j, i) CT voxels per dose voxel (the trained planners' engines); not both. max_iter:
    the optimiser's iteration cap. beamlet_mm: beamlet side and MLC leaf width (mm at the isocentre
    plane; 5 mm as clinical MLCs, 2.5 mm as high-definition ones). model: the photon beam model
    (``physics.photon.SIX_MV``, or a name of ``physics.photon.MODELS``). warm_start: start each re-optimisation from the previous
    solution (module docstring). objective_points: where the objectives read the dose — "ct" (the
    structures' CT voxels, trilinear from the dose grid, where the dose is reported:
    ``physics.points``) or "dose_grid" (the dose-grid voxel centres; the engine the trained ACER and
    SARSA planners learned on). ADMM works on dose-grid rows only.
    """

    modality = Modality.PHOTON

    def __init__(self, solver: str = "lbfgs", n_beams: int = 7, dose_grid_factor=None, cache_dir=None,
                 max_iter: int = 200, warm_start: bool = True, objective_points: str = "ct", dose_grid_mm=None,
                 beamlet_mm: float = 5.0, model: PhotonModel | str = SIX_MV):
        if solver not in ("lbfgs", "admm"):
            raise ValueError(f"solver must be 'lbfgs' or 'admm', not {solver!r}")
        if objective_points not in ("ct", "dose_grid"):
            raise ValueError(f"objective_points must be 'ct' or 'dose_grid', not {objective_points!r}")
        self.objective_points = "dose_grid" if solver == "admm" else objective_points
        self._points: dict[str, object] = {}
        self.name = f"inhouse-photon-{solver}"
        self.solver, self.n_beams, self.max_iter, self.warm_start = solver, n_beams, max_iter, bool(warm_start)
        self.grid_options = grid_options(dose_grid_factor, dose_grid_mm)
        if not beamlet_mm > 0:
            raise ValueError(f"beamlet_mm must be positive, not {beamlet_mm!r}")
        self.beamlet_mm, self.model = float(beamlet_mm), model_named(model)
        self.dose_grid_factor, self.cache_dir = dose_grid_factor, cache_dir
        self._case: Case | None = None
        self._dij: Dij | None = None
        self._beams: tuple[Beam, ...] = ()
        self._rows: dict[str, np.ndarray] = {}
        self._x: np.ndarray | None = None
        self._f = None
        self._admm_state = None
        self._plan: Plan | None = None

    def prepare(self, case: Case, beams: Sequence[Beam] | None = None) -> None:
        self._case = case
        self._beams = tuple(beams) if beams else beams_for(case, n=self.n_beams)
        self._dij = dij_cached(case, self._beams, cache_dir=self.cache_dir, beamlet_mm=self.beamlet_mm,
                               model=self.model, **self.grid_options)
        self._rows, self._x, self._f, self._admm_state, self._plan = {}, None, None, None, None
        self._points = {}

    def optimize(self, objectives: Sequence[Objective], start: Sequence[np.ndarray] | None = None) -> Dose:
        """Optimise to ``objectives``; ``start``: per-beam beamlet weights to start from (a plan's
        ``Plan.weights``, e.g. the best plan so far), instead of the previous solution."""
        if self._dij is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before optimize()")
        usable = tuple(o for o in objectives if self._rows_for(o.structure).size)
        dropped = sorted({o.structure for o in objectives} - {o.structure for o in usable})
        if dropped:
            log.warning("%s: no dose-grid voxel in %s; their objectives are skipped", self.name, ", ".join(dropped))
        if not self.warm_start:
            self._x, self._f, self._admm_state = None, None, None
        f = self._objective(usable)
        x0 = self._x if self._x is not None else self._uniform_start()
        if start is not None:
            x0 = self._start_vector(start)
            self._admm_state = None
        if self.solver == "lbfgs":
            solution = solve_lbfgs(f, x0, max_iter=self.max_iter)
        else:
            solution = solve_admm(f, x0=x0, state=self._admm_state)
            self._admm_state = solution.state
        self._x = np.asarray(solution.x, float)
        self.convergence = {"solver": self.solver, "iterations": int(solution.iterations),
                            "converged": bool(solution.converged), "objective": float(solution.value),
                            "time_s": round(float(solution.time_s), 3), "message": str(solution.message)}
        dose = self._dose(self._x)
        weights = tuple(self._x[s] for s in self._dij.beam_slices)
        self._plan = Plan(self._case.case_id, self.modality, self._beams, tuple(objectives), weights, dose, self.name,
                          self._dij.beamlets, self._dij.beamlet_mm)
        return dose

    def dose_of(self, weights: Sequence[np.ndarray]) -> Dose:
        """Dose (Gy) on the CT grid of per-beam beamlet weights, e.g. the fluence that the leaf
        sequencer's segments actually deliver (issue 5: the reported dose is the delivered one)."""
        if self._dij is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before dose_of()")
        x = np.concatenate([np.asarray(w, float) for w in weights])
        if x.size != self._dij.n_beamlets:
            raise ValueError(f"{self.name}: {x.size} weights for {self._dij.n_beamlets} beamlets")
        return self._dose(x)

    def _start_vector(self, weights: Sequence[np.ndarray]) -> np.ndarray:
        x = np.concatenate([np.asarray(w, float) for w in weights])
        if x.size != self._dij.n_beamlets:
            raise ValueError(f"{self.name}: a start of {x.size} weights for {self._dij.n_beamlets} beamlets")
        return np.maximum(x, 0.0)

    def _dose(self, x: np.ndarray) -> Dose:
        return dose_of_dij(self._dij, x, self._case.grid)

    def optimize_segments(self, objectives: Sequence[Objective], apertures: Sequence[np.ndarray],
                          weights: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Step-and-shoot segment weight optimisation: the segment weights w ≥ 0 (MU, per beam) that
        minimise the plan objective of ``objectives`` on the fluence the segments deliver, x = A·w
        (``apertures``: per beam, beamlets × segments), from the sequencer's ``weights``. The
        quantisation of leaf sequencing costs plan quality; re-weighting the segments wins most of it
        back, as clinical step-and-shoot TPSs do after sequencing. The objective is evaluated on the
        segment influence M·A (``optimize.segments``), Jacobi-scaled per segment."""
        from scipy.linalg import block_diag

        if self._dij is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before optimize_segments()")
        usable = tuple(o for o in objectives if self._rows_for(o.structure).size)
        f = segment_objective(self._objective_for(usable), block_diag(*apertures))
        w0 = np.concatenate([np.asarray(w, float) for w in weights])
        solution = solve_lbfgs(f, w0, max_iter=self.max_iter)
        bounds = np.cumsum([0] + [ap.shape[1] for ap in apertures])
        return tuple(np.asarray(solution.x[lo:hi], float) for lo, hi in zip(bounds[:-1], bounds[1:]))

    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{self.name}: no plan yet; call prepare() and optimize() first")
        return self._plan

    def _objective(self, objectives: tuple[Objective, ...]):
        """The plan objective: the previous one with new parameters when the structures match."""
        self._f = self._objective_for(objectives)
        return self._f

    def _objective_for(self, objectives: tuple[Objective, ...]):
        """The plan objective of ``objectives``: the previous one's rows and points when the structures match."""
        previous = self._f
        if previous is not None and [o.structure for o in objectives] == [o.structure for o in previous.objectives]:
            return previous.with_objectives(objectives)
        return self._new_objective(objectives)

    def _new_objective(self, objectives: tuple[Objective, ...]):
        if self.objective_points == "dose_grid":
            return plan_objective(self._dij.matrix, objectives, self._rows)
        return point_objective(self._dij.matrix, objectives, {o.structure: self._points_for(o.structure)
                                                              for o in objectives})

    def _points_for(self, name: str):
        """The structure's objective points: its CT voxels, trilinear from the dose-grid rows."""
        if name not in self._points:
            self._points[name] = structure_points(self._dij, self._case, name)
        return self._points[name]

    def _rows_for(self, name: str) -> np.ndarray:
        if name not in self._rows:
            self._rows[name] = self._dij.rows_of(self._case.structure(name).voxels)
        return self._rows[name]

    def _uniform_start(self) -> np.ndarray:
        """Uniform fluence scaled so the highest-dose target's mean dose is its prescription."""
        level = self._case.prescription.levels[0]
        target = self._rows_for(level.target)
        x = np.ones(self._dij.n_beamlets)
        mean = float(np.mean(self._dij.matrix[target] @ x.astype(np.float32))) if target.size else 0.0
        return x * (level.dose_gy / mean if mean > 0 else 1.0)
