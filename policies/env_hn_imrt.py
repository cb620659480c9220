"""Seed 004's head-and-neck IMRT environment (SPEC §4.2–§4.3, §4.6–§4.7).

The case is the **primary plan**: every CTV of the phantom merged into one CTV_4400, 44 Gy in 22
fractions (SPEC §4.1: IMRT-SEQ primary 44 Gy; ``single_level``), then ``apply_rules``. That is for
training and evaluation on phantoms; a user's case is planned ``as_prescribed``: the primary phase
of its own sequential course (``rtautoplan.phases``), one 44 Gy level, never re-prescribed.

* parameters: per OAR of interest (Parotid_L, Parotid_R, Cavity_Oral) the objective position
  (D_obj Gy, V_obj %) of its one dose-volume objective, initially (goal, 50 %) (§4.6);
* state (14,) float32: (D50%, Dmean, D_obj, V_obj) per OAR, then PTV D95%, D1% (Gy; V_obj in %)
  (§4.2 eq. 1);
* actions: model 1 Discrete(6), D_obj ± 2 Gy; model 2 Discrete(12), also V_obj ± 5 % (§4.2 eq. 2);
  index = per OAR in order, (+ΔD, −ΔD[, +ΔV, −ΔV]);
* reward L_{t−1} − L_t with L the ``relative_loss`` (§4.3); terminated when every goal is met,
  truncated after 35 actions (§4.7).

Goals: ``goals="paper"`` (default) the §4.3 goals for every case; ``goals="template"`` plan-specific
goals (§4.7 b, ``relative_loss.bound_goals``): per case, each OAR goal lowered to the template plan's
value where that is lower, so an oral cavity under 25 Gy is held where the template put it (issue 16).

Template objectives (§4.6 [NOT SPECIFIED] values; ours, docs/decisions.md): ``TEMPLATE``.
The OAR objective is ``DV_MAX(D_obj, V_obj)``: the engine's dose-volume upper kind, over-dose of
the hottest V_obj of the organ (SPEC §1.3's form); "D50% ≤ goal" is its V_obj = 50 % instance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Role
from rtautoplan.plan import Objective, ObjectiveKind as K
from rtautoplan.policies.env_base import PlanningEnv, Reward, Scorer, d95_scale, single_level
from rtautoplan.scoring.relative_loss import bound_goals, default_goals
from rtautoplan.structures.names import planning_name, target_name
from rtautoplan.structures.rules import apply_rules

RX_GY, FRACTIONS = 44.0, 22  # SPEC §4.1/§4.3: primary 44 Gy (2 Gy fractions)
GOALS_GY: dict[str, float] = {"Parotid_L": 15.0, "Parotid_R": 15.0, "Cavity_Oral": 25.0}  # SPEC §4.3
OARS = tuple(GOALS_GY)  # LP, RP, OC (SPEC §4.2)
DELTA_D_GY, DELTA_V_PCT = 2.0, 5.0  # SPEC §4.2 eq. 2
V_INIT_PCT = 50.0  # D50% objective (SPEC §4.6)
MAX_STEPS = 35  # SPEC §4.7
GOAL_MODES = ("paper", "template")  # §4.3 goals, or plan-specific goals bound to the template plan (§4.7 b)
# Bounds of the objective positions (ours, §5.2 bounded actions): D_obj in [0, Rx] Gy, V_obj in [5, 100] %.
D_BOUNDS_GY = (0.0, RX_GY)
V_BOUNDS_PCT = (5.0, 100.0)
# Random initial positions (init="random"): D_obj = goal · U(RANDOM_D), V_obj ~ U(RANDOM_V) %.
RANDOM_D, RANDOM_V = (0.7, 1.5), (30.0, 70.0)


@dataclass(frozen=True)
class Position:
    """One OAR objective's position: D_obj (Gy) and V_obj (% of the organ)."""

    d_gy: float
    v_pct: float


# (structure or None for the PTV, kind, dose ×Rx, weight): the static template of SPEC §4.6, ours.
TEMPLATE: tuple[tuple[str, K, float, float], ...] = (
    ("PTV", K.DMIN, 1.0, 10.0),  # PTV lower and upper bound "at the same point", the Rx (§4.6 preferred)
    ("PTV", K.DMAX, 1.0, 10.0),
    ("SpinalCord", K.DMAX, 40.0 / RX_GY, 5.0),  # 40 Gy: below the 45 Gy course tolerance, for the boost
    ("Larynx", K.DMAX, 1.0, 1.0),  # at Rx: only so the larynx cannot be sacrificed (§4.6)
    ("Ring", K.DMAX, 0.93, 1.0),  # the NTO: the Ring of SPEC §2.3 with the rule-10 limit 0.93·Rx (§2.6)
)

