"""RT Plan Storage (PS3.3 A.20), photon IMRT step-and-shoot: writing the sequenced segments of a
plan, and reading them back.

Each beam is BeamType STATIC (step-and-shoot: the leaves move only while the beam is off) with one
control-point pair per segment (C.8.8.14.5): CP 2s holds the segment's MLCX leaf positions and the
cumulative meterset weight before it, CP 2s+1 the same leaves and the weight after it; the weight
between CP 2s+1 and CP 2s+2 is zero, which is when the leaves travel. Cumulative weights run from 0
to FinalCumulativeMetersetWeight = 1. Jaws (ASYMX, ASYMY) are set once, at CP 0.

Meterset calibration: the photon model's weights are MU (1 unit = 1 cGy at d_max of a 10 × 10 cm²
field at SAD, ``physics.photon``) over the whole course, so a beam's BeamMeterset (MU per fraction)
is the fluence its segments deliver divided by the number of fractions. The MU are the ones of our
pencil-beam model: a physicist recomputes them on the machine's commissioned model in the TPS.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.uid import RTPlanStorage

from rtautoplan.case import Case
from rtautoplan.dicom import modules, plan_modules as pm
from rtautoplan.dicom.modules import format_ds
from rtautoplan.errors import InputError
from rtautoplan.physics.geometry import SAD_MM
from rtautoplan.physics.sequencing import SequencedBeam
from rtautoplan.plan import Beam, Modality, Plan

NOMINAL_ENERGY_MV = 6.0


@dataclass(frozen=True, eq=False)
class PlanBeam:
    """One beam read from an RTPLAN: geometry (degrees, mm), leaf-pair boundaries (n_pairs + 1,),
    X1/X2 leaf positions per segment (n_segments, n_pairs), jaws (2,), the relative meterset weight
    of each segment (sums to 1) and the beam meterset (MU per fraction)."""

    name: str
    gantry_deg: float
    collimator_deg: float
    couch_deg: float
    isocenter_mm: tuple[float, float, float]
    leaf_boundaries_mm: np.ndarray
    left_mm: np.ndarray
    right_mm: np.ndarray
    jaw_x_mm: np.ndarray
    jaw_y_mm: np.ndarray
    segment_weights: np.ndarray
    meterset_mu: float


@dataclass(frozen=True, eq=False)
class PlanContents:
    """What ``read_rtplan`` returns: the plan's identity, fractions and beams."""

    sop_instance_uid: str
    machine: str
    fractions: int
    beams: tuple[PlanBeam, ...]


def write_rtplan(case: Case, plan: Plan, sequenced: Sequence[SequencedBeam], path: str | Path, *,
                 structure_set_uid: str, machine: str = "RTAP_LINAC", uid_seed: str | None = None,
                 label: str = "rtautoplan") -> Path:
    """Write the step-and-shoot ``sequenced`` beams of photon ``plan`` as an RTPLAN at ``path``, on
    the study and frame of reference of ``case.refs``, referencing the RTSTRUCT
    ``structure_set_uid``. uid_seed makes the SOP instance and series UIDs reproducible."""
    if plan.modality is not Modality.PHOTON:
        raise ValueError(f"write_rtplan writes photon plans; use write_rtionplan for {plan.modality.value}")
    if len(sequenced) != len(plan.beams):
        raise ValueError(f"{len(sequenced)} sequenced beams for the plan's {len(plan.beams)} beams")
    for beam, seq in zip(plan.beams, sequenced):
        if seq.n_segments == 0:
            raise ValueError(f"beam {beam.name!r} delivers no fluence: remove it from the plan before writing")
    when = _dt.datetime.now()
    make = pm.uid_maker(uid_seed)
    ds = pm.new_plan_dataset(case, RTPlanStorage, make("rtplan"), make("rtplan-series"), label=label,
                             structure_set_uid=structure_set_uid, when=when)
    pm.add_rt_prescription(ds, case)
    fractions = int(case.prescription.fractions)
    metersets = [float(seq.segment_fluence.sum()) / fractions for seq in sequenced]
    pm.add_fraction_scheme(ds, case, metersets)
    ds.BeamSequence = [_beam_item(n, beam, seq, machine)
                       for n, (beam, seq) in enumerate(zip(plan.beams, sequenced), start=1)]
    pm.add_patient_setup(ds, case)
    pm.add_approval(ds)
    return modules.save(ds, path)


