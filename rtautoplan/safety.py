"""The safety filter between a planner and the TPS (SPEC §5.2).

A policy proposes; the filter decides. Two checks, each returning a :class:`Verdict` whose
``reason`` goes into the step log and the report:

* **before** the TPS runs, :meth:`SafetyFilter.check_parameters`: every planning parameter the
  action changes must lie inside its documented bounds (the environment's bounds table:
  SPEC §1.5 clamps, §2.8 ranges, §3.3 bounds, §4.2 steps). A NaN is always out of bounds.
* **after** the TPS ran, :meth:`SafetyFilter.check_plan`: a step may not drop the coverage of any
  target level below the hard floor — D98 of each CTV ≥ ``coverage_floor`` · Rx — unless the plan
  is better overall by the active score. A target already below the floor may not get worse.
  With a ``coverage_guard`` g (off by default; any planner, ``run_loop(coverage_guard=…)``), whatever
  the score: no step may lower a CTV's D99 below min(g · Rx, its D99 before the step).
* **level-1 OAR hard limits** (:meth:`SafetyFilter.check_level1`, after the TPS ran, whatever the
  score): no step may raise an objective on a level-1 organ (spinal cord, brainstem, optic
  structures, or any OAR of SPEC §2.4 level 1) above its hard limit, nor take the organ's dose above
  the limit (or raise it further when already above). The limits are the case's goals on those
  organs (the prescription's own first, else the protocol table ``protocols.PROTOCOLS``, QUANTEC),
  ``level1_limits``.

Every :class:`Verdict` names its ``rule`` (``RULES``), so the rejection rate per rule is a plan's
safety metric (``rejection_rate``).

The closed loop keeps the best plan it has seen, so the plan it returns is never worse, by the
active score, than the initial one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from rtautoplan.case import Case, Goal, Role
from rtautoplan.dvh import d_percent

COVERAGE_FLOOR = 0.90  # D98 ≥ 90 % of Rx: below it no clinician accepts an automatic plan [CONVENTION]


# The rules a rejection can name (``Verdict.rule``); the last two are the loop's, not safety rules.
BOUNDS, COVERAGE, LEVEL1, CONSERVATIVE, GATE, UNDO = (
    "parameter bounds", "coverage floor", "level-1 OAR limit", "conservative mode", "clinical gate", "greedy undo")
SAFETY_RULES = (BOUNDS, COVERAGE, LEVEL1, CONSERVATIVE)
# Organs whose limits no action may relax, whatever their level in the case (TG-263 names).
LEVEL1_ORGANS = ("SpinalCord", "Brainstem", "OpticChiasm", "OpticNrv_L", "OpticNrv_R")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""
    rule: str = ""


ACCEPT = Verdict(True)


def coverage(case: Case, dose_gy: np.ndarray, percent: float = 98.0) -> dict[str, float]:
    """D``percent`` / Rx of every prescribed CTV (drawn mask): D98 for the floor, D99 for the guard."""
    return {s.name: d_percent(dose_gy, s.mask, percent) / s.rx_gy
            for s in case.by_role(Role.CTV) if s.rx_gy and s.mask.any()}


@dataclass(frozen=True)
class SafetyFilter:
    """bounds: parameter name → (lower, upper), inclusive. coverage_floor: fraction of Rx for CTV D98.
    level1: the hard limits of the level-1 organs (``level1_limits``). coverage_guard: fraction of Rx
    for CTV D99 that no step may cross downwards, score or not (None: no guard; module docstring)."""

    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    coverage_floor: float = COVERAGE_FLOOR
    level1: tuple[Goal, ...] = ()
    coverage_guard: float | None = None

    def check_parameters(self, parameters: Mapping[str, float], current: Mapping[str, float] | None = None) -> Verdict:
        """Reject parameters outside their bounds (or NaN); parameters without bounds must be finite.
        With ``current`` (the parameters now), only those the action changes are judged: a value
        the planner did not touch (a rule-11 start above the bound, say) is not its decision."""
        for name, value in parameters.items():
            value = float(value)
            if current is not None and name in current and float(current[name]) == value:
                continue
            if not math.isfinite(value):
                return Verdict(False, f"{name} = {value} is not a finite number", BOUNDS)
            if name in self.bounds:
                lo, hi = self.bounds[name]
                if not lo - 1e-9 * max(1.0, abs(lo)) <= value <= hi + 1e-9 * max(1.0, abs(hi)):
                    return Verdict(False, f"{name} = {value:.4g} is outside its bounds [{lo:.4g}, {hi:.4g}]", BOUNDS)
        return ACCEPT

    def check_plan(self, case: Case, before_gy: np.ndarray, after_gy: np.ndarray, better_overall: bool) -> Verdict:
        """Reject a step that takes a CTV's D98 below the floor (or lowers one already below it),
        unless ``better_overall`` (the active score improved); with ``coverage_guard``, one that takes a
        CTV's D99 below min(guard · Rx, its D99 before), whatever the score."""
        if self.coverage_guard is not None:
            before, after = coverage(case, before_gy, 99.0), coverage(case, after_gy, 99.0)
            for name, now in after.items():
                was = before.get(name, math.inf)
                if now < min(self.coverage_guard, was) - 1e-6:
                    return Verdict(False, f"{name} D99 would fall to {100 * now:.1f} % of Rx (was {100 * was:.1f} %; "
                                          f"coverage guard: not below {100 * self.coverage_guard:.0f} % nor lower when "
                                          f"already below)", COVERAGE)
        if better_overall:
            return ACCEPT
        before, after = coverage(case, before_gy), coverage(case, after_gy)
        for name, now in after.items():
            floor = self.coverage_floor
            if now < floor and now < before.get(name, math.inf) - 1e-6:
                return Verdict(False, f"{name} D98 would fall to {100 * now:.1f} % of Rx (floor {100 * floor:.0f} %, "
                                      f"was {100 * before.get(name, math.nan):.1f} %) and the score does not improve",
                               COVERAGE)
        return ACCEPT

    def check_level1(self, case: Case, objectives, before_gy: np.ndarray, after_gy: np.ndarray) -> Verdict:
        """Reject a step whose objectives put a level-1 organ's dose limit above its hard limit, or
        whose dose takes the organ above the limit (or higher when it already was), better score or not."""
        from rtautoplan.goals import find_structure, measure

        for goal in self.level1:
            organ = find_structure(case, goal.roi)
            for o in objectives:
                if organ is not None and o.structure == organ.name and o.kind.value in _MAX_KINDS \
                        and o.dose_gy > goal.upper + 1e-6:
                    return Verdict(False, f"the {o.kind.value} objective of level-1 organ {o.structure} would be "
                                          f"relaxed to {o.dose_gy:.2f} Gy, above its hard limit {goal}", LEVEL1)
            before, after = measure(goal, before_gy, case), measure(goal, after_gy, case)
            if not after.met and after.value > before.value + 1e-6:
                return Verdict(False, f"level-1 organ {goal.roi} {goal.metric} would rise to {after.value:.2f} Gy "
                                      f"(was {before.value:.2f} Gy), above its hard limit {goal}", LEVEL1)
        return ACCEPT


