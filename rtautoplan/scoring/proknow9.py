"""ProKnow / "planIQ" plan quality ψ of seed 000: nine criteria, one point each, ψ ∈ [0, 9] (SPEC §1.7).

The structures are found by TG-263 name: ``Bladder``, ``Rectum``, and as "PTV" the PTV with the
highest prescription. Relative doses are against that PTV's prescription Rx (Gy):

* ``Vx%`` — percentage (0–100) of the organ volume receiving ≥ x % of Rx;
* ``D0.03cc`` — dose to the hottest 0.03 cm³ of the PTV, in % of Rx.

A criterion passes when its value is strictly below its threshold (SPEC §1.7 "< 20 %").

Credit (SPEC §1.7 [AMBIGUOUS]: the paper reports non-integer ψ, so it gives partial credit, but the
function is not given):

* ``partial=False`` (reference): 1 point when passed, 0 otherwise.
* ``partial=True``: linear credit above the threshold t, ``clip(1 − (v − t) / (band · t), 0, 1)``:
  full credit up to t, none from t · (1 + band) on; ``band`` = 0.1 by default (a criterion
  "< 30 %" earns half a point at 31.5 %). Below the threshold it equals the binary credit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Role, Structure
from rtautoplan.scoring.base import Criterion, Score, check_dose, evaluation_mask, make_score, primary, require, rx_of

SYSTEM = "proknow9"
PTV = "PTV"  # placeholder in CRITERIA for the highest-Rx PTV
PARTIAL_BAND = 0.1  # width of the partial-credit band, fraction of the threshold ([CONVENTION], docs/decisions.md)
NEAR_MAX_CC = 0.03  # volume (cm³) of the D0.03cc near-maximum (SPEC §1.7 criterion 9)


@dataclass(frozen=True)
class ProKnowCriterion:
    """One row of SPEC §1.7 Table 2: ``metric`` ("V" or "Dcc") at ``x`` (% of Rx, or cm³);
    passes if the value is < threshold (%)."""

    structure: str
    metric: str
    x: float
    threshold: float

    @property
    def label(self) -> str:
        return f"V{self.x:g}%" if self.metric == "V" else f"D{self.x:g}cc"


# SPEC §1.7 Table 2 (seed 000).
CRITERIA: tuple[ProKnowCriterion, ...] = (
    ProKnowCriterion("Bladder", "V", 100.6, 20.0),
    ProKnowCriterion("Bladder", "V", 94.3, 30.0),
    ProKnowCriterion("Bladder", "V", 88.1, 40.0),
    ProKnowCriterion("Bladder", "V", 81.2, 55.0),
    ProKnowCriterion("Rectum", "V", 94.3, 20.0),
    ProKnowCriterion("Rectum", "V", 88.1, 30.0),
    ProKnowCriterion("Rectum", "V", 81.2, 40.0),
    ProKnowCriterion("Rectum", "V", 75.5, 55.0),
    ProKnowCriterion(PTV, "Dcc", NEAR_MAX_CC, 109.6),
)


def _v_percent(dose: np.ndarray, mask: np.ndarray, x: float, rx_gy: float, voxel_cm3: float) -> float:
    """Percentage (0–100) of the structure receiving ≥ x % of rx_gy."""
    return 100.0 * dvh.v_percent(dose, mask, x, rx_gy)


def _d_cc_percent(dose: np.ndarray, mask: np.ndarray, x: float, rx_gy: float, voxel_cm3: float) -> float:
    """Dose to the hottest x cm³, in % of rx_gy."""
    return 100.0 * dvh.d_cc(dose, mask, x, voxel_cm3) / rx_gy


_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, float, float, float], float]] = {
    "V": _v_percent,
    "Dcc": _d_cc_percent,
}


def _binary(value: float, threshold: float, band: float) -> float:
    return 1.0 if value < threshold else 0.0


def _linear(value: float, threshold: float, band: float) -> float:
    return float(np.clip(1.0 - (value - threshold) / (band * threshold), 0.0, 1.0))


_CREDIT: dict[bool, Callable[[float, float, float], float]] = {False: _binary, True: _linear}


def _structures(case: Case) -> dict[str, Structure]:
    ptv = primary(case, Role.PTV)
    if ptv is None:
        raise ValueError(f"{SYSTEM} needs a PTV (criterion 9, D0.03cc, and the prescription of the relative "
                         f"doses); case {case.case_id!r} has none: run structures.apply_rules first")
    return {"Bladder": require(case, "Bladder", SYSTEM), "Rectum": require(case, "Rectum", SYSTEM), PTV: ptv}


def score(dose_gy: np.ndarray, case: Case, partial: bool = False, band: float = PARTIAL_BAND) -> Score:
    """ψ of a dose (Gy, on case.grid): binary credit, or linear partial credit (module docstring).

    Raises ValueError naming the structure when the case has no Bladder, Rectum or PTV.
    """
    if partial and band <= 0:
        raise ValueError(f"band must be > 0 (fraction of each threshold), got {band}")
    dose = check_dose(dose_gy, case)
    structures = _structures(case)
    rx = rx_of(structures[PTV], case)
    voxel_cm3 = case.grid.voxel_volume_cm3
    criteria = []
    for row in CRITERIA:
        s = structures[row.structure]
        value = _METRICS[row.metric](dose, evaluation_mask(s), row.x, rx, voxel_cm3)
        criteria.append(Criterion(
            name=f"{s.name} {row.label}", structure=s.name, metric=row.label, value=value, unit="%",
            goal=f"< {row.threshold:g} %" + (" of Rx" if row.metric == "Dcc" else ""),
            score=_CREDIT[partial](value, row.threshold, band), max_score=1.0, passed=value < row.threshold))
    return make_score(SYSTEM, criteria)
