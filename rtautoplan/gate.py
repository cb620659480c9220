"""The clinical gate: is this plan acceptable to hand to a clinician for review?

``check(case, dose_gy, goals)`` measures every goal (``rtautoplan.goals``) and the hot-spot rules on
the final, normalised dose:

- global maximum outside the targets (External minus every CTV/PTV/GTV with a dose level; a target
  without one, such as a whole breast typed GTV beside a boosted tumour bed, has no Rx to be hot
  against and counts as outside) ≤ ``OUTSIDE_MAX`` × Rx_max;
- each target's D2% ≤ ``TARGET_D2`` × its Rx (ICRU 83 near-maximum). A lower level of a
  simultaneous integrated boost is evaluated outside the higher levels' targets expanded by
  ``BOOST_FALLOFF_MM``: the dose falls from the boost to the elective level over that distance by
  design, and counting it would fail every SIB plan.

A plan is acceptable when every priority-1 goal and every hot-spot rule holds; missed priority-2
goals are warnings. A failing plan is still written, and marked on every surface (report banner,
``plan_log.json``, exit code 3, hook status, batch column, node). The RTPLAN stays UNAPPROVED either
way: approval is a clinician's act.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Goal, Role
from rtautoplan.goals import ROUNDING, GoalResult, measure_all

OUTSIDE_MAX = 1.07  # × Rx_max: ICRU 83's near-maximum bound, applied outside the targets as a point maximum
TARGET_D2 = 1.07  # × Rx: ICRU 83 D2% of each target
BOOST_FALLOFF_MM = 10.0
EXIT_UNACCEPTABLE = 3  # the CLI's exit code for a plan written but not acceptable


@dataclass(frozen=True)
class HotSpot:
    """One hot-spot rule: where, the measured dose (Gy), the limit (Gy), met or not."""

    rule: str
    value_gy: float
    limit_gy: float

    @property
    def met(self) -> bool:
        return self.value_gy <= self.limit_gy + ROUNDING

    def as_json(self) -> dict:
        return {"rule": self.rule, "value_gy": round(self.value_gy, 3), "limit_gy": round(self.limit_gy, 3),
                "met": self.met}


@dataclass(frozen=True)
class GateResult:
    """acceptable: every priority-1 goal and hot-spot rule holds. reasons: each failure, one line;
    warnings: missed priority-2 goals and notes (e.g. fractionation)."""

    goals: tuple[GoalResult, ...]
    hotspots: tuple[HotSpot, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def reasons(self) -> tuple[str, ...]:
        missed = [f"goal {r.goal} not met: {r.value:.2f}" for r in self.goals if not r.met and r.goal.priority == 1]
        hot = [f"hot spot: {h.rule} is {h.value_gy:.2f} Gy > {h.limit_gy:.2f} Gy" for h in self.hotspots if not h.met]
        return tuple(missed + hot)

    @property
    def acceptable(self) -> bool:
        return not self.reasons

    @property
    def violation(self) -> float:
        """How far the plan is from acceptable: the relative excess of every missed must-goal and
        hot-spot rule, summed (0 when acceptable); ranks plans of which none passes."""
        goals = sum(-r.margin / max(abs(r.goal.upper if r.goal.upper is not None else r.goal.lower or 0.0), 1.0)
                    for r in self.goals if not r.met and r.goal.priority == 1)
        return float(goals + sum((h.value_gy - h.limit_gy) / h.limit_gy for h in self.hotspots if not h.met))

    def all_warnings(self) -> tuple[str, ...]:
        missed = [f"desired goal {r.goal} not met: {r.value:.2f}" for r in self.goals
                  if not r.met and r.goal.priority != 1]
        return tuple(missed) + self.warnings

    def as_json(self) -> dict:
        return {"acceptable": self.acceptable, "reasons": list(self.reasons), "warnings": list(self.all_warnings()),
                "goals": [r.as_json() for r in self.goals], "hotspots": [h.as_json() for h in self.hotspots]}


def lower_level_region(case: Case, target) -> np.ndarray | None:
    """The voxels of a lower-level target at least BOOST_FALLOFF_MM from every higher level's
    targets (bool, case grid); None for a target of the highest level (no higher level)."""
    from rtautoplan.structures.margins import expand

    if target.rx_gy is None:
        return None
    higher = [t.mask.to_full() for t in case.by_role(Role.CTV, Role.PTV, Role.GTV)
              if t.rx_gy is not None and t.rx_gy > target.rx_gy + 1e-6 and t.mask.any()]
    if not higher:
        return None
    return target.mask.to_full() & ~expand(np.logical_or.reduce(higher), case.grid.spacing, BOOST_FALLOFF_MM)


def hotspots(case: Case, dose_gy: np.ndarray) -> tuple[HotSpot, ...]:
    """The hot-spot rules of the module docstring, measured on ``dose_gy`` (Gy, case grid)."""
    outside, regions = gate_regions(case)
    out = []
    flat = np.asarray(dose_gy).ravel()
    if outside.size:
        limit = OUTSIDE_MAX * case.prescription.rx_max
        out.append(HotSpot("max outside the targets", float(flat[outside].max()), limit))
    for s, region in regions:
        where = f"{s.name} D2%" if region is None else f"{s.name} D2% (≥ {BOOST_FALLOFF_MM:g} mm from higher levels)"
        if region is None or region.size:
            out.append(HotSpot(where, dvh.d_percent(dose_gy, s.mask if region is None else region, 2.0),
                               TARGET_D2 * s.rx_gy))
    return tuple(out)


_REGIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Case → gate_regions(case)


def gate_regions(case: Case) -> tuple[np.ndarray, tuple]:
    """(the External's voxels outside every dosed target, [(target, its lower_level_region or None)] from the
    highest level down), as flat indices of the case grid; computed once per case (the gate is asked of every
    loop step, and the masks of a Case do not change)."""
    if case not in _REGIONS:
        targets = [s for s in case.by_role(Role.CTV, Role.PTV, Role.GTV) if s.mask.any() and s.rx_gy is not None]
        inside = np.zeros(case.grid.shape, bool)
        for s in targets:
            inside |= s.mask.to_full()
        body = case.external.mask.to_full() if case.by_role(Role.EXTERNAL) else np.ones(case.grid.shape, bool)
        regions = []
        for s in sorted(targets, key=lambda t: (-t.rx_gy, t.name)):
            region = lower_level_region(case, s)
            regions.append((s, None if region is None else np.flatnonzero(region)))
        _REGIONS[case] = (np.flatnonzero(body & ~inside), tuple(regions))
    return _REGIONS[case]


def check(case: Case, dose_gy: np.ndarray, goals: tuple[Goal, ...], notes: tuple[str, ...] = ()) -> GateResult:
    """The gate's verdict on ``dose_gy`` (final, normalised; Gy on the case grid)."""
    return GateResult(tuple(measure_all(goals, dose_gy, case)), hotspots(case, dose_gy),
                      tuple(n for n in notes if n))
