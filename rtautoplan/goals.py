"""Clinical goals: read them as clinics and benchmarks write them, and measure a dose against them.

A goal in ``prescription.json`` (``goals``)::

    {"roi": "Core", "metric": "D10%", "max_gy": 25}
    {"roi": "PTV", "metric": "D95%", "min_gy": 50}
    {"roi": "SpinalCord", "metric": "D0.03cc", "max_gy": 45}     also "Dmax", "Dmin", "Dmean"
    {"roi": "Rectum", "metric": "V70Gy", "max_pct": 20}           volume receiving ≥ 70 Gy, % of the ROI
    {"roi": "Bowel", "metric": "V45Gy", "max_cc": 195}            … or in cm³
    optional: "priority": 1 (must, the default) or 2 (desired); "source": "QUANTEC 2010"

Metrics are read on the structure as drawn (``Structure.mask``; for a generated PTV its own mask),
never on the planning mask the overlap rules cut: the clinical DVH is the whole organ's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Goal, Structure
from rtautoplan.errors import InputError

_D_PERCENT = re.compile(r"^D(\d+(?:\.\d+)?)%$", re.IGNORECASE)
_D_CC = re.compile(r"^D(\d+(?:\.\d+)?)\s*(?:cc|cm3|cm³)$", re.IGNORECASE)
_V_GY = re.compile(r"^V(\d+(?:\.\d+)?)\s*Gy$", re.IGNORECASE)
_NAMED = {"DMAX": "Dmax", "DMIN": "Dmin", "DMEAN": "Dmean"}
_BOUNDS = {"min_gy": ("lower", "Gy"), "max_gy": ("upper", "Gy"), "min_pct": ("lower", "%"),
           "max_pct": ("upper", "%"), "min_cc": ("lower", "cc"), "max_cc": ("upper", "cc")}
_KEYS = ("roi", "metric", "priority", "source", *_BOUNDS)
_EXAMPLE = '{"roi": "SpinalCord", "metric": "D0.03cc", "max_gy": 45}'


def canonical_metric(metric: str) -> str | None:
    """``d95%`` → ``D95%``, ``D0.03 cc`` → ``D0.03cc``, ``v20gy`` → ``V20Gy``, ``dmax`` → ``Dmax``; None if unknown."""
    text = metric.strip().replace(" ", "")
    if text.upper() in _NAMED:
        return _NAMED[text.upper()]
    for pattern, form in ((_D_PERCENT, "D{}%"), (_D_CC, "D{}cc"), (_V_GY, "V{}Gy")):
        match = pattern.match(text)
        if match:
            return form.format(match.group(1))
    return None


def parse_goal(data, where: str, index: int) -> Goal:
    """One ``goals`` entry of prescription.json; InputError naming the file, the entry and the fix."""
    key = f'"goals"[{index}]'
    if not isinstance(data, dict):
        raise InputError(where, f"{key} is not an object", f"Write {_EXAMPLE}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise InputError(where, f'{key} has unknown key "{unknown[0]}"', f"Use only {', '.join(_KEYS)}")
    roi, metric = data.get("roi"), data.get("metric")
    if not isinstance(roi, str) or not roi.strip():
        raise InputError(where, f'{key}."roi" is {roi!r}', "Give the ROIName as exported (or its TG-263 name)")
    if not isinstance(metric, str) or canonical_metric(metric) is None:
        raise InputError(where, f'{key}."metric" is {metric!r}',
                         "Use D<x>% (D95%), D<x>cc (D0.03cc), Dmax, Dmin, Dmean or V<x>Gy (V20Gy)")
    metric = canonical_metric(metric)
    bounds = {k: v for k, v in data.items() if k in _BOUNDS}
    if not bounds:
        raise InputError(where, f"{key} has no bound", 'Add "max_gy"/"min_gy" (D metrics) or "max_pct"/"min_pct"/'
                                                       '"max_cc"/"min_cc" (V metrics)')
    units = {_BOUNDS[k][1] for k in bounds}
    is_dose = metric.startswith("D")
    if len(units) > 1 or (is_dose and units != {"Gy"}) or (not is_dose and "Gy" in units):
        raise InputError(where, f"{key}: {metric} cannot take {', '.join(sorted(bounds))}",
                         "A D metric takes min_gy/max_gy; a V metric takes min_pct/max_pct or min_cc/max_cc")
    values = {}
    for name, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(where, f'{key}."{name}" is {value!r}', "Give a number ≥ 0")
        values[_BOUNDS[name][0]] = float(value)
    if "lower" in values and "upper" in values and values["lower"] > values["upper"]:
        raise InputError(where, f"{key}: the lower bound is above the upper one", "Swap them")
    priority = data.get("priority", 1)
    if priority not in (1, 2) or isinstance(priority, bool):
        raise InputError(where, f'{key}."priority" is {priority!r}', "Use 1 (must be met) or 2 (desired)")
    source = data.get("source", "prescription.json")
    if not isinstance(source, str):
        raise InputError(where, f'{key}."source" is {source!r}', "Give the source as text")
    return Goal(roi.strip(), metric, units.pop(), values.get("lower"), values.get("upper"), priority, source)


def parse_goals(goals, where: str) -> tuple[Goal, ...]:
    if not isinstance(goals, list):
        raise InputError(where, '"goals" must be a list', f'Write "goals": [{_EXAMPLE}]')
    return tuple(parse_goal(g, where, n) for n, g in enumerate(goals))


def find_structure(case: Case, roi: str) -> Structure | None:
    """The structure a goal's ``roi`` names: its TG-263 name, else its input ROIName, else either
    case-insensitively."""
    for s in case.structures:
        if roi == s.name:
            return s
    for s in case.structures:
        if roi == s.roi_name:
            return s
    lower = roi.lower()
    for s in case.structures:
        if lower in (s.name.lower(), s.roi_name.lower()):
            return s
    return None


def metric_value(metric: str, unit: str, dose_gy: np.ndarray, mask: np.ndarray, voxel_cm3: float) -> float:
    """The value of ``metric`` (canonical) on ``mask`` (bool or flat indices): Gy for D metrics, % or
    cm³ (``unit``) for V metrics."""
    if metric == "Dmax":
        return dvh.dmax(dose_gy, mask)
    if metric == "Dmin":
        return dvh.dmin(dose_gy, mask)
    if metric == "Dmean":
        return dvh.dmean(dose_gy, mask)
    x = float(re.sub(r"[^\d.]", "", metric[1:].replace("Gy", "").replace("cc", "")))
    if metric.endswith("%"):
        return dvh.d_percent(dose_gy, mask, x)
    if metric.endswith("cc"):
        return dvh.d_cc(dose_gy, mask, x, voxel_cm3)
    if unit == "cc":
        return dvh.v_gy_cc(dose_gy, mask, x, voxel_cm3)
    return 100.0 * dvh.v_gy(dose_gy, mask, x)


@dataclass(frozen=True)
class GoalResult:
    """A goal measured on a dose: value (in the goal's unit), met, and by how much (positive: margin
    to spare, negative: how far it misses), in the goal's unit."""

    goal: Goal
    value: float
    met: bool
    margin: float

    def as_json(self) -> dict:
        g = self.goal
        return {"roi": g.roi, "metric": g.metric, "unit": g.unit, "lower": g.lower, "upper": g.upper,
                "priority": g.priority, "source": g.source, "value": round(self.value, 3), "met": self.met,
                "margin": round(self.margin, 3)}


