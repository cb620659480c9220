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
from rtautoplan.mask import Mask
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
        mine = [s.mask.to_full() for s in case.by_role(Role.CTV, Role.PTV) if s.rx_gy == level.dose_gy]
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
        limit = float(_METRIC[kind](s.voxels.take(dose))) * rng.uniform(*LIMIT_FACTOR)  # rule 11
        adjustable.append(Objective(s.name, kind, limit, OAR_WEIGHT, adjustable=True))
    return tuple(fixed + adjustable)


# Goals → objectives (issue 12). A goal's bound is aimed at with a margin (GOAL_MARGIN), so that
# normalisation and leaf sequencing do not push a met objective over its goal; must-goals
# (priority 1) weigh GOAL_WEIGHT[1], desired ones GOAL_WEIGHT[2] (an OAR's rule-11 objective weighs 1).
GOAL_MARGIN = 0.95
LOWER_AIM = 1.02  # a target's lower bound at or above its Rx (D99 ≥ Rx) is aimed 2 % above
GOAL_WEIGHT = {1: 10.0, 2: 0.2}
NEAR_MAX_PERCENT = 2.0  # Dx% with x ≤ 2 (and D0.03cc-like volumes) is aimed at as a maximum


def goal_objectives(case: Case, goals) -> tuple[Objective, ...]:
    """Fixed objectives that pursue ``goals`` (``rtautoplan.case.Goal``) on a case after ``apply_rules``.

    OAR upper bounds: near-maximum (Dmax, D≤2%, D≤0.1cc) → DMAX; Dmean → DMEAN; Dx% / Dx cc →
    DVH_MAX (at most x above the limit); Vx Gy ≤ y → DVH_MAX at x Gy, volume y. Target lower bounds Dx% ≥ L
    → DVH_MIN (aimed at L / GOAL_MARGIN up to the target's Rx: the coverage the normalisation then
    needs no scaling for); target upper bounds Dx% ≤ U → DVH_MAX, aimed no lower than LOWER_AIM × Rx
    (a maximum under the coverage aim would fight it; TG-119's multi-target D10 ≤ 53 Gy at Rx 50 Gy).
    Goals on the External, on ROIs never planned on, or lower bounds on OARs are measured by the gate
    but not optimised.
    """
    from rtautoplan.goals import find_structure

    out = []
    for goal in goals:
        s = find_structure(case, goal.roi)
        if s is None or s.role not in (Role.OAR, Role.CTV, Role.PTV, Role.GTV) or not s.voxels.any():
            continue
        weight = GOAL_WEIGHT.get(goal.priority, 1.0)
        volume_cm3 = s.mask.count * case.grid.voxel_volume_cm3
        fraction = _goal_fraction(goal, volume_cm3)
        if goal.upper is not None:
            limit = goal.upper * GOAL_MARGIN
            if s.role.is_target and s.rx_gy:  # never below the target's own coverage aim (as the goal rounds)
                limit = max(limit, min(goal.upper, LOWER_AIM * s.rx_gy))
            if goal.metric == "Dmean":
                out.append(Objective(s.name, ObjectiveKind.DMEAN, limit, weight, adjustable=False))
            elif goal.metric.startswith("V"):
                dose = float(goal.metric[1:-2]) * GOAL_MARGIN
                kind = ObjectiveKind.DVH_MAX if fraction > 0 else ObjectiveKind.DMAX
                out.append(Objective(s.name, kind, dose, weight, volume=fraction or None, adjustable=False))
            elif goal.metric in ("Dmax",) or fraction * 100.0 <= NEAR_MAX_PERCENT:
                out.append(Objective(s.name, ObjectiveKind.DMAX, limit, weight, adjustable=False))
            elif goal.metric != "Dmin":
                out.append(Objective(s.name, ObjectiveKind.DVH_MAX, limit, weight, volume=fraction, adjustable=False))
        if goal.lower is not None and s.role.is_target and goal.metric.startswith("D") and goal.metric != "Dmean":
            volume = 1.0 if goal.metric == "Dmin" else fraction
            aim = max(goal.lower * LOWER_AIM, min(goal.lower / GOAL_MARGIN, s.rx_gy)) if s.rx_gy else goal.lower
            out.append(Objective(s.name, ObjectiveKind.DVH_MIN, aim, weight, volume=volume, adjustable=False))
    return tuple(out)


def _goal_fraction(goal, volume_cm3: float) -> float:
    """The volume (fraction 0–1 of the structure) a Dx% / Dx cc / Vx goal is about."""
    metric = goal.metric
    if metric.startswith("V"):
        return min(1.0, goal.upper / 100.0 if goal.unit == "%" else goal.upper / max(volume_cm3, 1e-9)) \
            if goal.upper is not None else 1.0
    if metric.endswith("%"):
        return float(metric[1:-1]) / 100.0
    if metric.endswith("cc"):
        return min(1.0, float(metric[1:-2]) / max(volume_cm3, 1e-9))
    return 0.0


HOTSPOT_AIM = 1.03  # × Rx: where the hot-spot objectives aim, below the gate's 1.07 (normalisation headroom)
HOTSPOT_WEIGHT = 10.0
EVAL_SUFFIX = "_Eval"


def hotspot_regions(case: Case) -> Case:
    """``case`` with, for every CTV/PTV of a lower level of a simultaneous integrated boost, a
    planning-only region ``z<target>_Eval`` (Role.CONTROL): the target outside the higher levels'
    targets expanded by the gate's fall-off distance, where the gate holds it to its own Rx
    (``rtautoplan.gate.hotspots``). A previous run's region of the same name (read back as a
    z-structure) is replaced."""
    from rtautoplan.gate import lower_level_region

    regions = []
    for s in case.by_role(Role.CTV, Role.PTV):
        region = lower_level_region(case, s)
        if region is not None and region.any():
            region = Mask.from_full(region)
            regions.append(Structure(f"z{s.name}{EVAL_SUFFIX}", region, Role.CONTROL, level=None, rx_gy=s.rx_gy,
                                     color=(255, 160, 160), planning_mask=region))
    names = {r.name for r in regions}
    kept = tuple(s for s in case.structures if s.name not in names)
    return case.with_structures(kept + tuple(regions))


def hotspot_objectives(case: Case) -> tuple[Objective, ...]:
    """Fixed objectives for the clinical gate's hot-spot rules (``rtautoplan.gate``): each highest-level
    CTV/PTV and each lower level's ``_Eval`` region at most 2 % above HOTSPOT_AIM × its Rx, and the
    Gaps and Rings (the dose just outside the targets) nowhere above HOTSPOT_AIM × Rx_max. The Gap has
    no objective in SPEC §2.3; a 5 mm photon Gap without one carried hn01's 78 Gy maximum."""
    rx_max = case.prescription.rx_max
    top = [s for s in _planned(case, Role.CTV, Role.PTV) if s.rx_gy is not None and s.rx_gy >= rx_max - 1e-6]
    out = [Objective(s.name, ObjectiveKind.DVH_MAX, HOTSPOT_AIM * s.rx_gy, HOTSPOT_WEIGHT, volume=0.02,
                     adjustable=False) for s in top + _planned(case, Role.CONTROL) if s.rx_gy is not None]
    out += [Objective(s.name, ObjectiveKind.DMAX, HOTSPOT_AIM * rx_max, HOTSPOT_WEIGHT, adjustable=False)
            for s in _planned(case, Role.GAP, Role.RING)]
    return tuple(out)
