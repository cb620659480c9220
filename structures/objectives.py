"""Initial planning objectives of seed 002: rules 9–11 (SPEC §2.5–§2.7).

``objectives_for(case, rng)`` takes a case after ``apply_rules`` and returns, in this order:
the fixed target objectives of each level (high → low Rx: CTVs, then PTVs), the Ring objectives,
then one adjustable objective per OAR (by priority level, then name). Every objective acts on
its structure's planning voxels; a structure whose planning mask is empty gets none.

Readings ([CONVENTION], copied to docs/decisions.md):
- Rule 11 metric: Dmax objectives start from the maximum of the reference dose over the OAR's
  planning voxels (the Dmax penalty of SPEC §2.9 acts on every voxel above the limit, so a limit
  above the predicted maximum leaves the first optimisation free of OAR terms); Dmean ones from
  the mean. Limit = metric × U(1.1, 1.3), one draw per OAR in return order (reproducible per seed).
- Without a reference dose (the UNETR predictor of SPEC §2.5 is not available) ``estimate_dose``
  stands in: a knowledge-free dose fall-off from the targets.
"""

from __future__ import annotations

import numpy as np

from rtautoplan.case import Case, Role, Structure
from rtautoplan.errors import InputError
from rtautoplan.plan import Objective, ObjectiveKind
from rtautoplan.structures.margins import distance_mm
from rtautoplan.structures.names import organ
from rtautoplan.structures.rules import priority

# Rule 10, SPEC §2.6: (kind, dose factor, factor of "rx" or "rx_max", weight). Rx is the
# structure's own level; the Ring's is the level that generated it.
TARGET_OBJECTIVES: dict[Role, tuple[tuple[ObjectiveKind, float, str, float], ...]] = {
    Role.CTV: ((ObjectiveKind.DMIN, 1.02, "rx", 2.0), (ObjectiveKind.DMAX, 1.03, "rx_max", 2.0)),
    Role.PTV: ((ObjectiveKind.DMIN, 0.97, "rx", 1.0), (ObjectiveKind.DMAX, 1.02, "rx_max", 1.0)),
    Role.RING: ((ObjectiveKind.DMAX, 0.93, "rx", 1.0),),
}

# Rule 11, SPEC §2.5: initial OAR limit = reference metric × U(LIMIT_FACTOR), weight OAR_WEIGHT.
LIMIT_FACTOR = (1.1, 1.3)
OAR_WEIGHT = 1.0
_METRIC = {ObjectiveKind.DMAX: np.max, ObjectiveKind.DMEAN: np.mean}

# Dose fall-off length (mm) of estimate_dose: IMRT/IMPT dose outside a target falls to ~37 %
# of the prescription within about 2 cm (the Ring of SPEC §2.3 is 20 mm for the same reason).
FALLOFF_MM = 20.0


def estimate_dose(case: Case, falloff_mm: float = FALLOFF_MM) -> np.ndarray:
    """Knowledge-free dose estimate (Gy) on the case grid: every voxel gets the maximum over the
    prescription levels of Rx_i · exp(−d_i / falloff_mm), d_i its distance (mm) to the level's
    targets (CTVs and PTVs, as drawn or generated), so Rx_i inside them. Rule-11 fallback."""
    dose = np.zeros(case.grid.shape)
    for level in case.prescription.levels:
        mine = [s.mask for s in case.by_role(Role.CTV, Role.PTV) if s.rx_gy == level.dose_gy]
        if mine:
            d = distance_mm(np.logical_or.reduce(mine), case.grid.spacing, within_mm=8 * falloff_mm)
            np.maximum(dose, level.dose_gy * np.exp(-d / falloff_mm), out=dose)
    return dose


def _target_objectives(s: Structure, rx_max: float) -> list[Objective]:
    scale = {"rx": s.rx_gy, "rx_max": rx_max}
    return [Objective(s.name, kind, factor * scale[of], weight, adjustable=False)
            for kind, factor, of, weight in TARGET_OBJECTIVES[s.role]]


def _planned(case: Case, *roles: Role) -> list[Structure]:
    return [s for s in case.by_role(*roles) if s.voxels.any()]


def objectives_for(case: Case, rng: np.random.Generator,
                   reference_dose: np.ndarray | None = None) -> tuple[Objective, ...]:
    """Fixed target objectives (rule 10), then one adjustable OAR objective each (rules 9, 11).

    case: after ``apply_rules``. rng: draws the rule-11 limit factors. reference_dose: Gy on the
    case grid (a predicted or current dose); None uses ``estimate_dose(case)``.
    """
    unresolved = [s.name for s in case.by_role(Role.CTV, Role.PTV, Role.OAR) if s.planning_mask is None]
    if unresolved or not case.by_role(Role.RING):
        raise ValueError(f"run structures.apply_rules on case {case.case_id!r} first "
                         f"(unresolved: {unresolved or 'no Rings'})")
    if reference_dose is not None and np.shape(reference_dose) != case.grid.shape:
        raise InputError("reference dose", f"shape {np.shape(reference_dose)} differs from the case grid "
                         f"{case.grid.shape}", "resample the dose onto the CT grid of the case")
    rx_max = case.prescription.rx_max
    targets = sorted(_planned(case, Role.CTV, Role.PTV), key=lambda s: (-s.rx_gy, s.role is Role.PTV, s.name))
    rings = sorted(_planned(case, Role.RING), key=lambda s: -s.rx_gy)
    fixed = [o for s in targets + rings for o in _target_objectives(s, rx_max)]
    oars = sorted(_planned(case, Role.OAR), key=lambda s: (priority(s), s.name))
    dose = estimate_dose(case) if reference_dose is None and oars else reference_dose
    adjustable = []
    for s in oars:
        kind = ObjectiveKind(organ(s.name).objective)  # rule 9
        limit = float(_METRIC[kind](dose[s.voxels])) * rng.uniform(*LIMIT_FACTOR)  # rule 11
        adjustable.append(Objective(s.name, kind, limit, OAR_WEIGHT, adjustable=True))
    return tuple(fixed + adjustable)
