"""Seed 002's proton H&N environment (SPEC §2.5–§2.8, §2.10–§2.12).

The case goes through ``apply_rules`` (PTV, Gap, Ring, overlaps); its objectives are those of
``structures.objectives_for``: fixed target and Ring objectives (rule 10) and one adjustable
(weight w, dose limit D) pair per OAR, w = 1 and D drawn by rule 11 (the random initial
parameters, from ``reset(seed)``).

* state [M, N + 4] float32, M = ``M_MAX`` rows (one per planning structure, zero rows after them)
  and N = ``DVH_POINTS``: the structure's DVH (volume fractions at N doses evenly spaced on
  [0, 1.2·R], R = the row's reference dose), then type, importance, score, reference dose
  (``ENCODING``);
* actions Box(2K): for the K = ``K_SELECTED`` OARs with the lowest per-structure score (worst
  first, ties in row order), (a_w, a_D) each: w ← w·(1 + a_w), a_w ∈ [0, 0.5];
  D ← D·(1 + a_D), a_D ∈ [−0.5, 0] (§2.8; actions outside are clipped, §2.8 preferred);
* reward Δscore_plan of the ``dose_distribution`` score (§2.12 eq. 10); terminated only if the
  score reaches its maximum 0; truncated after ``MAX_STEPS`` = 4 adjustments (§2.11 T = 4). With
  ``coverage_lambda`` λ > 0 (our deviation, docs/decisions.md): Δscore_plan − λ·Δ``coverage_deficit``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np

from rtautoplan.case import Case, Role, Structure
from rtautoplan.dvh import d_percent
from rtautoplan.plan import Objective
from rtautoplan.policies.env_base import PlanningEnv, Reward, Scorer, dvh_rows
from rtautoplan.scoring.base import evaluation_mask
from rtautoplan.structures.falloff import falloff_objectives, falloff_regions
from rtautoplan.structures.objectives import (HOTSPOT_AIM, estimate_dose, goal_objectives, hotspot_objectives,
                                              hotspot_regions, objectives_for)
from rtautoplan.structures.rules import apply_rules, priority

M_MAX = 50  # planning structures, SPEC §2.7 capacity
DVH_POINTS = 100  # N ([NOT SPECIFIED] §2.10; as seed 000's 100)
DVH_MAX_REL = 1.2
K_SELECTED = 8  # SPEC §2.7 [DERIVED]: 16 parameters = 8 structures × (w, D)
WEIGHT_RANGE = (0.0, 0.5)  # SPEC §2.8
LIMIT_RANGE = (-0.5, 0.0)  # SPEC §2.8
MAX_STEPS = 4  # SPEC §2.11
# The cheap engine of the PPO planner (``policies/ppo.py``, trained and planned with it): coarse dose grid,
# 12 mm spots, ≤ 20 L-BFGS-B iterations per solve (warm-started within an episode), one minimum-MU round;
# the objectives read the dose at the CT voxels (on the coarse grid's own points CTV D99 ends near 0.9 Rx);
# benchmarks/ppo_env_step.py measures a step.
PPO_ENGINE = {"dose_grid_factor": (2, 4, 4), "spot_spacing_mm": 12.0, "max_iter": 20, "mu_rounds": 1,
              "objective_points": "ct"}
W_MAX = 100.0  # safety bound on an OAR weight (ours, SPEC §5.2): 1.5⁸ ≈ 26 after 8 maximal steps
DOSE_UNIT_GY = 100.0  # the reference-dose column is R / 100 Gy
COVERAGE_D99 = 0.99  # CTV D99 / Rx below which ``coverage_deficit`` counts (issue 17's coverage target)
# Type and importance columns ([NOT SPECIFIED] §2.10): type code / 4, SPEC §2.4 level / 3; 0 = padding.
TYPE_CODE: dict[Role, int] = {Role.CTV: 1, Role.PTV: 2, Role.RING: 3, Role.OAR: 4}
ENCODING = ("DVH: volume fraction at d_i = i·1.2R/(N−1)", "type: code/4 (CTV 1, PTV 2, Ring 3, OAR 4)",
            "importance: level/3", "score: Eq. 8 score (≤ 0)", "reference dose R / 100 Gy")


def rows_of(case: Case) -> list[Structure]:
    """The planning structures, one state row each: targets (high Rx first, CTV before PTV), Rings
    (high Rx first), OARs (SPEC §2.4 level, then name) — the order of ``objectives_for``."""
    def planned(*roles):
        return [s for s in case.by_role(*roles) if s.voxels.any()]

    rows = sorted(planned(Role.CTV, Role.PTV), key=lambda s: (-s.rx_gy, s.role is Role.PTV, s.name))
    rows += sorted(planned(Role.RING), key=lambda s: -s.rx_gy)
    rows += sorted(planned(Role.OAR), key=lambda s: (priority(s), s.name))
    if len(rows) > M_MAX:
        raise ValueError(f"case {case.case_id!r} has {len(rows)} planning structures; the state holds {M_MAX}")
    return rows


def reference_dose(s: Structure, case: Case) -> float:
    """The dose (Gy) a row's DVH axis is scaled to: a target's or Ring's own Rx; Rx_max for OARs
    (so the axis covers the boost dose an OAR next to it receives)."""
    return float(s.rx_gy) if s.rx_gy is not None else case.prescription.rx_max


def coverage_deficit(gy: np.ndarray, case: Case, floor: float = COVERAGE_D99) -> float:
    """Σ over the case's CTVs of max(0, floor − D99 / Rx): 0 when every CTV has D99 ≥ floor·Rx."""
    deficit = 0.0
    for s in case.by_role(Role.CTV):
        mask = evaluation_mask(s)
        if mask.any() and s.rx_gy:
            deficit += max(0.0, floor - d_percent(gy, mask, 99.0) / float(s.rx_gy))
    return deficit


