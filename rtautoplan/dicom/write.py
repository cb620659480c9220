"""Everything a clinic receives for one planned case, written in one go.

``write_result(case, result, out)`` writes, in ``out``:

* ``RS_rtautoplan.dcm``: RTSTRUCT with every input ROI plus the generated PTV / Gap / Ring;
* ``RP_rtautoplan.dcm``: RTPLAN (photon IMRT, the sequenced segments) or RT Ion Plan (protons,
  carbon), referencing that RTSTRUCT;
* ``RD_rtautoplan.dcm``: RTDOSE of the plan (DoseType PHYSICAL, or EFFECTIVE for RBE-weighted
  ion dose), referencing the plan.

One study (the CT's), one frame of reference (the CT's), a new series per object. With
``uid_seed`` every new UID is a hash of the seed and the object, so a test, or a re-run of the
same case, writes identical identities; without it they are random.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from rtautoplan.case import Case
from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtionplan import write_rtionplan
from rtautoplan.dicom.rtplan import write_rtplan
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.plan import Modality, Result

RTSTRUCT_FILE, PLAN_FILE, DOSE_FILE = "RS_rtautoplan.dcm", "RP_rtautoplan.dcm", "RD_rtautoplan.dcm"


def _sop_instance_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def write_result(case: Case, result: Result, out: str | Path, uid_seed: str | None = None,
                 machine: str | None = None) -> dict[str, Path]:
    """Write the RTSTRUCT, the plan and its RTDOSE of ``result`` (the case after ``apply_rules``)
    into ``out``; returns {"rtstruct", "plan", "rtdose"} → path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = (lambda what: None if uid_seed is None else f"{uid_seed}/{what}")
    plan = result.plan
    rtstruct = write_rtstruct(case, out / RTSTRUCT_FILE, label="rtautoplan aux", uid_seed=seed("rtstruct"))
    structure_set_uid = _sop_instance_uid(rtstruct)
    options = {} if machine is None else {"machine": machine}
    if plan.modality is Modality.PHOTON:
        if not result.delivery:
            raise ValueError("a photon plan needs its sequenced segments (Result.delivery) to be written")
        plan_path = write_rtplan(case, plan, result.delivery, out / PLAN_FILE, structure_set_uid=structure_set_uid,
                                 uid_seed=seed("plan"), **options)
    else:
        plan_path = write_rtionplan(case, plan, out / PLAN_FILE, structure_set_uid=structure_set_uid,
                                    uid_seed=seed("plan"), **options)
    header = pydicom.dcmread(plan_path, stop_before_pixels=True)
    rtdose = write_rtdose(case, plan.dose, out / DOSE_FILE, plan_sop_instance_uid=str(header.SOPInstanceUID),
                          uid_seed=seed("rtdose"), plan_sop_class_uid=str(header.SOPClassUID))
    return {"rtstruct": rtstruct, "plan": plan_path, "rtdose": rtdose}
