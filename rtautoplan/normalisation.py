"""Normalisation, as every TPS does it: the final dose is scaled so that the prescription's rule holds.

Default rule (``Normalisation()``): D95% of the highest level's PTV equals its Rx; for a carbon
plan (seed 003 optimises the CTVs only, its PTVs get no objective) and where that level has no PTV,
D95% of its CTV: scaling a carbon plan to its cold PTV made hn01's CTVs 137 % of Rx. The default reads the PTV as planned (its
planning mask: without the voxels the overlap rules gave to level-1 OARs and to other levels'
CTVs, a clinic's "PTV_eval"), the volume the optimiser was asked to cover; a ROI named in
``prescription.json`` is read whole. ``prescription.json`` may name another ROI,
metric and dose, or ``"none"``. Dose is linear in the beamlet/spot weights, so scaling the dose is
scaling the plan: weights (fluence or MU) and dose are scaled together, before scoring and export.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rtautoplan.case import Case, Normalisation, Role, Structure
from rtautoplan.errors import InputError
from rtautoplan.plan import Modality, Plan


@dataclass(frozen=True)
class Normalised:
    """What normalisation did: ``metric`` of ``roi`` was ``before_gy`` and is ``dose_gy`` after ×``factor``."""

    roi: str
    metric: str
    dose_gy: float
    before_gy: float
    factor: float

    def __str__(self) -> str:
        return (f"{self.roi} {self.metric} = {self.dose_gy:g} Gy (was {self.before_gy:.2f} Gy; "
                f"dose and weights ×{self.factor:.4f})")


def target_of(case: Case, rule: Normalisation, ctv_first: bool = False) -> tuple[Structure, float]:
    """The structure and the dose (Gy) the rule normalises to; by default the highest level's PTV, its
    CTV with ``ctv_first`` (a plan optimised on CTVs: carbon, seed 003) or where no PTV exists."""
    from rtautoplan.goals import find_structure

    if rule.roi:
        s = find_structure(case, rule.roi)
        if s is None:
            raise InputError("prescription.json \"normalisation\"", f"names ROI {rule.roi!r}, which the case lacks",
                             "Name a target of the case, or leave \"roi\" out (D95% of the highest PTV = Rx)")
        dose = rule.dose_gy if rule.dose_gy is not None else s.rx_gy
        if dose is None:
            raise InputError("prescription.json \"normalisation\"", f"{rule.roi!r} has no prescription dose",
                             'Give "dose_gy" in "normalisation"')
        return s, float(dose)
    rx = case.prescription.rx_max
    top = [s for s in case.by_role(Role.PTV, Role.CTV) if s.rx_gy is not None and abs(s.rx_gy - rx) < 1e-6]
    if not top:
        raise InputError("prescription", f"no CTV or PTV carries the highest level ({rx:g} Gy)",
                         "Name the level's target in \"levels\" of prescription.json")
    first = Role.CTV if ctv_first and any(s.role is Role.CTV for s in top) else Role.PTV
    top.sort(key=lambda s: (s.role is not first, s.name))
    return top[0], float(rule.dose_gy if rule.dose_gy is not None else rx)


def normalise(case: Case, plan: Plan, rule: Normalisation | None = None) -> tuple[Plan, Normalised | None]:
    """``plan`` with dose and weights scaled so that ``rule`` (default: the case's) holds; None
    when the rule is "none"."""
    from rtautoplan.goals import metric_value

    rule = rule or case.prescription.normalisation
    if rule.metric == "none":
        return plan, None
    s, dose_gy = target_of(case, rule, ctv_first=plan.modality is Modality.CARBON)
    voxels = s.mask if rule.roi else s.voxels
    before = metric_value(rule.metric, "Gy", plan.dose.gy, voxels, case.grid.voxel_volume_cm3)
    if not before > 0:
        raise InputError(f"normalisation to {s.name} {rule.metric}", "the plan gives this target no dose",
                         "Check the beams reach the target (isocentre, CT, adapter)")
    factor = dose_gy / before
    weights = tuple(np.asarray(w) * factor for w in plan.weights)
    scaled = replace(plan, weights=weights, dose=plan.dose.scaled(factor))
    return scaled, Normalised(s.name, rule.metric, dose_gy, float(before), float(factor))