def select(scores: Mapping[str, float], adjustable: Sequence[str], k: int = K_SELECTED) -> tuple[str, ...]:
    """The ``k`` adjustable structures with the lowest score, worst first (stable in ``adjustable`` order)."""
    return tuple(sorted(adjustable, key=lambda n: scores.get(n, 0.0))[:k])


def apply_action(params: Mapping[str, tuple[float, float]], selected: Sequence[str], action: np.ndarray
                 ) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """(new params, the factors applied): p ← p·(1 + a) on the selected (w, D) pairs, a clipped to §2.8."""
    a = np.asarray(action, float).reshape(-1, 2)
    out, applied = dict(params), {}
    for name, (a_w, a_d) in zip(selected, a):
        a_w, a_d = float(np.clip(a_w, *WEIGHT_RANGE)), float(np.clip(a_d, *LIMIT_RANGE))
        w, d = params[name]
        out[name] = (w * (1.0 + a_w), d * (1.0 + a_d))
        applied[name] = (a_w, a_d)
    return out, applied


def objectives(base: Sequence[Objective], params: Mapping[str, tuple[float, float]]) -> tuple[Objective, ...]:
    """``base`` with every adjustable objective's (weight, dose_gy) taken from ``params``."""
    return tuple(replace(o, weight=params[o.structure][0], dose_gy=params[o.structure][1])
                 if o.adjustable and o.structure in params else o for o in base)


