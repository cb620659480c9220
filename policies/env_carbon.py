"""Seed 003's carbon-ion H&N multi-agent environment (SPEC §3.1–§3.4, §3.6), a PettingZoo ParallelEnv.

The case keeps every prescription level (a simultaneous integrated boost; seed 003 plans one CTV,
§3.1): every input ROI stays, CTVs are cropped 1 mm from the level-1 OARs (§3.1, read as those
that rank above the targets; the others lose their overlap to the CTV, rule 8), then ``apply_rules``
(a lower level loses its overlap with a higher one, rule 3). A case without a CTV, or a level
without one, is an InputError: seed 003 plans CTVs, not PTVs.

* agents: the 45 tuned parameters of Table A1 (``PARAMETERS``), one Discrete(3) each:
  0, 1, 2 = move left, stay, right (a ∈ {−1, 0, +1}, §3.4), whatever the number of levels: the 9
  CTV parameters act on every CTV, dose parameters × that CTV's own Rx (Max at 1.05 gives 73.5,
  63 and 56.7 Gy(RBE) on CTV_7000/6000/5400), weights and the DVHmin volume shared;
* each parameter is a grid index x ∈ [−b, b], b = 5, clipped (§3.4 preferred), x₀ = 0 (the
  midpoint, §3.4 preferred; ``init="random"`` draws x₀ uniformly on the grid); value = Lower +
  (x + b)/(2b)·(Upper − Lower) (``value``);
* observation (shared by all agents, and ``state()``): the DVHs of the CTV and the 18 OARs,
  (19, 150) float32 volume fractions at doses evenly spaced on [0, 1.2·Rx_max] (§3.4; the axis is
  ours), zero rows for OARs the case lacks; the CTV row is every CTV voxel (as drawn, each in its
  highest level) in dose / its own Rx on [0, 1.2], so one row serves any number of levels;
* reward (every agent the same): φ − 0.5·max φ with φ the ``table_a2`` score (§3.4 absolute form);
* T = 10 steps, then every agent is truncated; never terminated (§3.6: no terminal state).

Bounds (§3.3 [NOT SPECIFIED], ours, docs/decisions.md): CTV dose parameters × Rx (``parameters``
and ``bounds`` report them at Rx_max, the highest level's values), OAR obj_value
[0.5·g, 1.5·g] with g the organ's Table A2 goal (Gy, §3.7; so the midpoint is the goal), CTV
weights [1, 100], the Uniform weight and OAR weights [0.1, 10], the DVHmin volume a fraction.

One fixed objective is added to Table A1's (not an agent, as seed 000's NTO): Max Rx on the normal
tissue of each level's Gap (``normal_tissue_objectives``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from rtautoplan.case import Case, Role
from rtautoplan.errors import InputError
from rtautoplan.plan import Objective, ObjectiveKind as K
from rtautoplan.policies.env_base import CaseSource, LoopHooks, Planner, Reward, Scorer, dvh_rows
from rtautoplan.structures.rules import apply_rules

B = 5  # tuning resolution b (SPEC §3.4)
T_STEPS = 10  # SPEC §3.6
DVH_POINTS = 150  # n (SPEC §3.4)
DVH_MAX_REL = 1.2
CROP_MM = 1.0  # CTV limited 1 mm from the level-1 OARs (SPEC §3.1, §2.4)
MOVE = (-1, 0, 1)  # Discrete(3) index → a (SPEC §3.4)
CTV_ROLE = "CTV"  # placeholder for the case's CTV in PARAMETERS
NTO_DOSE = 1.0  # normal-tissue objective: Max at this × Rx on each level's Gap (normal_tissue_objectives)
NTO_WEIGHT = 5.0  # its weight: the OAR weight midpoint of Table A1's bounds (0.1–10)

# Table A2 goals g (Gy) of the 18 OARs of Table A1 (SPEC §3.7; temporal lobes: the 40 Gy of V40).
OAR_GOALS_GY: dict[str, float] = {
    "Brainstem": 45.0, "SpinalCord": 30.0, "OpticChiasm": 30.0, "OpticNrv_R": 30.0, "OpticNrv_L": 30.0,
    "Lobe_Temporal_R": 40.0, "Lobe_Temporal_L": 40.0, "Bone_Mandible": 30.0, "Joint_TM_R": 30.0, "Joint_TM_L": 30.0,
    "Parotid_R": 21.0, "Parotid_L": 21.0, "Lens_R": 6.0, "Lens_L": 6.0, "Eye_R": 30.0, "Eye_L": 30.0,
    "Cochlea_R": 30.0, "Cochlea_L": 30.0,
}


@dataclass(frozen=True)
class Parameter:
    """One tuned parameter: an objective's ``field`` ("dose", "volume" or "weight") on ``structure``.
    lower/upper: bounds (Gy, or × Rx when ``per_rx``; volume a fraction 0–1; weight dimensionless)."""

    structure: str
    kind: K
    field: str
    lower: float
    upper: float
    per_rx: bool = False

    @property
    def name(self) -> str:
        return f"{self.structure}.{self.kind.value}.{self.field}"


# Table A1 (SPEC §3.3): 9 CTV parameters + 18 OARs × (obj_value, weight) = 45.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter(CTV_ROLE, K.DMAX, "dose", 1.00, 1.10, per_rx=True),
    Parameter(CTV_ROLE, K.DMAX, "weight", 1.0, 100.0),
    Parameter(CTV_ROLE, K.DMIN, "dose", 0.90, 1.00, per_rx=True),
    Parameter(CTV_ROLE, K.DMIN, "weight", 1.0, 100.0),
    Parameter(CTV_ROLE, K.UNIFORM, "dose", 0.95, 1.05, per_rx=True),
    Parameter(CTV_ROLE, K.UNIFORM, "weight", 0.1, 10.0),
    Parameter(CTV_ROLE, K.DVH_MIN, "dose", 0.95, 1.05, per_rx=True),
    Parameter(CTV_ROLE, K.DVH_MIN, "volume", 0.90, 1.00),
    Parameter(CTV_ROLE, K.DVH_MIN, "weight", 1.0, 100.0),
    *(p for organ, g in OAR_GOALS_GY.items()
      for p in (Parameter(organ, K.DMAX, "dose", 0.5 * g, 1.5 * g), Parameter(organ, K.DMAX, "weight", 0.1, 10.0))),
)
AGENTS: tuple[str, ...] = tuple(p.name for p in PARAMETERS)


def value(p: Parameter, x: int, rx_gy: float, b: int = B) -> float:
    """The linear action-to-value map of SPEC §3.4 (x clipped to [−b, b]); Gy for doses (× rx_gy when per_rx)."""
    lower, upper = (p.lower * rx_gy, p.upper * rx_gy) if p.per_rx else (p.lower, p.upper)
    return lower + (min(max(int(x), -b), b) + b) / (2 * b) * (upper - lower)


def step_index(x: np.ndarray, moves: np.ndarray, b: int = B) -> np.ndarray:
    """x_t = clip(x_{t−1} + a_t, −b, b) (SPEC §3.4)."""
    return np.clip(np.asarray(x, int) + np.asarray(moves, int), -b, b)


def ctv_levels(case: Case) -> tuple[tuple[str, float], ...]:
    """(CTV name, Rx Gy(RBE)) of every CTV with planning voxels, highest Rx first."""
    ctvs = [s for s in case.by_role(Role.CTV) if s.rx_gy is not None and s.voxels.any()]
    return tuple((s.name, float(s.rx_gy)) for s in sorted(ctvs, key=lambda s: -s.rx_gy))


def objectives(x: np.ndarray, case: Case, b: int = B) -> tuple[Objective, ...]:
    """The objectives of Table A1 at grid indices ``x``: the 4 CTV objectives on every CTV (dose
    parameters × its own Rx, ``ctv_levels``), then one Max per OAR; objectives of OARs the case
    lacks (or with no planning voxel) are left out."""
    fields: dict[tuple[str, K], dict[str, float]] = {}
    targets = ctv_levels(case)
    for p, xi in zip(PARAMETERS, x):
        for structure, rx in (targets if p.structure == CTV_ROLE else ((p.structure, 0.0),)):
            fields.setdefault((structure, p.kind), {})[p.field] = value(p, xi, rx, b)
    ctvs = {name for name, _ in targets}
    tuned = tuple(Objective(s, kind, f["dose"], f["weight"], volume=f.get("volume"), adjustable=s not in ctvs)
                  for (s, kind), f in fields.items() if case.has(s) and case.structure(s).voxels.any())
    return tuned + normal_tissue_objectives(case)


def normal_tissue_objectives(case: Case) -> tuple[Objective, ...]:
    """The fixed normal-tissue objective (not an agent): per level, Max NTO_DOSE·Rx on the Gap's
    normal tissue (the 2 mm outside its PTV, without any CTV/PTV: ``normal_tissue_gaps``), weight
    NTO_WEIGHT. Without it the LQ model's higher RBE of normal tissue (α/β 2 Gy against 10 Gy in
    the targets, about 1.26 × at the same physical dose and LET) makes the tissue just outside a
    boost hotter than the boost itself (123 % of Rx_max on hn01)."""
    return tuple(Objective(s.name, K.DMAX, NTO_DOSE * s.rx_gy, NTO_WEIGHT, adjustable=False)
                 for s in case.by_role(Role.GAP) if s.rx_gy is not None and s.voxels.any())


def normal_tissue_gaps(case: Case) -> Case:
    """The case with every Gap's planning voxels outside all CTVs and PTVs (as drawn): a lower
    level's Gap may lie inside a higher level's target, where its NTO must not act."""
    targets = [s.mask.to_full() for s in case.by_role(Role.CTV, Role.PTV)]
    if not targets:
        return case
    inside = np.logical_or.reduce(targets)
    return case.with_structures(tuple(s.with_planning_mask(s.voxels.to_full() & ~inside) if s.role is Role.GAP else s
                                      for s in case.structures))


def _check_ctvs(case: Case) -> None:
    """InputError unless every prescription level has a CTV (seed 003 plans CTVs, SPEC §3.1)."""
    ctvs = case.by_role(Role.CTV)
    names = ", ".join(s.name for s in case.structures if s.role.is_target) or "none"
    where = f"case {case.case_id!r}"
    fix = ("Contour the CTV of every level, named with its dose (CTV_7000, CTV_5400), or plan this case with "
           "--modality proton or photon (they plan on PTVs)")
    if not ctvs:
        raise InputError(where, f"a carbon plan (seed 003) is planned on CTVs and the case has none (targets: {names})",
                         fix)
    levels = case.prescription.levels
    for level in levels:
        if not any(s.name == level.target or (s.rx_gy is None and len(levels) == 1)
                   or (s.rx_gy is not None and abs(s.rx_gy - level.dose_gy) < 0.005) for s in ctvs):
            raise InputError(where, f"prescription level {level.dose_gy:g} Gy(RBE) ({level.target}) has no CTV "
                                    f"(targets: {names}); a carbon plan is planned on CTVs", fix)


class CarbonHNEnv(LoopHooks, ParallelEnv):
    """Seed 003 environment over a carbon TPS (``PhoenixAdapter``, or any adapter with Max, Min,
    Uniform and DVHmin objectives).

    tps: adapter instance or factory. case_seeds: H&N phantom seeds; case: a fixed Case (every
    level planned; InputError without a CTV). max_steps: T (10). init: "midpoint" (x₀ = 0) or "random".
    scorer/reward/score_options: override ``table_a2``. cold_start: see ``env_base``.
    """

    metadata = {"name": "rtautoplan_carbon_hn_v0", "render_modes": []}
    system = "table_a2"
    site = "hn"

    STATE = ("x", "_state", "agents")

    def __init__(self, tps, case_seeds: Sequence[int] = (0,), case: Case | None = None, max_steps: int = T_STEPS,
                 init: str = "midpoint", scorer: Scorer | None = None, reward: Reward | None = None,
                 score_options: Mapping | None = None, cold_start: bool = True, population: str = "v1"):
        if init not in ("midpoint", "random"):
            raise ValueError(f"init must be 'midpoint' or 'random', not {init!r}")
        self.max_steps, self.init, self.t = int(max_steps), init, 0
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._planner = Planner(tps, self.system, scorer, reward, score_options, cold_start)
        self._cases = CaseSource(self.site, tuple(case_seeds), case, self._prepare_case, population)
        self._obs_space = gym.spaces.Box(0.0, 1.0, (1 + len(OAR_GOALS_GY), DVH_POINTS), np.float32)
        self._act_space = gym.spaces.Discrete(len(MOVE))
        self.state_space = self._obs_space
        self.x = np.zeros(len(PARAMETERS), int)
        self._rng = np.random.default_rng()
        self._state: np.ndarray | None = None

    def _prepare_case(self, case: Case) -> Case:
        _check_ctvs(case)
        return normal_tissue_gaps(apply_rules(case, self.site, ctv_oar_crop_mm=CROP_MM))

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> gym.spaces.Box:
        return self._obs_space

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> gym.spaces.Discrete:
        return self._act_space

    # -- what the closed loop reads
    case = property(lambda self: self._planner.case)
    tps = property(lambda self: self._planner.tps)
    last_dose = property(lambda self: self._planner.last_dose)
    last_score = property(lambda self: self._planner.last_score)
    last_step_s = property(lambda self: self._planner.last_step_s)
    dose_scale = property(lambda self: self._planner.dose_scale)

    @property
    def parameters(self) -> dict[str, float]:
        """Every agent's value (Gy(RBE) for doses, those of the highest level: × Rx_max)."""
        rx = self.case.prescription.rx_max
        return {p.name: value(p, xi, rx) for p, xi in zip(PARAMETERS, self.x)}

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return objectives(self.x, self.case)

    def state(self) -> np.ndarray:
        return self._state

    def reset(self, seed: int | None = None, options: Mapping | None = None):
        """options: ``case_seed`` (phantom seed of this episode), ``init`` ("midpoint" / "random")."""
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        self._planner.start(self._cases.pick(self._rng, options))
        init = options.get("init", self.init)
        self.x = self._rng.integers(-B, B + 1, len(PARAMETERS)) if init == "random" else np.zeros(len(PARAMETERS), int)
        self.t, self.agents = 0, list(self.possible_agents)
        self._planner.evaluate(self.objectives)
        self._state = self._observe()
        info = self._info(None)
        return {a: self._state for a in self.agents}, {a: info for a in self.agents}

    def step(self, actions: Mapping[str, int]):
        if self._planner.last_score is None:
            raise RuntimeError("CarbonHNEnv: call reset() before step()")
        moves = self._apply(actions)
        score = self._planner.evaluate(self.objectives)
        self.t += 1
        self._state = self._observe()
        r = self._planner.reward(None, score)
        live = list(self.agents)
        done = self.t >= self.max_steps
        info = self._info(dict(zip(self.possible_agents, moves.tolist())))
        out = ({a: self._state for a in live}, {a: r for a in live}, {a: False for a in live},
               {a: done for a in live}, {a: info for a in live})
        if done:
            self.agents = []
        return out

    def _apply(self, actions: Mapping[str, int]) -> np.ndarray:
        """x ← clip(x + a) for every agent's move (a missing agent stays); returns the moves."""
        moves = np.array([MOVE[int(actions.get(a, 1))] for a in self.possible_agents])
        self.x = step_index(self.x, moves)
        return moves

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Table A1's parameter ranges (``PARAMETERS``; Gy(RBE) for doses, at Rx_max)."""
        rx = self.case.prescription.rx_max
        return {p.name: (value(p, -B, rx), value(p, B, rx)) for p in PARAMETERS}

    def describe_action(self, actions: Mapping[str, int]) -> str:
        moves = [f"{a}{'−+'[MOVE[int(i)] > 0]}" for a, i in actions.items() if MOVE[int(i)] != 0]
        if not moves:
            return "no change"
        return ", ".join(moves[:4]) + (f", … {len(moves) - 4} more" if len(moves) > 4 else "")

    def _observe(self) -> np.ndarray:
        gy, vox, rx_max = self.last_dose.gy, self._planner.voxels, self.case.prescription.rx_max
        obs = np.zeros(self._obs_space.shape, np.float32)
        relative, ctv = self._relative_ctv_dose(gy)
        if ctv.size:
            obs[0] = dvh_rows(relative, [ctv], [1.0], DVH_POINTS, DVH_MAX_REL)[0]
        present = [i for i, n in enumerate(OAR_GOALS_GY, 1) if self.case.has(n) and vox[n].size]
        if present:
            names = list(OAR_GOALS_GY)
            obs[present] = dvh_rows(gy, [vox[names[i - 1]] for i in present], [rx_max] * len(present), DVH_POINTS,
                                    DVH_MAX_REL)
        return obs

    def _relative_ctv_dose(self, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dose / own Rx on the CT grid, flat indices of every CTV voxel as drawn): a voxel in several
        CTVs counts in the one of highest Rx (rule 3 on the drawn masks)."""
        relative, seen = np.zeros(gy.size, np.float32), np.zeros(gy.size, bool)
        for name, rx in ctv_levels(self.case):
            flat = self.case.structure(name).mask.indices
            flat = flat[~seen[flat]]
            relative[flat] = gy.ravel()[flat] / rx
            seen[flat] = True
        return relative.reshape(gy.shape), np.flatnonzero(seen)

    def _info(self, applied) -> dict:
        return {"step": self.t, "case_id": self.case.case_id, "score": float(self.last_score.total),
                "parameters": self.parameters, "action": applied}

    def render(self):
        return None

    def close(self):
        return None
