"""Plan score φ of seed 003, Table A2 (SPEC §3.7): CTVs plus 18 OARs, max 204.4, reported as φ / max φ.

Every row is piecewise linear in its metric value v with constant ends, so it is stored as three
breakpoints ``xp`` and the scores ``fp`` there and evaluated with ``np.interp``:

* OAR rows (generic form): xp = (0, g, L), fp = (S_max, S_g, 0), S_max = 1.2 · S_g;
* CTV V95% (fraction): (0, 0.98, 1) → (−40, 12, 40); V105% (fraction): (0, 0.1, 1) → (20, 6, 0);
  CI: (0, 0.6, 1) → (0, 6, 20); HI: (0, 0.1, 1) → (20, 6, 0).

A row passes when its score reaches the score at its middle breakpoint (OAR rows: v ≤ g).

Readings ([NOT SPECIFIED] / [AMBIGUOUS] in SPEC §3.7, recorded in docs/decisions.md):

* "CTV" is every CTV of the plan (a simultaneous integrated boost has one per level; ``target=``
  names the one structure to score instead). Each CTV's four rows are scored at its own Rx and
  weighted 1/n (n CTVs), so the CTV part still has 100 points and max φ stays 204.4. V95% reads the
  CTV as drawn; V105% and HI the CTV without the CTVs and PTVs of higher Rx (a CTV_5400 drawn
  around a 70 Gy boost is not "hot" there; the whole CTV if nothing is left); CI's target volume is
  the CTV with the higher-Rx CTVs (its Rx isodose should enclose them too).
* CI is Paddick's, TV_PIV² / (TV · PIV), at the ``ci_isodose`` · Rx isodose (0.95, the level of the
  V95% coverage row); PIV is counted inside the External (the whole grid without one).
* HI is ICRU 83's, (D2% − D98%) / D50%.
* Temporal-lobe V40/V50 are the volumes (cm³) receiving ≥ 40 / 50 Gy.
* Rows whose structure the case lacks are listed with ``max_score=None`` and left out of both
  total and maximum, so ``maximum`` is the attainable φ of the rows present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Role, Structure
from rtautoplan.scoring.base import (Criterion, Score, check_dose, evaluation_mask, find, make_score,
                                     not_scored, require, rx_of)

SYSTEM = "table_a2"
CTV = "CTV"  # placeholder in ROWS for the scored target
CI_ISODOSE = 0.95  # CI isodose, fraction of Rx ([NOT SPECIFIED], docs/decisions.md)
MAX_PHI = 204.4  # SPEC §3.7 [DERIVED]: 100 (CTV) + 104.4 (18 OARs)


@dataclass(frozen=True)
class Row:
    """One metric of Table A2: ``metric`` of ``structure`` (unit ``unit``), score np.interp(v, xp, fp)."""

    structure: str
    metric: str
    unit: str
    xp: tuple[float, float, float]
    fp: tuple[float, float, float]

    def points(self, v: float) -> float:
        """Score of metric value v (constant beyond the end breakpoints)."""
        return float(np.interp(v, self.xp, self.fp))

    @property
    def max_score(self) -> float:
        return max(self.fp)

    @property
    def goal(self) -> str:
        sense = "≥" if self.fp[2] > self.fp[0] else "≤"
        return f"{sense} {self.xp[1]:g} {self.unit}".rstrip() + f" ({self.fp[1]:g} of {self.max_score:g} points)"


def _oar(structure: str, metric: str, unit: str, s_max: float, s_g: float, g: float, limit: float) -> Row:
    return Row(structure, metric, unit, (0.0, g, limit), (s_max, s_g, 0.0))


# SPEC §3.7 Table A2: (structure, metric, unit, S_max, S_g, g, L); inner ear = Cochlea (TG-263).
ROWS: tuple[Row, ...] = (
    _oar("Brainstem", "Dmax", "Gy", 7.2, 6.0, 45.0, 54.0),
    _oar("Brainstem", "D1%", "Gy", 7.2, 6.0, 38.5, 50.0),
    _oar("SpinalCord", "Dmax", "Gy", 14.4, 12.0, 30.0, 40.0),
    _oar("OpticChiasm", "D20%", "Gy", 14.4, 12.0, 30.0, 40.0),
    _oar("OpticNrv_R", "D20%", "Gy", 7.2, 6.0, 30.0, 40.0),
    _oar("OpticNrv_L", "D20%", "Gy", 7.2, 6.0, 30.0, 40.0),
    _oar("Lobe_Temporal_R", "V40Gy", "cm³", 3.6, 3.0, 7.66, 10.0),
    _oar("Lobe_Temporal_R", "V50Gy", "cm³", 3.6, 3.0, 4.66, 6.0),
    _oar("Lobe_Temporal_L", "V40Gy", "cm³", 3.6, 3.0, 7.66, 10.0),
    _oar("Lobe_Temporal_L", "V50Gy", "cm³", 3.6, 3.0, 4.66, 6.0),
    _oar("Bone_Mandible", "Dmean", "Gy", 6.0, 5.0, 30.0, 40.0),
    _oar("Joint_TM_R", "Dmean", "Gy", 3.0, 2.5, 30.0, 40.0),
    _oar("Joint_TM_L", "Dmean", "Gy", 3.0, 2.5, 30.0, 40.0),
    _oar("Parotid_R", "Dmean", "Gy", 3.0, 2.5, 21.0, 25.0),
    _oar("Parotid_L", "Dmean", "Gy", 3.0, 2.5, 21.0, 25.0),
    _oar("Lens_R", "D1%", "Gy", 3.0, 2.5, 6.0, 10.0),
    _oar("Lens_L", "D1%", "Gy", 3.0, 2.5, 6.0, 10.0),
    _oar("Eye_R", "Dmean", "Gy", 1.8, 1.5, 30.0, 40.0),
    _oar("Eye_L", "Dmean", "Gy", 1.8, 1.5, 30.0, 40.0),
    _oar("Cochlea_R", "Dmean", "Gy", 2.4, 2.0, 30.0, 40.0),
    _oar("Cochlea_L", "Dmean", "Gy", 2.4, 2.0, 30.0, 40.0),
    Row(CTV, "V95%", "fraction", (0.0, 0.98, 1.0), (-40.0, 12.0, 40.0)),
    Row(CTV, "V105%", "fraction", (0.0, 0.1, 1.0), (20.0, 6.0, 0.0)),
    Row(CTV, "CI", "", (0.0, 0.6, 1.0), (0.0, 6.0, 20.0)),
    Row(CTV, "HI", "", (0.0, 0.1, 1.0), (20.0, 6.0, 0.0)),
)


@dataclass(frozen=True, eq=False)
class _Context:
    """What the metrics read: the dose (Gy), the structure's voxels, its Rx (Gy), voxel volume (cm³),
    the body mask, the CI isodose (fraction of Rx), and for a CTV the voxels its V105%/HI read
    (``own``) and its CI target volume (``tv``); both default to ``mask``."""

    dose: np.ndarray
    mask: np.ndarray
    rx_gy: float
    voxel_cm3: float
    body: np.ndarray
    ci_isodose: float
    own: np.ndarray | None = None
    tv: np.ndarray | None = None

    @property
    def own_mask(self) -> np.ndarray:
        return self.mask if self.own is None else self.own

    @property
    def tv_mask(self) -> np.ndarray:
        return self.mask if self.tv is None else self.tv


def _paddick_ci(c: _Context) -> float:
    covered = c.dose >= c.ci_isodose * c.rx_gy
    piv = np.count_nonzero(covered & c.body)
    tv_mask = np.asarray(c.tv_mask)
    tv = np.count_nonzero(tv_mask)
    return float(np.count_nonzero(covered & tv_mask)) ** 2 / (tv * piv) if piv else 0.0


def _icru_hi(c: _Context) -> float:
    mask = c.own_mask
    d50 = dvh.d_percent(c.dose, mask, 50.0)
    return (dvh.d2(c.dose, mask) - dvh.d98(c.dose, mask)) / d50 if d50 > 0 else float("inf")


METRICS: dict[str, Callable[[_Context], float]] = {
    "Dmax": lambda c: dvh.dmax(c.dose, c.mask),
    "Dmean": lambda c: dvh.dmean(c.dose, c.mask),
    "D1%": lambda c: dvh.d_percent(c.dose, c.mask, 1.0),
    "D20%": lambda c: dvh.d_percent(c.dose, c.mask, 20.0),
    "V40Gy": lambda c: dvh.v_gy_cc(c.dose, c.mask, 40.0, c.voxel_cm3),
    "V50Gy": lambda c: dvh.v_gy_cc(c.dose, c.mask, 50.0, c.voxel_cm3),
    "V95%": lambda c: dvh.v_percent(c.dose, c.mask, 95.0, c.rx_gy),
    "V105%": lambda c: dvh.v_percent(c.dose, c.own_mask, 105.0, c.rx_gy),
    "CI": _paddick_ci,
    "HI": _icru_hi,
}


def _targets(case: Case, target: str | None) -> list[Structure]:
    """The scored "CTV"s: every CTV with voxels, highest Rx first, or the structure named ``target``."""
    if target is not None:
        return [require(case, target, SYSTEM)]
    ctvs = [s for s in case.by_role(Role.CTV) if evaluation_mask(s).any()]
    return sorted(ctvs, key=lambda s: -rx_of(s, case))


def _ctv_context(s: Structure, case: Case, named: bool, **common) -> _Context:
    """The context of a scored target: its own-level voxels and CI target volume (module docstring)."""
    rx = rx_of(s, case)
    if named:
        return _Context(mask=s.mask, rx_gy=rx, **common)
    higher = [t for t in case.by_role(Role.CTV, Role.PTV) if t.rx_gy is not None and t.rx_gy > rx and t.mask.any()]
    if not higher:
        return _Context(mask=s.mask, rx_gy=rx, **common)
    drawn = s.mask.to_full()
    own = drawn & ~np.logical_or.reduce([t.mask.to_full() for t in higher])
    tv = np.logical_or.reduce([drawn] + [t.mask.to_full() for t in higher if t.role is Role.CTV])
    return _Context(mask=s.mask, rx_gy=rx, own=own if own.any() else None, tv=tv, **common)


def _criterion(row: Row, s: Structure, c: _Context, weight: float = 1.0) -> Criterion:
    v = METRICS[row.metric](c)
    scaled = Row(row.structure, row.metric, row.unit, row.xp, tuple(weight * f for f in row.fp))
    points = scaled.points(v)
    return Criterion(f"{s.name} {row.metric}", s.name, row.metric, float(v), row.unit, scaled.goal, points,
                     scaled.max_score, points >= scaled.fp[1])


def score(dose_gy: np.ndarray, case: Case, target: str | None = None, ci_isodose: float = CI_ISODOSE) -> Score:
    """φ of a dose (Gy(RBE), on case.grid); ``target``: the one structure scored as "CTV" (default:
    every CTV, each weighted 1/n, module docstring).

    A missing structure never raises (its rows are listed as not scored, module docstring), except a
    ``target`` that was named explicitly and is not in the case.
    """
    dose = check_dose(dose_gy, case)
    ctvs = _targets(case, target)
    body_structures = case.by_role(Role.EXTERNAL)
    body = body_structures[0].mask.to_full() if body_structures else np.ones(dose.shape, bool)
    common = {"dose": dose, "voxel_cm3": case.grid.voxel_volume_cm3, "body": body, "ci_isodose": ci_isodose}
    criteria = []
    for row in ROWS:
        if row.structure == CTV:
            if not ctvs:
                criteria.append(not_scored(f"{CTV} {row.metric}", CTV, row.metric, row.unit, row.goal, "not in case"))
            for s in ctvs:
                context = _ctv_context(s, case, target is not None, **common)
                criteria.append(_criterion(row, s, context, 1.0 / len(ctvs)))
            continue
        s = find(case, row.structure)
        if s is None:
            label = f"{row.structure} {row.metric}"
            criteria.append(not_scored(label, row.structure, row.metric, row.unit, row.goal, "not in case"))
            continue
        criteria.append(_criterion(row, s, _Context(mask=evaluation_mask(s), rx_gy=case.prescription.rx_max, **common)))
    return make_score(SYSTEM, criteria)