class ProtonHNEnv(PlanningEnv, gym.Env):
    """Seed 002 environment over any TPS (the in-house proton adapter by default of the paper).

    tps: adapter instance or factory. case_seeds: H&N phantom seeds; case: a fixed Case.
    max_steps: truncation (4). k_selected: OARs adjusted per step (8). scorer/reward/score_options:
    override ``dose_distribution`` (e.g. ``{"ring_rx": "rx_min"}``). cold_start: see ``env_base``.
    site: the margin set (``structures.rules.SITES``) and protocol (``rtautoplan.protocols``); the case's
    goals (``protocols.goals_for``) join rule 10's fixed objectives (``structures.objectives.goal_objectives``).
    coverage_lambda: λ of the coverage-aware reward (module docstring; 0 = eq. 10's Δscore_plan).
    falloff: add the normal-tissue dose fall-off objectives (``structures.falloff``; an option, off by
    default: it did not help where measured, docs/decisions.md).
    """

    system = "dose_distribution"
    site = "hn"
    STATE = ("params", "selected", "structure_scores", "coverage_deficit")

    def __init__(self, tps, case_seeds: Sequence[int] = (0,), case: Case | None = None, max_steps: int = MAX_STEPS,
                 k_selected: int = K_SELECTED, scorer: Scorer | None = None, reward: Reward | None = None,
                 score_options: Mapping | None = None, cold_start: bool = True, site: str = "hn",
                 population: str = "v1", coverage_lambda: float = 0.0, falloff: bool = False):
        if not (np.isfinite(coverage_lambda) and coverage_lambda >= 0.0):
            raise ValueError(f"coverage_lambda must be a finite number ≥ 0, got {coverage_lambda!r}")
        self.k, self.site, self.coverage_lambda = int(k_selected), site, float(coverage_lambda)
        self.falloff = bool(falloff)
        self._setup(tps, case_seeds, case, max_steps, "rule11", scorer, reward, score_options, cold_start, population)
        low = np.concatenate([[0.0] * (DVH_POINTS + 2), [-np.inf], [0.0]]).astype(np.float32)
        high = np.concatenate([[1.0] * (DVH_POINTS + 2), [0.0], [np.inf]]).astype(np.float32)
        self.observation_space = gym.spaces.Box(np.tile(low, (M_MAX, 1)), np.tile(high, (M_MAX, 1)), dtype=np.float32)
        self.action_space = gym.spaces.Box(np.tile([WEIGHT_RANGE[0], LIMIT_RANGE[0]], self.k).astype(np.float32),
                                           np.tile([WEIGHT_RANGE[1], LIMIT_RANGE[1]], self.k).astype(np.float32),
                                           dtype=np.float32)
        self._estimates: dict[str, np.ndarray] = {}
        self._base: tuple[Objective, ...] = ()
        self.params: dict[str, tuple[float, float]] = {}
        self.selected: tuple[str, ...] = ()
        self.structure_scores: dict[str, float] = {}
        self.coverage_deficit = 0.0  # ``coverage_deficit`` of the plan the environment holds

    def _prepare_case(self, case: Case) -> Case:
        from rtautoplan.plan import Modality
        from rtautoplan.structures.rules import photon_rules

        photon = getattr(self.tps, "modality", None) is Modality.PHOTON
        case = hotspot_regions(apply_rules(case, photon_rules(self.site) if photon else self.site))
        return falloff_regions(case, HOTSPOT_AIM) if self.falloff else case

    def _init_parameters(self, init: str) -> None:
        case = self.case
        if case.case_id not in self._estimates:
            self._estimates[case.case_id] = estimate_dose(case)
        from rtautoplan.protocols import goals_for

        self._base = objectives_for(case, self.np_random, reference_dose=self._estimates[case.case_id])
        self._base += hotspot_objectives(case) + goal_objectives(case, goals_for(case, self.site))
        if self.falloff:
            self._base += falloff_objectives(case)
        self.params = {o.structure: (o.weight, o.dose_gy) for o in self._base if o.adjustable}

    def _apply(self, action) -> dict:
        self.params, applied = apply_action(self.params, self.selected, action)
        return applied

    @property
    def parameters(self) -> dict[str, float]:
        return {f"{n}.{f}": float(v) for n, (w, d) in self.params.items() for f, v in (("w", w), ("D", d))}

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return objectives(self._base, self.params)

    def _observe(self) -> np.ndarray:
        from rtautoplan.scoring import structure_scores

        case, gy = self.case, self.last_dose.gy
        self.structure_scores = structure_scores(gy, case, **{k: v for k, v in self._planner.score_options.items()
                                                              if k == "ring_rx"})
        self.selected = select(self.structure_scores, list(self.params), self.k)
        self.coverage_deficit = coverage_deficit(gy, case)
        rows = rows_of(case)
        refs = [reference_dose(s, case) for s in rows]
        obs = np.zeros((M_MAX, DVH_POINTS + 4), np.float32)
        obs[:len(rows), :DVH_POINTS] = dvh_rows(gy, [self._planner.voxels[s.name] for s in rows], refs, DVH_POINTS,
                                                DVH_MAX_REL)
        for i, (s, ref) in enumerate(zip(rows, refs)):
            obs[i, DVH_POINTS:] = (TYPE_CODE[s.role] / 4.0, priority(s) / 3.0,
                                   self.structure_scores.get(s.name, 0.0), ref / DOSE_UNIT_GY)
        return obs

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Weights in [0, W_MAX]; dose limits in [0, 1.5·Rx_max] Gy (rule 11 starts them up to 1.3×
        the reference maximum, SPEC §2.5; §2.8 only lowers them)."""
        top = 1.5 * self.case.prescription.rx_max
        return {f"{n}.{f}": ((0.0, W_MAX) if f == "w" else (0.0, top)) for n in self.params for f in ("w", "D")}

    def describe_action(self, action) -> str:
        pairs = np.asarray(action, float).reshape(-1, 2)
        moves = [f"{name} w×{1 + np.clip(a_w, *WEIGHT_RANGE):.2f} D×{1 + np.clip(a_d, *LIMIT_RANGE):.2f}"
                 for name, (a_w, a_d) in zip(self.selected, pairs) if abs(a_w) > 1e-6 or abs(a_d) > 1e-6]
        return "; ".join(moves[:4]) + (f"; … {len(moves) - 4} more" if len(moves) > 4 else "") if moves else "no change"

    def step(self, action):
        before = self.coverage_deficit
        observation, reward, terminated, truncated, info = super().step(action)
        if self.coverage_lambda:
            reward -= self.coverage_lambda * (self.coverage_deficit - before)
        return observation, reward, terminated, truncated, info

    def _terminal(self, score) -> bool:
        return float(score.total) >= float(score.maximum)

    def _extra_info(self) -> dict:
        return {"selected": self.selected}
