"""Plan-quality scoring: four separate systems, never mixed (SPEC §7.1).

| system | seed | SPEC | total | best | reward |
|---|---|---|---|---|---|
| ``proknow9`` | 000 | §1.7, §1.8 | ψ ∈ [0, 9] | 9 | Δψ = ψ(after) − ψ(before) |
| ``dose_distribution`` | 002 | §2.12 | score_plan ≤ 0 | 0 | Δscore_plan |
| ``table_a2`` | 003 | §3.7 | φ ∈ [−40, 204.4] | 204.4 | φ(after) − 0.5 · max φ (absolute form) |
| ``relative_loss`` | 004 | §4.3 | L ≥ 0 | 0 | −ΔL = L(before) − L(after) |

Each module has ``score(dose_gy, case, **options) -> Score`` (dose in Gy on ``case.grid``);
``SCORERS`` registers them, ``evaluate`` calls one by name and ``reward`` turns two scores into the
system's reward.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rtautoplan.case import Case
from rtautoplan.scoring import dose_distribution, proknow9, relative_loss, table_a2
from rtautoplan.scoring.base import Criterion, Score
from rtautoplan.scoring.dose_distribution import structure_scores

SCORERS: dict[str, Callable[..., Score]] = {
    proknow9.SYSTEM: proknow9.score,
    dose_distribution.SYSTEM: dose_distribution.score,
    table_a2.SYSTEM: table_a2.score,
    relative_loss.SYSTEM: relative_loss.score,
}


def _difference(before: Score | None, after: Score) -> float:
    return after.total - _needed(before).total


def _absolute_half_max(before: Score | None, after: Score) -> float:
    return after.total - 0.5 * after.maximum


def _loss_decrease(before: Score | None, after: Score) -> float:
    return _needed(before).total - after.total


def _needed(before: Score | None) -> Score:
    if before is None:
        raise ValueError("this system's reward is a difference: pass the score before the step")
    return before


# SPEC §7.1 (§1.8, §2.12 Eq. 10, §3.7, §4.3 Eq. 6).
REWARDS: dict[str, Callable[[Score | None, Score], float]] = {
    proknow9.SYSTEM: _difference,
    dose_distribution.SYSTEM: _difference,
    table_a2.SYSTEM: _absolute_half_max,
    relative_loss.SYSTEM: _loss_decrease,
}


def _system(system: str) -> str:
    if system not in SCORERS:
        raise ValueError(f"unknown scoring system {system!r}: use one of {sorted(SCORERS)}")
    return system


def evaluate(system: str, dose_gy: np.ndarray, case: Case, **options) -> Score:
    """``SCORERS[system](dose_gy, case, **options)`` with a clear error for an unknown name."""
    return SCORERS[_system(system)](dose_gy, case, **options)


def reward(system: str, before: Score | None, after: Score) -> float:
    """The reward of one planning step (SPEC §7.1); ``before`` is unused (may be None) for table_a2."""
    _system(system)
    for s in (before, after):
        if s is not None and s.system != system:
            raise ValueError(f"reward({system!r}) got a {s.system!r} score: "
                             "the systems are not comparable (SPEC §7.1)")
    return float(REWARDS[system](before, after))


__all__ = ["Criterion", "REWARDS", "SCORERS", "Score", "evaluate", "reward", "structure_scores"]
