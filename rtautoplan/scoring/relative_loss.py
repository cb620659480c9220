"""Relative-difference loss of seed 004 (SPEC §4.3, Eq. 6): L = Σ_s L_s ≥ 0, 0 when every goal is met.

Each goal is a one-sided hinge on the relative difference between a dose metric q (Gy) and its goal
g (Gy) (SPEC §4.3 [AMBIGUOUS], preferred form), all terms weighted equally:

* upper goals (OARs, q must stay ≤ g): L_s = max(0, (q − g) / g);
* lower goals (PTV coverage, q must reach g): L_s = max(0, (g − q) / g).

Default goals (``default_goals``), SPEC §4.3: D50% and Dmean ≤ 15 Gy for Parotid_L and Parotid_R,
≤ 25 Gy for Cavity_Oral (the goals seed 004 scaled to its 44 Gy base plan), and D95% ≥ Rx for
every PTV, each at its own prescription (seed 004's 44 Gy is the Rx of its single PTV, so a case
prescribed another dose is held to its own; ``ptv_d95_gy`` sets one value for the highest-Rx PTV
only, e.g. 44.0 to reproduce the paper). Structures are read as drawn.

``bound_goals`` makes plan-specific goals (seed 004 §4.7 b, with a reference plan in place of the
clinical one): every upper goal becomes the lower of its value and the reference plan's, so a
structure that already meets its goal is still held to where the reference left it (issue 16: the
oral cavity under its 25 Gy goal, where the one-sided hinge cannot see it getting worse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Role
from rtautoplan.scoring.base import (Criterion, Score, check_dose, evaluation_mask, find, make_score,
                                     not_scored, primary, rx_of)

SYSTEM = "relative_loss"
PAROTID_GY = 15.0  # SPEC §4.3
ORAL_CAVITY_GY = 25.0  # SPEC §4.3
OARS = ("Parotid_L", "Parotid_R", "Cavity_Oral")  # LP, RP, OC (SPEC §4.2)
OAR_METRICS = ("D50%", "Dmean")  # SPEC §4.3: "D50% and Dmean < goal"


@dataclass(frozen=True)
class Goal:
    """One term of L: ``metric`` of ``structure`` (TG-263) against ``goal_gy`` (Gy, > 0);
    upper=True: the metric must stay ≤ goal (OAR), False: it must reach ≥ goal (coverage)."""

    structure: str
    metric: str
    goal_gy: float
    upper: bool = True

    def __post_init__(self):
        if self.goal_gy <= 0:
            raise ValueError(f"goal of {self.structure} {self.metric} must be > 0 Gy, got {self.goal_gy}")
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} of {self.structure}: use one of {sorted(METRICS)}")

    def loss(self, q_gy: float) -> float:
        """L_s = max(0, relative difference towards failing), dimensionless."""
        excess = (q_gy - self.goal_gy) if self.upper else (self.goal_gy - q_gy)
        return max(0.0, excess / self.goal_gy)

    @property
    def text(self) -> str:
        return f"{'≤' if self.upper else '≥'} {self.goal_gy:g} Gy"


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "D50%": lambda dose, mask: dvh.d_percent(dose, mask, 50.0),
    "Dmean": dvh.dmean,
    "D95%": dvh.d95,
    "D1%": lambda dose, mask: dvh.d_percent(dose, mask, 1.0),
    "Dmax": dvh.dmax,
}


def default_goals(case: Case, parotid_gy: float = PAROTID_GY, oral_cavity_gy: float = ORAL_CAVITY_GY,
                  ptv_d95_gy: float | None = None) -> tuple[Goal, ...]:
    """The goals of SPEC §4.3 for this case (module docstring); ValueError when it has no PTV."""
    ptv = primary(case, Role.PTV)
    if ptv is None:
        raise ValueError(f"{SYSTEM} needs a PTV for its D95% coverage goal; case {case.case_id!r} has none: "
                         "run structures.apply_rules first, or pass goals=")
    limits = {"Parotid_L": parotid_gy, "Parotid_R": parotid_gy, "Cavity_Oral": oral_cavity_gy}
    oar_goals = [Goal(name, metric, limits[name]) for name in OARS for metric in OAR_METRICS]
    if ptv_d95_gy is not None:
        return (*oar_goals, Goal(ptv.name, "D95%", ptv_d95_gy, upper=False))
    ptvs = [s for s in case.by_role(Role.PTV) if evaluation_mask(s).any()]
    return (*oar_goals, *(Goal(s.name, "D95%", rx_of(s, case), upper=False) for s in ptvs))


def bound_goals(goals: Sequence[Goal], reference_gy: np.ndarray, case: Case) -> tuple[Goal, ...]:
    """``goals`` with every upper goal lowered to the reference dose's value of its metric (Gy) where
    that is lower: plan-specific goals (module docstring). Lower goals (coverage) are kept; a goal
    whose structure the case lacks is kept as is (it stays not scored)."""
    dose = check_dose(reference_gy, case)
    bound = []
    for goal in goals:
        s = find(case, goal.structure)
        if goal.upper and s is not None:
            q = METRICS[goal.metric](dose, evaluation_mask(s))
            if 0.0 < q < goal.goal_gy:
                goal = Goal(goal.structure, goal.metric, float(q), upper=True)
        bound.append(goal)
    return tuple(bound)


def score(dose_gy: np.ndarray, case: Case, goals: Sequence[Goal] | None = None, parotid_gy: float = PAROTID_GY,
          oral_cavity_gy: float = ORAL_CAVITY_GY, ptv_d95_gy: float | None = None) -> Score:
    """L of a dose (Gy, on case.grid): total = Σ L_s ≥ 0, maximum 0 (best), higher_is_better False.

    ``goals`` replaces the defaults. A goal whose structure the case lacks is listed, not scored.
    """
    dose = check_dose(dose_gy, case)
    goals = default_goals(case, parotid_gy, oral_cavity_gy, ptv_d95_gy) if goals is None else tuple(goals)
    criteria = []
    for goal in goals:
        s = find(case, goal.structure)
        name = f"{goal.structure} {goal.metric}"
        if s is None:
            criteria.append(not_scored(name, goal.structure, goal.metric, "Gy", goal.text, "not in case"))
            continue
        q = METRICS[goal.metric](dose, evaluation_mask(s))
        term = goal.loss(q)
        criteria.append(Criterion(name, s.name, goal.metric, q, "Gy", goal.text, term, 0.0, term == 0.0))
    return make_score(SYSTEM, criteria, higher_is_better=False)
