"""The prescription an RTPLAN in the case folder states, for a case without prescription.json levels.

A TPS export often holds the plan beside the CT and the RTSTRUCT; its DoseReferenceSequence carries the
prescribed dose and its FractionGroupSequence the fractions. A dose reference becomes a level only when it
names a ROI of the RTSTRUCT: DoseReferenceStructureType VOLUME with its ReferencedROINumber (PS3.3 C.8.8.10),
or SITE (Eclipse's primary reference point) whose DoseReferenceDescription is exactly the ROIName of a ROI
typed PTV or CTV (RTROIInterpretedType), as Eclipse names a reference point after its target. A SITE named
otherwise (e.g. 'Breast' beside a whole breast typed GTV and a tumour bed typed CTV) names a site, not a
volume, and a POINT or COORDINATES reference is a point dose: neither is matched. TargetPrescriptionDose (300A,0026) is the
course's dose in Gy (PS3.3 C.8.8.10). Whatever is read is stated (``PlanPrescription.source``); what cannot be
tied to a ROI is listed for the error message, never guessed. docs/decisions.md, "Held-out real exports".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom

from rtautoplan.dicom.prescription import CONVENTIONAL_FRACTION_GY, PRESCRIPTION_FILE, PrescriptionFile
from rtautoplan.errors import InputError

log = logging.getLogger(__name__)

PLAN_MODALITIES = ("RTPLAN", "RTIONPLAN")
_VOLUME_TYPES = ("VOLUME", "SITE")  # a volume or a site: a reference that names no ROI must be stated
_SITE_TARGET_TYPES = ("PTV", "CTV")  # a SITE reference named exactly like a ROI of these types is its level


@dataclass(frozen=True)
class PlanPrescription:
    """What one RTPLAN prescribes: levels (ROIName, Gy), fractions, the target volume or site dose
    references that name no ROI, and the target point doses (each described with its dose, for messages)."""

    path: Path
    levels: tuple[tuple[str, float], ...]
    fractions: int | None
    unmatched: tuple[str, ...]
    points: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()  # how each level was read: "DoseReference 1 'PROS' (SITE) → ROI 'PROS'"

    @property
    def source(self) -> str:
        """One line: where the prescription came from."""
        levels = ", ".join(f"{dose:g} Gy to '{roi}'" for roi, dose in self.levels)
        fractions = f" in {self.fractions} fractions" if self.fractions else ""
        return f"RTPLAN {self.path.name}: {levels}{fractions}; {'; '.join(self.matched)}"


def complete_from_plan(rx_file: PrescriptionFile, plans: dict[Path, pydicom.Dataset], rtstruct: pydicom.Dataset,
                       frame_of_reference_uid: str) -> tuple[PrescriptionFile, str]:
    """prescription.json, completed from the RTPLAN drawn on ``rtstruct`` when it gives no "levels"; and one
    line saying where the prescription comes from. InputError when the RTPLAN prescribes doses of which none
    names a ROI (target names would otherwise replace its prescription without a word)."""
    if rx_file.levels:
        return rx_file, rx_file.path
    fractions = (f"{rx_file.fractions} fractions from {rx_file.path}" if rx_file.fractions
                 else f"fractions = Rx / {CONVENTIONAL_FRACTION_GY:g} Gy")
    found = plan_for(plans, str(rtstruct.get("SOPInstanceUID", "")), frame_of_reference_uid)
    if found is None:
        return rx_file, f"target ROI names, {fractions}"
    plan = read_plan_prescription(found[0], rtstruct)
    if not plan.levels and (plan.unmatched or plan.points):
        in_plan = f" ({plan.fractions} in the RTPLAN)" if plan.fractions else ""
        raise InputError(f"RTPLAN {plan.path}", f"prescribes {'; '.join(plan.unmatched + plan.points)}, which names "
                                                "no ROI of the RTSTRUCT",
                         f'Write the prescription in {PRESCRIPTION_FILE}: "levels": [{{"target": "<target ROIName>", '
                         f'"dose_gy": ...}}] and "fractions"{in_plan}')
    if not plan.levels:
        return rx_file, f"target ROI names, {fractions}; {plan.path.name} states no target dose"
    ignored = [f"{dose:g} Gy to ROI '{roi}'" for roi, dose in plan.levels if roi in rx_file.ignore]
    if ignored:
        raise InputError(f"RTPLAN {plan.path}", f"prescribes {', '.join(ignored)}, which {rx_file.path} ignores",
                         f'Write the prescription to plan in {PRESCRIPTION_FILE}: "levels": [{{"target": '
                         f'"<target ROIName>", "dose_gy": ...}}] and "fractions"')
    for text in plan.unmatched:
        log.warning("RTPLAN %s also prescribes %s, which names no ROI: not planned", plan.path, text)
    for text in plan.points:
        log.info("RTPLAN %s: %s is a point dose, not a level", plan.path, text)
    source = plan.source
    if rx_file.fractions and rx_file.fractions != plan.fractions:
        source += f"; {rx_file.fractions} fractions from {rx_file.path}, not the RTPLAN's {plan.fractions or 'none'}"
        log.warning("%s: %s", plan.path, source)
    rx_file = replace(rx_file, levels=plan.levels, fractions=rx_file.fractions or plan.fractions,
                      path=f"RTPLAN {plan.path}")
    return rx_file, source


def plan_for(plans: dict[Path, pydicom.Dataset], rtstruct_sop: str, frame_of_reference_uid: str
             ) -> tuple[Path, pydicom.Dataset] | None:
    """The one RTPLAN drawn on this RTSTRUCT (ReferencedStructureSetSequence, or without one the same
    FrameOfReferenceUID); None when there is none; InputError naming them when there are several."""
    matching = {path: ds for path, ds in plans.items() if _references(ds, rtstruct_sop, frame_of_reference_uid)}
    for path in sorted(set(plans) - set(matching)):
        log.warning("RTPLAN %s references another structure set; its prescription is not used", path)
    if len(matching) > 1:
        listed = ", ".join(str(p) for p in sorted(matching))
        raise InputError(listed, f"{len(matching)} RTPLANs reference this RTSTRUCT, each with its own prescription",
                         'Keep the one RTPLAN to plan like in the case folder, or write "levels" and "fractions" '
                         "in prescription.json")
    return next(iter(matching.items()), None)


def _references(ds: pydicom.Dataset, rtstruct_sop: str, frame_of_reference_uid: str) -> bool:
    refs = [str(item.get("ReferencedSOPInstanceUID", "")) for item in ds.get("ReferencedStructureSetSequence", [])]
    if refs:
        return rtstruct_sop in refs
    return str(ds.get("FrameOfReferenceUID", "")) == frame_of_reference_uid


def read_plan_prescription(path: Path, rtstruct: pydicom.Dataset) -> PlanPrescription:
    """The levels and fractions ``path`` (an RTPLAN or RT Ion Plan) prescribes on ``rtstruct``'s ROIs."""
    ds = pydicom.dcmread(path, force=True)
    where = f"RTPLAN {path}"
    roi_names = {int(roi.ROINumber): str(roi.ROIName) for roi in rtstruct.get("StructureSetROISequence", [])
                 if roi.get("ROINumber") is not None}
    typed = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").upper()
             for o in rtstruct.get("RTROIObservationsSequence", []) if o.get("ReferencedROINumber") is not None}
    site_targets = {name: name for number, name in roi_names.items() if typed.get(number) in _SITE_TARGET_TYPES}
    levels: dict[str, float] = {}
    how: list[str] = []
    unmatched, points = [], []
    for item in ds.get("DoseReferenceSequence", []):
        if str(item.get("DoseReferenceType", "")).upper() != "TARGET" or item.get("TargetPrescriptionDose") is None:
            continue
        dose = float(item.TargetPrescriptionDose)
        kind = str(item.get("DoseReferenceStructureType", "")).upper()
        description = str(item.get("DoseReferenceDescription", "") or "")
        label = f"DoseReference {item.get('DoseReferenceNumber', '?')} '{description}' ({kind or 'no type'})"
        roi = None
        if kind == "VOLUME" and item.get("ReferencedROINumber") is not None:
            roi = roi_names.get(int(item.ReferencedROINumber))
        elif kind == "SITE":
            roi = site_targets.get(description)
        if roi is None or dose <= 0:
            (unmatched if kind in _VOLUME_TYPES else points).append(f"{label}: {dose:g} Gy")
            continue
        if roi in levels and abs(levels[roi] - dose) > 1e-6:
            raise InputError(where, f"prescribes both {levels[roi]:g} Gy and {dose:g} Gy to ROI '{roi}'",
                             'Write the intended "levels" in prescription.json')
        levels[roi] = dose
        how.append(f"{label} → ROI '{roi}'")
    return PlanPrescription(path, tuple(levels.items()), _fractions(ds, where), tuple(unmatched), tuple(points),
                            tuple(how))


def _fractions(ds: pydicom.Dataset, where: str) -> int | None:
    """NumberOfFractionsPlanned of the plan's one fraction group; InputError for several (phases)."""
    groups = list(ds.get("FractionGroupSequence", []))
    if len(groups) > 1:
        raise InputError(where, f"has {len(groups)} fraction groups (a sequential course?)",
                         'State the course in prescription.json: "levels" and "fractions", or "phases"')
    value = groups[0].get("NumberOfFractionsPlanned") if groups else None
    return int(value) if value is not None and int(value) > 0 else None
