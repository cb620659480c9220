"""PS3.3 modules shared by RT Plan (A.20) and RT Ion Plan (A.49): RT General Plan (C.8.8.9),
RT Prescription (C.8.8.10), RT Fraction Scheme (C.8.8.13), RT Patient Setup (C.8.8.12) and
Approval (C.8.8.16), plus the beam and control-point attributes both beam modules carry
(C.8.8.14 RT Beams, C.8.8.25 RT Ion Beams).

A plan written by rtautoplan is always UNAPPROVED: a physicist reviews and approves it in the TPS.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import RTStructureSetStorage

from rtautoplan.case import Case
from rtautoplan.dicom import modules
from rtautoplan.dicom.modules import format_ds
from rtautoplan.dicom.uid import new_uid
from rtautoplan.plan import Beam

RTPLAN_SERIES_NUMBER = 4
PATIENT_SETUP_NUMBER = 1
FRACTION_GROUP_NUMBER = 1


def item(**attributes) -> Dataset:
    """A sequence item with the given DICOM keywords."""
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def uid_maker(uid_seed: str | None):
    """``make(what) -> UID``: reproducible per ``what`` with a seed, random without."""
    return (lambda what: new_uid(f"{uid_seed}/{what}")) if uid_seed is not None else (lambda what: new_uid())


def new_plan_dataset(case: Case, sop_class_uid: str, sop_instance_uid: str, series_instance_uid: str, *,
                     label: str, structure_set_uid: str, when: _dt.datetime) -> Dataset:
    """A plan with Patient, General Study, RT Series, Frame of Reference, General Equipment, SOP
    Common and RT General Plan filled in."""
    refs = case.refs
    missing = [n for n in ("study_instance_uid", "frame_of_reference_uid") if not getattr(refs, n)]
    if missing:
        raise ValueError(f"case.refs lacks {', '.join(missing)}; fill them with rtautoplan.dicom.uid.complete_refs")
    if not structure_set_uid:
        raise ValueError("structure_set_uid is required: RTPlanGeometry PATIENT references the RTSTRUCT")
    ds = modules.new_dataset(sop_class_uid, sop_instance_uid, when)
    modules.add_patient(ds, refs)
    modules.add_general_study(ds, refs)
    modules.add_rt_series(ds, "RTPLAN", series_instance_uid, RTPLAN_SERIES_NUMBER,
                          description=f"rtautoplan {case.case_id}"[:64], when=when)
    modules.add_frame_of_reference(ds, refs)
    modules.add_general_equipment(ds)
    add_rt_general_plan(ds, label, structure_set_uid, when)
    return ds


def add_rt_general_plan(ds: Dataset, label: str, structure_set_uid: str, when: _dt.datetime) -> None:
    """RT General Plan (C.8.8.9): geometry PATIENT, on the structure set ``structure_set_uid``."""
    ds.RTPlanLabel = label[:16]
    ds.RTPlanName = label[:64]
    ds.RTPlanDate = when.strftime("%Y%m%d")
    ds.RTPlanTime = when.strftime("%H%M%S")
    ds.PlanIntent = "CURATIVE"
    ds.RTPlanGeometry = "PATIENT"
    ds.ReferencedStructureSetSequence = [item(ReferencedSOPClassUID=RTStructureSetStorage,
                                              ReferencedSOPInstanceUID=structure_set_uid)]


def add_rt_prescription(ds: Dataset, case: Case) -> None:
    """RT Prescription (C.8.8.10): one SITE dose reference per prescription level (Gy, whole course);
    SITE, not VOLUME, so that no ROI number of the structure set is assumed."""
    ds.PrescriptionDescription = f"{case.prescription.fractions} fractions"
    ds.DoseReferenceSequence = [
        item(DoseReferenceNumber=n, DoseReferenceStructureType="SITE", DoseReferenceDescription=level.target[:64],
             DoseReferenceType="TARGET", TargetPrescriptionDose=format_ds(level.dose_gy))
        for n, level in enumerate(case.prescription.levels, start=1)]


def add_fraction_scheme(ds: Dataset, case: Case, beam_metersets: Sequence[float]) -> None:
    """RT Fraction Scheme (C.8.8.13): one fraction group, every beam with its meterset per fraction
    (MU)."""
    ds.FractionGroupSequence = [item(
        FractionGroupNumber=FRACTION_GROUP_NUMBER,
        NumberOfFractionsPlanned=int(case.prescription.fractions),
        NumberOfBeams=len(beam_metersets),
        NumberOfBrachyApplicationSetups=0,
        ReferencedBeamSequence=[item(ReferencedBeamNumber=n, BeamMeterset=format_ds(mu))
                                for n, mu in enumerate(beam_metersets, start=1)],
    )]


def add_patient_setup(ds: Dataset, case: Case) -> None:
    """RT Patient Setup (C.8.8.12): the patient position of the input CT, isocentric setup."""
    ds.PatientSetupSequence = [item(PatientSetupNumber=PATIENT_SETUP_NUMBER,
                                    PatientPosition=case.refs.patient_position, SetupTechnique="ISOCENTRIC")]


def add_approval(ds: Dataset) -> None:
    """Approval (C.8.8.16): UNAPPROVED (review date, time and name are only for APPROVED/REJECTED)."""
    ds.ApprovalStatus = "UNAPPROVED"


def beam_header(number: int, beam: Beam, machine: str, beam_type: str = "STATIC") -> Dataset:
    """The attributes an RT Beams and an RT Ion Beams item share (C.8.8.14.1, C.8.8.25.1)."""
    return item(BeamNumber=number, BeamName=beam.name[:64], BeamType=beam_type, TreatmentMachineName=machine[:64],
                PrimaryDosimeterUnit="MU", TreatmentDeliveryType="TREATMENT",
                ReferencedPatientSetupNumber=PATIENT_SETUP_NUMBER)


def add_device_counts(beam_item: Dataset, *keywords: str) -> None:
    """Number of wedges, compensators, boli, blocks … (each 0: none is used)."""
    for keyword in ("NumberOfWedges", "NumberOfCompensators", "NumberOfBoli", "NumberOfBlocks", *keywords):
        setattr(beam_item, keyword, 0)


def add_first_control_point_geometry(cp: Dataset, beam: Beam) -> None:
    """Gantry, collimator (beam-limiting device) and couch angles (degrees, IEC 61217), table-top
    positions (unknown: empty) and the isocentre (mm, patient coordinates) of a beam's first control
    point; none rotates. Table-top eccentric (photon) or pitch and roll (ion) angles are the caller's."""
    cp.GantryAngle = format_ds(beam.gantry_deg % 360.0)
    cp.GantryRotationDirection = "NONE"
    cp.BeamLimitingDeviceAngle = format_ds(beam.collimator_deg % 360.0)
    cp.BeamLimitingDeviceRotationDirection = "NONE"
    cp.PatientSupportAngle = format_ds(beam.couch_deg % 360.0)
    cp.PatientSupportRotationDirection = "NONE"
    cp.TableTopVerticalPosition = ""
    cp.TableTopLongitudinalPosition = ""
    cp.TableTopLateralPosition = ""
    cp.IsocenterPosition = [format_ds(v) for v in beam.isocenter_mm]
