"""Seed 003's carbon-ion H&N multi-agent environment (SPEC §3.1–§3.4, §3.6), a PettingZoo ParallelEnv.

The case keeps only the phantom's highest-dose CTV (one CTV, SPEC §3.1; ``single_level``, its
own Rx in Gy(RBE)), cropped 1 mm from the OARs (§3.1), then ``apply_rules``.

* agents: the 45 tuned parameters of Table A1 (``PARAMETERS``), one Discrete(3) each:
  0, 1, 2 = move left, stay, right (a ∈ {−1, 0, +1}, §3.4);
* each parameter is a grid index x ∈ [−b, b], b = 5, clipped (§3.4 preferred), x₀ = 0 (the
  midpoint, §3.4 preferred; ``init="random"`` draws x₀ uniformly on the grid); value = Lower +
  (x + b)/(2b)·(Upper − Lower) (``value``);
* observation (shared by all agents, and ``state()``): the DVHs of the CTV and the 18 OARs,
  (19, 150) float32 volume fractions at doses evenly spaced on [0, 1.2·Rx] (§3.4; the axis is
  ours), zero rows for OARs the case lacks;
* reward (every agent the same): φ − 0.5·max φ with φ the ``table_a2`` score (§3.4 absolute form);
* T = 10 steps, then every agent is truncated; never terminated (§3.6: no terminal state).

Bounds (§3.3 [NOT SPECIFIED], ours, docs/decisions.md): CTV dose parameters × Rx, OAR obj_value
[0.5·g, 1.5·g] with g the organ's Table A2 goal (Gy, §3.7; so the midpoint is the goal), CTV
weights [1, 100], the Uniform weight and OAR weights [0.1, 10], the DVHmin volume a fraction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv

from rtautoplan.case import Case
from rtautoplan.plan import Objective, ObjectiveKind as K
from rtautoplan.policies.env_base import CaseSource, LoopHooks, Planner, Reward, Scorer, dvh_rows, single_level
from rtautoplan.structures.rules import apply_rules

B = 5  # tuning resolution b (SPEC §3.4)
T_STEPS = 10  # SPEC §3.6
DVH_POINTS = 150  # n (SPEC §3.4)
DVH_MAX_REL = 1.2
CROP_MM = 1.0  # CTV limited 1 mm from OARs (SPEC §3.1)
MOVE = (-1, 0, 1)  # Discrete(3) index → a (SPEC §3.4)
CTV_ROLE = "CTV"  # placeholder for the case's CTV in PARAMETERS

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


def objectives(x: np.ndarray, case: Case, b: int = B) -> tuple[Objective, ...]:
    """The 22 objectives of Table A1 at grid indices ``x`` (one per PARAMETERS entry); objectives
    of OARs the case lacks (or with no planning voxel) are left out."""
    level = case.prescription.levels[0]
    fields: dict[tuple[str, K], dict[str, float]] = {}
    for p, xi in zip(PARAMETERS, x):
        structure = level.target if p.structure == CTV_ROLE else p.structure
        fields.setdefault((structure, p.kind), {})[p.field] = value(p, xi, level.dose_gy, b)
    return tuple(Objective(s, kind, f["dose"], f["weight"], volume=f.get("volume"), adjustable=s != level.target)
                 for (s, kind), f in fields.items() if case.has(s) and case.structure(s).voxels.any())


class CarbonHNEnv(LoopHooks, ParallelEnv):
    """Seed 003 environment over a carbon TPS (``PhoenixAdapter``, or any adapter with Max, Min,
    Uniform and DVHmin objectives).

    tps: adapter instance or factory. case_seeds: H&N phantom seeds; case: a fixed Case (reduced
    to its highest-dose CTV too). max_steps: T (10). init: "midpoint" (x₀ = 0) or "random".
    scorer/reward/score_options: override ``table_a2``. cold_start: see ``env_base``.
    """

    metadata = {"name": "rtautoplan_carbon_hn_v0", "render_modes": []}
    system = "table_a2"
    site = "hn"

    STATE = ("x", "_state", "agents")

    def __init__(self, tps, case_seeds: Sequence[int] = (0,), case: Case | None = None, max_steps: int = T_STEPS,
                 init: str = "midpoint", scorer: Scorer | None = None, reward: Reward | None = None,
                 score_options: Mapping | None = None, cold_start: bool = True):
        if init not in ("midpoint", "random"):
            raise ValueError(f"init must be 'midpoint' or 'random', not {init!r}")
        self.max_steps, self.init, self.t = int(max_steps), init, 0
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._planner = Planner(tps, self.system, scorer, reward, score_options, cold_start)
        self._cases = CaseSource(self.site, tuple(case_seeds), case, self._prepare_case)
        self._obs_space = gym.spaces.Box(0.0, 1.0, (1 + len(OAR_GOALS_GY), DVH_POINTS), np.float32)
        self._act_space = gym.spaces.Discrete(len(MOVE))
        self.state_space = self._obs_space
        self.x = np.zeros(len(PARAMETERS), int)
        self._rng = np.random.default_rng()
        self._state: np.ndarray | None = None

    def _prepare_case(self, case: Case) -> Case:
        top = case.prescription.levels[0]
        ctv = top.target if top.target.startswith("CTV") else None
        reduced = single_level(case, top.dose_gy, case.prescription.fractions, targets=[ctv] if ctv else None)
        return apply_rules(reduced, self.site, ctv_oar_crop_mm=CROP_MM)

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
        rx = self.case.prescription.levels[0].dose_gy
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
        """Table A1's parameter ranges (``PARAMETERS``; Gy for doses)."""
        rx = self.case.prescription.levels[0].dose_gy
        return {p.name: (value(p, -B, rx), value(p, B, rx)) for p in PARAMETERS}

    def describe_action(self, actions: Mapping[str, int]) -> str:
        moves = [f"{a}{'−+'[MOVE[int(i)] > 0]}" for a, i in actions.items() if MOVE[int(i)] != 0]
        if not moves:
            return "no change"
        return ", ".join(moves[:4]) + (f", … {len(moves) - 4} more" if len(moves) > 4 else "")

    def _observe(self) -> np.ndarray:
        gy, vox, level = self.last_dose.gy, self._planner.voxels, self.case.prescription.levels[0]
        names = [level.target, *OAR_GOALS_GY]
        present = [i for i, n in enumerate(names) if self.case.has(n) and vox[n].size]
        obs = np.zeros(self._obs_space.shape, np.float32)
        obs[present] = dvh_rows(gy, [vox[names[i]] for i in present], [level.dose_gy] * len(present), DVH_POINTS,
                                DVH_MAX_REL)
        return obs

    def _info(self, applied) -> dict:
        return {"step": self.t, "case_id": self.case.case_id, "score": float(self.last_score.total),
                "parameters": self.parameters, "action": applied}

    def render(self):
        return None

    def close(self):
        return None