# Model → the moves per OAR: (field, delta).
MOVES: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("d_gy", DELTA_D_GY), ("d_gy", -DELTA_D_GY)),
    2: (("d_gy", DELTA_D_GY), ("d_gy", -DELTA_D_GY), ("v_pct", DELTA_V_PCT), ("v_pct", -DELTA_V_PCT)),
}
_BOUNDS = {"d_gy": D_BOUNDS_GY, "v_pct": V_BOUNDS_PCT}


def template_positions() -> dict[str, Position]:
    """SPEC §4.6: every OAR objective at (its goal, 50 %)."""
    return {name: Position(goal, V_INIT_PCT) for name, goal in GOALS_GY.items()}


def random_positions(rng: np.random.Generator) -> dict[str, Position]:
    return {name: Position(float(np.clip(goal * rng.uniform(*RANDOM_D), *D_BOUNDS_GY)), float(rng.uniform(*RANDOM_V)))
            for name, goal in GOALS_GY.items()}


def parotid_limit_positions() -> dict[str, Position]:
    """The template with both parotid objectives at the far end of the action space (D_obj 0 Gy,
    V_obj 100 %: every parotid voxel pushed towards 0 Gy): the most sparing these objectives can ask
    for, a reference for what the planners could reach (docs/results.md), not a plan to deliver."""
    far = Position(D_BOUNDS_GY[0], V_BOUNDS_PCT[1])
    return {**template_positions(), "Parotid_L": far, "Parotid_R": far}


def oar_limit_positions() -> dict[str, Position]:
    """All three OAR objectives at (0 Gy, 100 %): the parotid limit with the oral cavity pushed as
    hard, to show what sparing is left when the oral cavity must not pay for it (docs/results.md)."""
    return {name: Position(D_BOUNDS_GY[0], V_BOUNDS_PCT[1]) for name in OARS}


INITS = {"template": lambda rng: template_positions(), "random": random_positions,
         "parotid-limit": lambda rng: parotid_limit_positions(), "oar-limit": lambda rng: oar_limit_positions()}


def n_actions(model: int) -> int:
    return len(OARS) * len(MOVES[model])


