"""Shared data types and helpers of the four plan-quality systems (SPEC §1.7, §2.12, §3.7, §4.3, §7.1).

Every scorer returns a ``Score`` whose ``criteria`` explain it line by line, with two invariants:
``total == Σ criterion.score`` and ``maximum == Σ criterion.max_score`` over the criteria that
were scored (``max_score is None`` marks a row left out, e.g. a structure the case does not have).

Which voxels are evaluated (``evaluation_mask``): clinical structures as drawn (``Structure.mask``),
because plan quality is judged on the clinician's contours, not on the voxels the overlap rules
(SPEC §2.5) left to each objective; Gaps and Rings are generated planning structures and are
evaluated on their planning voxels (``Structure.voxels``), i.e. without the target overlap that
rule 6 removes from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtautoplan.case import Case, Role, Structure
from rtautoplan.mask import Mask

NOT_SCORED = float("nan")  # Criterion.value of a row that was left out


@dataclass(frozen=True)
class Criterion:
    """One line of a score.

    name: e.g. "Bladder V94.3%".
    structure: TG-263 name of the structure it is read on.
    metric: e.g. "V94.3%", "Dmean", "penalty", "uniformity".
    value: the metric value in ``unit`` (NaN when the row was not scored).
    unit: "%", "Gy", "cm³", "fraction" or "" (dimensionless).
    goal: human-readable goal, e.g. "< 30 %".
    score: points earned (relative_loss: the loss term, ≥ 0); 0 when not scored.
    max_score: best attainable score of the row; None when the row was not scored.
    passed: whether the goal is met; None when the system defines no pass/fail for the row.
    """

    name: str
    structure: str
    metric: str
    value: float
    unit: str
    goal: str
    score: float
    max_score: float | None
    passed: bool | None


@dataclass(frozen=True)
class Score:
    """A plan's score in one system.

    system: "proknow9" | "dose_distribution" | "table_a2" | "relative_loss".
    total: the plan score (proknow9 ψ ∈ [0, 9]; dose_distribution ≤ 0; table_a2 φ ∈ [−40, 204.4];
        relative_loss L ≥ 0).
    maximum: the best attainable total (9, 0, the attainable φ of the rows present, 0).
    criteria: the rows, in the system's table order.
    higher_is_better: False for relative_loss (a loss), True otherwise.
    """

    system: str
    total: float
    maximum: float | None
    criteria: tuple[Criterion, ...]
    higher_is_better: bool

    @property
    def relative(self) -> float | None:
        """total / maximum when the maximum is a positive number (proknow9 ψ/9, table_a2 φ/max φ), else None."""
        if self.maximum is None or self.maximum <= 0:
            return None
        return self.total / self.maximum

    @property
    def scored(self) -> tuple[Criterion, ...]:
        """The criteria that count towards total and maximum."""
        return tuple(c for c in self.criteria if c.max_score is not None)


def make_score(system: str, criteria: list[Criterion], higher_is_better: bool = True) -> Score:
    """A Score whose total and maximum are the sums over the scored criteria."""
    scored = [c for c in criteria if c.max_score is not None]
    total = float(sum(c.score for c in scored))
    maximum = float(sum(c.max_score for c in scored))
    return Score(system, total, maximum, tuple(criteria), higher_is_better)


def not_scored(name: str, structure: str, metric: str, unit: str, goal: str, why: str) -> Criterion:
    """A row left out of total and maximum; ``why`` ends up in its goal text."""
    return Criterion(name, structure, metric, NOT_SCORED, unit, f"{goal} ({why}: not scored)", 0.0, None, None)


def check_dose(dose_gy: np.ndarray, case: Case, dtype=float) -> np.ndarray:
    """The dose as an array (Gy) of ``dtype`` (None: as given), checked to lie on the case grid."""
    dose = np.asarray(dose_gy, dtype=dtype)
    if dose.shape != tuple(case.grid.shape):
        raise ValueError(f"dose shape {dose.shape} differs from the grid of case {case.case_id!r} "
                         f"{tuple(case.grid.shape)}: score the dose on the case grid")
    return dose


def evaluation_mask(s: Structure) -> Mask:
    """The voxels a score reads: Gaps and Rings their planning voxels, every other structure as drawn."""
    return s.voxels if s.role in (Role.GAP, Role.RING, Role.CONTROL) else s.mask


def find(case: Case, name: str) -> Structure | None:
    """The structure called ``name`` (TG-263) with at least one evaluated voxel, or None."""
    for s in case.structures:
        if s.name == name and evaluation_mask(s).any():
            return s
    return None


def require(case: Case, name: str, system: str) -> Structure:
    """The structure called ``name``; ValueError naming it when the case lacks it (or it is empty)."""
    s = find(case, name)
    if s is None:
        raise ValueError(f"{system} needs a structure named {name!r} with voxels; case {case.case_id!r} has "
                         f"{[t.name for t in case.structures]}. Rename the ROI (prescription.json "
                         f"structure_names) or use another scoring system")
    return s


def rx_of(s: Structure, case: Case) -> float:
    """The prescription (Gy) of a target, Gap or Ring: its rx_gy, else Rx_max when the plan has one level."""
    if s.rx_gy is not None:
        return float(s.rx_gy)
    if len(case.prescription.levels) == 1:
        return case.prescription.rx_max
    raise ValueError(f"{s.name!r} has no prescription dose and case {case.case_id!r} has several levels: "
                     f"name it with its dose (e.g. {s.role.value}_7000) or list it in prescription.json levels")


def primary(case: Case, role: Role) -> Structure | None:
    """The non-empty structure of ``role`` with the highest prescription (first in case order on ties)."""
    candidates = [s for s in case.by_role(role) if evaluation_mask(s).any()]
    if not candidates:
        return None
    return max(candidates, key=lambda s: rx_of(s, case))
