"""Seed 000's prostate IMRT environment (SPEC §1.2–§1.8, §1.12).

* state: the DVHs of PTV, bladder and rectum, 100 points each, shape (3, 100), float32 volume
  fractions (0–1) at doses evenly spaced on [0, 1.2·d_p] ([NOT SPECIFIED] §1.2: our choice);
* actions: Discrete(18), Table 1 on one TPP (``policies.tpp``);
* reward Δψ with ψ the ``proknow9`` score (§1.7–§1.8); the dose is normalised to PTV D95 = d_p
  after each optimisation (§1.3; ``dose_scale``);
* episodes: at most 20 steps (truncation, §1.8); ψ = ψ_max terminates (§1.8 preferred);
* initial TPPs: ``init="random"`` (default, §1.12 convention) or ``"trivial"``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np

from rtautoplan.case import Case
from rtautoplan.plan import Objective
from rtautoplan.policies import tpp as T
from rtautoplan.policies.env_base import PlanningEnv, Reward, Scorer, d95_scale, dvh_rows
from rtautoplan.structures.rules import apply_rules

DVH_POINTS = 100  # SPEC §1.2
DVH_MAX_REL = 1.2  # dose axis top, × d_p ([NOT SPECIFIED] §1.2)
MAX_STEPS = 20  # t_epi, SPEC §1.8 / Table 3
# Seed 000's TPS as ``InHousePhoton`` options: 7 beams, 60 L-BFGS iterations, every plan optimised
# from scratch (docs/decisions.md, "The ACER planner's engine"); the dose grid is the adapter's standard.
# ACER's (and DQN's) engine, with the beam model the committed weights learned on (physics.photon.SIX_MV_JAW)
ENGINE = {"n_beams": 7, "max_iter": 60, "warm_start": False, "objective_points": "dose_grid", "model": "6MV-jaw"}


class ProstateEnv(PlanningEnv, gym.Env):
    """Seed 000 VTP environment over any TPS.

    tps: adapter instance or factory (e.g. ``InHousePhoton(solver="admm")``, SPEC §1.3's ADMM).
    case_seeds: prostate phantom seeds an episode draws from; case: a fixed Case instead.
    max_steps: truncation (20). init: "random" or "trivial". scorer/reward/score_options:
    override ``rtautoplan.scoring`` (``proknow9``). normalise: scale the dose to D95 = d_p.
    cold_start: see ``env_base``. population: the phantom population of ``case_seeds`` ("v1", "v2").
    """

    system = "proknow9"
    site = "prostate"
    STATE = ("tpp",)

    def __init__(self, tps, case_seeds: Sequence[int] = (0,), case: Case | None = None, max_steps: int = MAX_STEPS,
                 init: str = "random", scorer: Scorer | None = None, reward: Reward | None = None,
                 score_options: Mapping | None = None, normalise: bool = True, cold_start: bool = True,
                 population: str = "v1"):
        if init not in T.INITS:
            raise ValueError(f"init must be one of {sorted(T.INITS)}, not {init!r}")
        self.normalise = normalise
        self._setup(tps, case_seeds, case, max_steps, init, scorer, reward, score_options, cold_start, population)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (3, DVH_POINTS), np.float32)
        self.action_space = gym.spaces.Discrete(T.N_ACTIONS)
        self.tpp: T.Tpp = T.trivial()

    def _prepare_case(self, case: Case) -> Case:
        return apply_rules(case, self.site)

    def _structures(self) -> tuple[str, str, str]:
        return (T.ptv_of(self.case)[0],) + tuple(organ for _, organ in T.OARS)

    def _init_parameters(self, init: str) -> None:
        if init not in T.INITS:
            raise ValueError(f"init must be one of {sorted(T.INITS)}, not {init!r}")
        self.tpp = T.INITS[init](self.np_random)

    def _apply(self, action) -> dict:
        a = int(action)
        if not self.action_space.contains(a):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.tpp = T.apply_action(self.tpp, a)
        return {"index": a, "name": T.action_name(a)}

    @property
    def parameters(self) -> dict[str, float]:
        return self.tpp.as_dict()

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return T.objectives(self.tpp, self.case)

    def _scale(self):
        if not self.normalise:
            return None
        ptv, d_p = T.ptv_of(self.case)
        return d95_scale(self._planner.voxels[ptv], d_p)

    def _observe(self) -> np.ndarray:
        rx = self.case.prescription.levels[0].dose_gy
        names = self._structures()
        return dvh_rows(self.last_dose.gy, [self._planner.voxels[n] for n in names], [rx] * len(names), DVH_POINTS,
                        DVH_MAX_REL)

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {name: T.BOUNDS[T.KIND[name]] for name in T.NAMES}

    def describe_action(self, action) -> str:
        return T.action_name(int(action))

    def _terminal(self, score) -> bool:
        return float(score.total) >= float(score.maximum)