def action_name(a: int, model: int) -> str:
    name, (field, delta) = OARS[a // len(MOVES[model])], MOVES[model][a % len(MOVES[model])]
    return f"{name} {'D' if field == 'd_gy' else 'V'}{delta:+g}{' Gy' if field == 'd_gy' else ' %'}"


def apply_action(positions: Mapping[str, Position], a: int, model: int) -> dict[str, Position]:
    """The positions after action ``a`` of ``model`` (1 or 2), clipped to D/V_BOUNDS."""
    if not 0 <= int(a) < n_actions(model):
        raise ValueError(f"model {model} action must be in 0..{n_actions(model) - 1}, got {a}")
    name = OARS[int(a) // len(MOVES[model])]
    field, delta = MOVES[model][int(a) % len(MOVES[model])]
    old = getattr(positions[name], field)
    return {**positions, name: replace(positions[name], **{field: float(np.clip(old + delta, *_BOUNDS[field]))})}


def objectives(positions: Mapping[str, Position], case: Case) -> tuple[Objective, ...]:
    """The template (fixed) plus one adjustable DV_MAX(D_obj, V_obj) per OAR of interest present in ``case``."""
    level = case.prescription.levels[0]
    names = {"PTV": target_name(Role.PTV, level.dose_gy), "Ring": planning_name(Role.RING, level.dose_gy)}
    fixed = [Objective(names.get(s, s), kind, factor * level.dose_gy, w, adjustable=False)
             for s, kind, factor, w in TEMPLATE if case.has(names.get(s, s))]
    tuned = [Objective(name, K.DV_MAX, p.d_gy, 1.0, volume=p.v_pct / 100.0) for name, p in positions.items()
             if case.has(name)]
    return tuple(fixed + tuned)


class HNImrtEnv(PlanningEnv, gym.Env):
    """Seed 004 environment over any photon TPS.

    tps: adapter instance or factory. model: 1 (6 actions) or 2 (12 actions). case_seeds: H&N
    phantom seeds; case: a fixed Case (made single-level at 44 Gy too, unless as_prescribed: then
    its prescription must already be one 44 Gy level, a primary phase, and is kept). init: "template"
    (SPEC §4.6, default), "random", or "parotid-limit" / "oar-limit" (reference plans).
    normalise: scale the dose to PTV D95 = 44 Gy (§4.7 step 3; off by default: the loss then
    carries the coverage term). scorer/reward/score_options:
    override ``relative_loss``. cold_start: see ``env_base``. population: phantom population of
    ``case_seeds``. goals: "paper" or "template" (module docstring).
    """

    system = "relative_loss"
    site = "hn"
    STATE = ("positions",)

    def __init__(self, tps, model: int = 1, case_seeds: Sequence[int] = (0,), case: Case | None = None,
                 max_steps: int = MAX_STEPS, init: str = "template", scorer: Scorer | None = None,
                 reward: Reward | None = None, score_options: Mapping | None = None, normalise: bool = False,
                 cold_start: bool = True, as_prescribed: bool = False, population: str = "v1",
                 goals: str = "paper"):
        if model not in MOVES:
            raise ValueError(f"model must be 1 or 2, not {model!r}")
        if goals not in GOAL_MODES:
            raise ValueError(f"goals must be one of {GOAL_MODES}, not {goals!r}")
        self.goals = goals
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, not {init!r}")
        self.model, self.normalise, self.as_prescribed = model, normalise, as_prescribed
        self._setup(tps, case_seeds, case, max_steps, init, scorer, reward, score_options, cold_start, population)
        self.observation_space = gym.spaces.Box(0.0, np.inf, (4 * len(OARS) + 2,), np.float32)
        self.action_space = gym.spaces.Discrete(n_actions(model))
        self.positions = template_positions()

    def _prepare_case(self, case: Case) -> Case:
        if not self.as_prescribed:
            return apply_rules(single_level(case, RX_GY, FRACTIONS), self.site)
        levels = case.prescription.levels
        if len(levels) != 1 or abs(levels[0].dose_gy - RX_GY) > 1e-6:
            raise ValueError(f"seed 004's environment plans one {RX_GY:g} Gy level as prescribed; case "
                             f"{case.case_id!r} prescribes {', '.join(f'{lv.dose_gy:g} Gy' for lv in levels)}")
        return apply_rules(case, self.site)

    def _ptv(self) -> str:
        return target_name(Role.PTV, self.case.prescription.levels[0].dose_gy)

    def _init_parameters(self, init: str) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, not {init!r}")
        self.positions = INITS[init](self.np_random)

    def _apply(self, action) -> dict:
        a = int(action)
        if not self.action_space.contains(a):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.positions = apply_action(self.positions, a, self.model)
        return {"index": a, "name": action_name(a, self.model)}

    @property
    def parameters(self) -> dict[str, float]:
        return {f"{n}.{f}": float(getattr(p, f)) for n, p in self.positions.items() for f in ("d_gy", "v_pct")}

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return objectives(self.positions, self.case)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {f"{n}.{f}": _BOUNDS[f] for n in self.positions for f in ("d_gy", "v_pct")}

    def describe_action(self, action) -> str:
        return action_name(int(action), self.model)

    def _scale(self):
        return d95_scale(self._planner.voxels[self._ptv()], RX_GY) if self.normalise else None

    def _observe(self) -> np.ndarray:
        gy, vox = self.last_dose.gy, self._planner.voxels
        rows = []
        for name, p in self.positions.items():
            v = vox[name]
            rows += [dvh.d_percent(gy, v, 50.0), dvh.dmean(gy, v), p.d_gy, p.v_pct]
        ptv = vox[self._ptv()]
        rows += [dvh.d_percent(gy, ptv, 95.0), dvh.d_percent(gy, ptv, 1.0)]
        return np.asarray(rows, np.float32)

    def _terminal(self, score) -> bool:
        return all(c.passed for c in score.scored)

    def reset(self, *, seed: int | None = None, options: Mapping | None = None):
        """As ``PlanningEnv.reset``; with goals="template", first binds the case's goals to its
        template plan (one extra optimisation unless the episode starts from the template)."""
        if self.goals == "paper":
            return super().reset(seed=seed, options=options)
        self._planner.score_options.pop("goals", None)
        init = dict(options or {}).get("init", self.init)
        obs, info = super().reset(seed=seed, options={**(options or {}), "init": "template"})
        limits = {k: v for k, v in self._planner.score_options.items() if k in ("parotid_gy", "oral_cavity_gy",
                                                                                 "ptv_d95_gy")}
        self._planner.score_options["goals"] = bound_goals(default_goals(self.case, **limits), self.last_dose.gy,
                                                           self.case)
        if init == "template":
            self._planner.last_score = self.score(self.last_dose.gy)
            return self._observe(), self._info(None)
        self._init_parameters(init)
        self._planner.evaluate(self.objectives, self._scale())
        return self._observe(), self._info(None)