ROUNDING = 0.005  # in the goal's unit (Gy, %, cm³): half the 0.01 the report, log and stdout print, so a value
# shown equal to its bound is met (a normalised D95 of 49.99999 Gy meets "≥ 50 Gy"); not a clinical allowance


def measure(goal: Goal, dose_gy: np.ndarray, case: Case, tolerance: float = ROUNDING) -> GoalResult:
    """``goal`` measured on ``dose_gy`` (on the case grid). ``tolerance`` (in the goal's unit) is the
    rounding of the printed values (``ROUNDING``), not a clinical allowance."""
    s = find_structure(case, goal.roi)
    if s is None:
        raise InputError(f"goal {goal}", f"names ROI {goal.roi!r}, which the case does not have",
                         f"Use one of {', '.join(x.roi_name or x.name for x in case.structures)}, or remove the goal")
    value = metric_value(goal.metric, goal.unit, dose_gy, s.mask, case.grid.voxel_volume_cm3)
    margins = []
    if goal.lower is not None:
        margins.append(value - goal.lower)
    if goal.upper is not None:
        margins.append(goal.upper - value)
    margin = float(min(margins))
    return GoalResult(goal, float(value), margin >= -tolerance, margin)


def measure_all(goals: Iterable[Goal], dose_gy: np.ndarray, case: Case) -> list[GoalResult]:
    return [measure(g, dose_gy, case) for g in goals]


def check_rois(goals: Sequence[Goal], case: Case) -> None:
    """InputError for the first goal whose ROI the case lacks (before planning, not after)."""
    for goal in goals:
        if find_structure(case, goal.roi) is None:
            raise InputError(f"goal {goal} ({goal.source})", f"names ROI {goal.roi!r}, which the case does not have",
                             f"Use one of {', '.join(sorted(x.roi_name or x.name for x in case.structures))}, "
                             "or remove the goal")