def _beam_item(number: int, beam: Beam, seq: SequencedBeam, machine: str):
    """One BeamSequence item (C.8.8.14.1)."""
    item = pm.beam_header(number, beam, machine)
    item.RadiationType = "PHOTON"
    item.SourceAxisDistance = format_ds(SAD_MM)
    n_pairs = seq.leaf_boundaries_mm.size - 1
    item.BeamLimitingDeviceSequence = [
        pm.item(RTBeamLimitingDeviceType="ASYMX", NumberOfLeafJawPairs=1),
        pm.item(RTBeamLimitingDeviceType="ASYMY", NumberOfLeafJawPairs=1),
        pm.item(RTBeamLimitingDeviceType="MLCX", NumberOfLeafJawPairs=n_pairs,
                LeafPositionBoundaries=[format_ds(v) for v in seq.leaf_boundaries_mm]),
    ]
    pm.add_device_counts(item)
    cumulative = np.concatenate([[0.0], np.cumsum(seq.meterset_weights)])
    cumulative[-1] = 1.0
    item.FinalCumulativeMetersetWeight = "1"
    item.NumberOfControlPoints = 2 * seq.n_segments
    item.ControlPointSequence = [_control_point(2 * s + k, beam, seq, s, cumulative[s + k])
                                 for s in range(seq.n_segments) for k in (0, 1)]
    return item


def _control_point(index: int, beam: Beam, seq: SequencedBeam, segment: int, cumulative: float):
    """Control point ``index`` (C.8.8.14.5) of segment ``segment``."""
    leaves = np.concatenate([seq.left_mm[segment], seq.right_mm[segment]])
    mlc = pm.item(RTBeamLimitingDeviceType="MLCX", LeafJawPositions=[format_ds(v) for v in leaves])
    cp = pm.item(ControlPointIndex=index)
    if index == 0:
        cp.NominalBeamEnergy = format_ds(NOMINAL_ENERGY_MV)
        cp.BeamLimitingDevicePositionSequence = [
            pm.item(RTBeamLimitingDeviceType="ASYMX", LeafJawPositions=[format_ds(v) for v in seq.jaw_x_mm]),
            pm.item(RTBeamLimitingDeviceType="ASYMY", LeafJawPositions=[format_ds(v) for v in seq.jaw_y_mm]),
            mlc]
        pm.add_first_control_point_geometry(cp, beam)
        cp.TableTopEccentricAngle, cp.TableTopEccentricRotationDirection = format_ds(0.0), "NONE"
    else:
        cp.BeamLimitingDevicePositionSequence = [mlc]
    cp.CumulativeMetersetWeight = format_ds(cumulative)
    return cp


def read_rtplan(path: str | Path) -> PlanContents:
    """The beams, segments and metersets of a photon RTPLAN (as ``write_rtplan`` writes them)."""
    ds = pydicom.dcmread(path)
    where = f"RTPLAN {path}"
    if ds.get("SOPClassUID") != RTPlanStorage:
        raise InputError(where, f"SOPClassUID is {ds.get('SOPClassUID')}, not RT Plan Storage", "pass a photon RTPLAN")
    group = ds.FractionGroupSequence[0]
    metersets = {int(r.ReferencedBeamNumber): float(r.BeamMeterset) for r in group.ReferencedBeamSequence}
    beams = tuple(_read_beam(b, metersets.get(int(b.BeamNumber), 0.0), where) for b in ds.BeamSequence)
    machine = str(ds.BeamSequence[0].get("TreatmentMachineName", "")) if beams else ""
    return PlanContents(str(ds.SOPInstanceUID), machine, int(group.NumberOfFractionsPlanned), beams)


def _positions(cp, device: str) -> np.ndarray | None:
    for d in cp.get("BeamLimitingDevicePositionSequence", []):
        if d.RTBeamLimitingDeviceType == device:
            return np.asarray(d.LeafJawPositions, float)
    return None


def _read_beam(b, meterset: float, where: str) -> PlanBeam:
    devices = {d.RTBeamLimitingDeviceType: d for d in b.BeamLimitingDeviceSequence}
    if "MLCX" not in devices:
        raise InputError(where, f"beam {b.BeamName!r} has no MLCX", "export the plan with its MLC")
    boundaries = np.asarray(devices["MLCX"].LeafPositionBoundaries, float)
    cps = list(b.ControlPointSequence)
    first = cps[0]
    leaves = []
    for cp in cps:
        found = _positions(cp, "MLCX")
        leaves.append(found if found is not None else leaves[-1])
    cumulative = np.asarray([float(cp.CumulativeMetersetWeight) for cp in cps])
    final = float(b.get("FinalCumulativeMetersetWeight", cumulative[-1]) or cumulative[-1])
    pairs = np.asarray(leaves[0::2])  # segment s = CPs 2s, 2s+1
    n = boundaries.size - 1
    return PlanBeam(str(b.BeamName), float(first.GantryAngle), float(first.BeamLimitingDeviceAngle),
                    float(first.PatientSupportAngle), tuple(float(v) for v in first.IsocenterPosition), boundaries,
                    pairs[:, :n], pairs[:, n:], _positions(first, "ASYMX"), _positions(first, "ASYMY"),
                    (cumulative[1::2] - cumulative[0::2]) / final, meterset)
