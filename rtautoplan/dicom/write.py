"""Everything a clinic receives for one planned case, written in one go.

``write_result(case, result, out)`` writes, in ``out``:

* ``RS_rtautoplan.dcm``: RTSTRUCT with every input ROI plus the generated PTV / Gap / Ring;
* ``RP_rtautoplan.dcm``: RTPLAN (photon IMRT, the sequenced segments) or RT Ion Plan (protons,
  carbon), referencing that RTSTRUCT;
* ``RD_rtautoplan.dcm``: RTDOSE of the plan (DoseType PHYSICAL, or EFFECTIVE for RBE-weighted
  ion dose), referencing the plan, on the grid the engine computed the dose on (``Dose.as_computed``:
  the dose grid, same frame of reference; the CT grid for a TPS that gives only that).

A sequential course (``Result.phases``, seed 004's primary + boost) gets one RTPLAN and one RTDOSE
per phase (``RP_rtautoplan_<phase>.dcm``, ``RD_rtautoplan_<phase>.dcm``) and ``RD_rtautoplan.dcm`` is
the course dose (DoseSummationType MULTI_PLAN, referencing every phase's plan); its RTSTRUCT writes
each input ROI under its input ROIName (``write_course``).

One study (the CT's), one frame of reference (the CT's), a new series per object. With
``uid_seed`` every new UID is a hash of the seed and the object, so a test, or a re-run of the
same case, writes identical identities; without it they are random.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pydicom

from rtautoplan.case import Case, Prescription
from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtionplan import write_rtionplan
from rtautoplan.dicom.rtplan import write_rtplan
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.plan import Modality, Result

RTSTRUCT_FILE, PLAN_FILE, DOSE_FILE = "RS_rtautoplan.dcm", "RP_rtautoplan.dcm", "RD_rtautoplan.dcm"


def as_drawn(case: Case) -> list:
    """The case's structures with every input ROI under its input ROIName: a plan returns the
    clinician's ROIs exactly as they came (names and contours), the planning structures beside them."""
    return [replace(s, name=s.roi_name) if s.roi_name else s for s in case.structures]


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def write_result(case: Case, result: Result, out: str | Path, uid_seed: str | None = None,
                 machine: str | None = None) -> dict[str, Path]:
    """Write the RTSTRUCT, the plan and its RTDOSE of ``result`` (the case after ``apply_rules``)
    into ``out``; returns {"rtstruct", "plan", "rtdose"} → path. A sequential course
    (``result.phases``) is written by ``write_course``."""
    if result.phases:
        return write_course(case, result, out, uid_seed, machine)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = (lambda what: None if uid_seed is None else f"{uid_seed}/{what}")
    plan = result.plan
    rtstruct = write_rtstruct(case, out / RTSTRUCT_FILE, as_drawn(case), label="rtautoplan aux",
                              uid_seed=seed("rtstruct"), unplanned=True)
    plan_path = _write_plan(case, result, out / PLAN_FILE, _sop_instance_uid(rtstruct), seed("plan"), machine)
    header = pydicom.dcmread(plan_path, stop_before_pixels=True)
    rtdose = write_rtdose(case, plan.dose.as_computed, out / DOSE_FILE,
                          plan_sop_instance_uid=str(header.SOPInstanceUID), uid_seed=seed("rtdose"),
                          plan_sop_class_uid=str(header.SOPClassUID))
    return {"rtstruct": rtstruct, "plan": plan_path, "rtdose": rtdose}


def _write_plan(case: Case, result: Result, path: Path, structure_set_uid: str, uid_seed: str | None,
                machine: str | None, label: str = "rtautoplan") -> Path:
    """The RTPLAN (photons: the sequenced segments) or RT Ion Plan of ``result`` at ``path``."""
    options = {} if machine is None else {"machine": machine}
    if result.plan.modality is Modality.PHOTON:
        if not result.delivery:
            raise ValueError("a photon plan needs its sequenced segments (Result.delivery) to be written")
        return write_rtplan(case, result.plan, result.delivery, path, structure_set_uid=structure_set_uid,
                            uid_seed=uid_seed, label=label, **options)
    return write_rtionplan(case, result.plan, path, structure_set_uid=structure_set_uid, uid_seed=uid_seed,
                           label=label, **options)


def phase_file_tag(name: str) -> str:
    """A phase name as it goes into file names: ``primary`` → ``RP_rtautoplan_primary.dcm``."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or "phase"


def write_course(case: Case, result: Result, out: str | Path, uid_seed: str | None = None,
                 machine: str | None = None) -> dict[str, Path]:
    """A sequential course (``rtautoplan.phases``): the RTSTRUCT (every input ROI under its input
    ROIName with its contours, plus the planning structures), per phase of ``case.prescription.phases``
    an RTPLAN (RTPlanLabel the phase's name, its fractions and levels) and its RTDOSE (PLAN), and the
    course RTDOSE (MULTI_PLAN, the sum, referencing every phase's plan). Returns {"rtstruct", "rtdose"
    (the course), "plan <phase>", "rtdose <phase>"} → path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = (lambda what: None if uid_seed is None else f"{uid_seed}/{what}")
    rtstruct = write_rtstruct(case, out / RTSTRUCT_FILE, as_drawn(case), label="rtautoplan aux",
                              uid_seed=seed("rtstruct"), unplanned=True)
    structure_set_uid = _sop_instance_uid(rtstruct)
    paths, plan_uids, plan_class = {"rtstruct": rtstruct}, [], ""
    for phase, phase_result in zip(case.prescription.phases, result.phases, strict=True):
        tag = phase_file_tag(phase.name)
        phase_case = replace(case, prescription=Prescription(phase.levels, phase.fractions))
        plan_path = _write_plan(phase_case, phase_result, out / f"RP_rtautoplan_{tag}.dcm", structure_set_uid,
                                seed(f"plan/{tag}"), machine, label=phase.name)
        header = pydicom.dcmread(plan_path, stop_before_pixels=True)
        plan_uids.append(str(header.SOPInstanceUID))
        plan_class = str(header.SOPClassUID)
        paths[f"plan {phase.name}"] = plan_path
        paths[f"rtdose {phase.name}"] = write_rtdose(
            phase_case, phase_result.plan.dose.as_computed, out / f"RD_rtautoplan_{tag}.dcm",
            plan_sop_instance_uid=plan_uids[-1], uid_seed=seed(f"rtdose/{tag}"), plan_sop_class_uid=plan_class)
    paths["rtdose"] = write_rtdose(case, result.plan.dose.as_computed, out / DOSE_FILE, uid_seed=seed("rtdose"),
                                   plan_sop_class_uid=plan_class, summed_plan_uids=plan_uids)
    return paths
