"""The safety filter between a planner and the TPS (SPEC §5.2).

A policy proposes; the filter decides. Two checks, each returning a :class:`Verdict` whose
``reason`` goes into the step log and the report:

* **before** the TPS runs, :meth:`SafetyFilter.check_parameters`: every planning parameter the
  action changes must lie inside its documented bounds (the environment's bounds table:
  SPEC §1.5 clamps, §2.8 ranges, §3.3 bounds, §4.2 steps). A NaN is always out of bounds.
* **after** the TPS ran, :meth:`SafetyFilter.check_plan`: a step may not drop the coverage of any
  target level below the hard floor — D98 of each CTV ≥ ``coverage_floor`` · Rx — unless the plan
  is better overall by the active score. A target already below the floor may not get worse.

The closed loop keeps the best plan it has seen, so the plan it returns is never worse, by the
active score, than the initial one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from rtautoplan.case import Case, Role
from rtautoplan.dvh import d98

COVERAGE_FLOOR = 0.90  # D98 ≥ 90 % of Rx: below it no clinician accepts an automatic plan [CONVENTION]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


ACCEPT = Verdict(True)


def coverage(case: Case, dose_gy: np.ndarray) -> dict[str, float]:
    """D98 / Rx of every prescribed CTV (drawn mask), the coverage the floor applies to."""
    return {s.name: d98(dose_gy, s.mask) / s.rx_gy
            for s in case.by_role(Role.CTV) if s.rx_gy and s.mask.any()}


@dataclass(frozen=True)
class SafetyFilter:
    """bounds: parameter name → (lower, upper), inclusive. coverage_floor: fraction of Rx for CTV D98."""

    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    coverage_floor: float = COVERAGE_FLOOR

    def check_parameters(self, parameters: Mapping[str, float], current: Mapping[str, float] | None = None) -> Verdict:
        """Reject parameters outside their bounds (or NaN); parameters without bounds must be finite.
        With ``current`` (the parameters now), only those the action changes are judged: a value
        the planner did not touch (a rule-11 start above the bound, say) is not its decision."""
        for name, value in parameters.items():
            value = float(value)
            if current is not None and name in current and float(current[name]) == value:
                continue
            if not math.isfinite(value):
                return Verdict(False, f"{name} = {value} is not a finite number")
            if name in self.bounds:
                lo, hi = self.bounds[name]
                if not lo - 1e-9 * max(1.0, abs(lo)) <= value <= hi + 1e-9 * max(1.0, abs(hi)):
                    return Verdict(False, f"{name} = {value:.4g} is outside its bounds [{lo:.4g}, {hi:.4g}]")
        return ACCEPT

    def check_plan(self, case: Case, before_gy: np.ndarray, after_gy: np.ndarray, better_overall: bool) -> Verdict:
        """Reject a step that takes a CTV's D98 below the floor (or lowers one already below it),
        unless ``better_overall`` (the active score improved)."""
        if better_overall:
            return ACCEPT
        before, after = coverage(case, before_gy), coverage(case, after_gy)
        for name, now in after.items():
            floor = self.coverage_floor
            if now < floor and now < before.get(name, math.inf) - 1e-6:
                return Verdict(False, f"{name} D98 would fall to {100 * now:.1f} % of Rx (floor {100 * floor:.0f} %, "
                                      f"was {100 * before.get(name, math.nan):.1f} %) and the score does not improve")
        return ACCEPT