_MAX_KINDS = ("Dmax", "DVmax", "DVHmax", "Dmean")


def level1_limits(case: Case, goals) -> tuple[Goal, ...]:
    """The hard limits (Gy, upper bounds on D metrics) among ``goals`` of every level-1 organ of
    ``case``: those named in ``LEVEL1_ORGANS`` and the OARs of level 1 (SPEC §2.4)."""
    from rtautoplan.goals import find_structure

    organs = {s.name for s in case.by_role(Role.OAR) if s.level == 1 or s.name in LEVEL1_ORGANS}
    limits = []
    for goal in goals:
        s = find_structure(case, goal.roi)
        if s is not None and s.name in organs and goal.unit == "Gy" and goal.upper is not None and s.mask.any():
            limits.append(goal)
    return tuple(limits)


def rejection_rate(steps) -> dict:
    """The safety metric of one plan: attempts, rejections per rule of ``SAFETY_RULES``, and the rate."""
    per_rule = {rule: sum(1 for s in steps if not s.accepted and s.rule == rule) for rule in SAFETY_RULES}
    attempts = len(steps)
    rejected = sum(per_rule.values())
    return {"attempts": attempts, "rejected": rejected, "rate": round(rejected / attempts, 4) if attempts else 0.0,
            "per_rule": per_rule}


MIN_MU_PER_SPOT = 3.0  # MU per fraction, SPEC §2.1 (adapters/inhouse_proton.py)
NORMALISATION_TOLERANCE = 0.005  # relative: the normalised metric within 0.5 % of its target [CONVENTION]


def hard_constraints(case: Case, result) -> list[dict]:
    """The hard plan constraints of the plan that leaves (SPEC §5.2), each {rule, met, detail}: every
    delivered ion spot at 0 or ≥ ``MIN_MU_PER_SPOT`` MU per fraction (normalisation scales the spots
    too); the normalised target metric at its target dose. A failure is reported (log, report), the
    plan stays UNAPPROVED."""
    from rtautoplan.goals import find_structure, metric_value
    from rtautoplan.plan import Modality

    checks = []
    plan = result.plan
    if plan.modality is not Modality.PHOTON and plan.weights:
        mu = np.concatenate([np.asarray(w, float).ravel() for w in plan.weights])
        low = int(np.count_nonzero((mu > 0) & (mu < MIN_MU_PER_SPOT * (1 - 1e-6))))
        checks.append({"rule": "minimum MU per spot", "met": low == 0,
                       "detail": f"{low} of {int(np.count_nonzero(mu))} spots below {MIN_MU_PER_SPOT:g} MU per fraction"})
    n = result.normalisation
    if n is not None:
        roi = find_structure(case, n.roi)
        value = metric_value(n.metric, "Gy", plan.dose.gy, roi.mask, case.grid.voxel_volume_cm3) if roi else math.nan
        met = math.isfinite(value) and abs(value - n.dose_gy) <= NORMALISATION_TOLERANCE * n.dose_gy
        checks.append({"rule": "target normalisation", "met": bool(met),
                       "detail": f"{n.roi} {n.metric} = {value:.2f} Gy, normalised to {n.dose_gy:g} Gy"})
    return checks
