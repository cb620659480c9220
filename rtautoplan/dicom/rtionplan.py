"""RT Ion Plan Storage (PS3.3 A.49): pencil-beam-scanning proton and carbon plans, writing and
reading back their spots.

Each field is one IonBeamSequence item (C.8.8.25), BeamType STATIC, ScanMode MODULATED, and each
energy layer a control-point pair (C.8.8.25.7): CP 2l carries the layer's NominalBeamEnergy (MeV per
nucleon: MeV for protons), ScanSpotPositionMap (x_b, y_b mm at the isocentre plane),
ScanSpotMetersetWeights and the nominal ScanningSpotSize (FWHM in air at the isocentre,
2.355·σ₀ of ``physics.ion_dose.sigma0_mm``); CP 2l+1 repeats the spots with zero weights, and the
cumulative meterset weight between them grows by the layer's weight. Layers go from the highest
energy down; spots of zero weight (removed by the minimum-MU rule) are not written, nor are layers
left empty.

Meterset: the spot weights are the plan's own units, so FinalCumulativeMetersetWeight is their sum.
In-house protons: MU per fraction, PrimaryDosimeterUnit MU and BeamMeterset = the sum. PHOENIX
carbon: 10⁶ ions per fraction, PrimaryDosimeterUnit NP (number of particles) and BeamMeterset =
10⁶ × the sum. VirtualSourceAxisDistances: the SAD the dose engine used (2 m for ``ion_dij``,
1 m for the PHOENIX engine, which uses the default beam frame).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import RTIonPlanStorage

from rtautoplan.case import Case
from rtautoplan.dicom import modules, plan_modules as pm
from rtautoplan.dicom.modules import format_ds
from rtautoplan.errors import InputError
from rtautoplan.physics.geometry import SAD_MM
from rtautoplan.physics.ion_dij import ION_SAD_MM
from rtautoplan.physics.ion_dose import sigma0_mm
from rtautoplan.plan import Beam, Modality, Plan

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
SPOT_TUNE_ID = "NOMINAL"


@dataclass(frozen=True)
class IonKind:
    """What a modality writes: radiation, dosimeter unit, its size in plan weight units, machine, SAD."""

    radiation: str
    ion: str
    unit: str
    unit_per_weight: float
    machine: str
    sad_mm: float
    particle: tuple[int, int, int] | None = None  # mass number, atomic number, charge state


KINDS = {
    Modality.PROTON: IonKind("PROTON", "proton", "MU", 1.0, "RTAP_PROTON", ION_SAD_MM),
    Modality.CARBON: IonKind("ION", "carbon", "NP", 1e6, "RTAP_CARBON", SAD_MM, (12, 6, 6)),
}


@dataclass(frozen=True, eq=False)
class IonPlanBeam:
    """One field read from an RT Ion Plan: geometry (degrees, mm) and its spots (n, 4: x_b, y_b mm,
    energy MeV/u, weight in the plan's units — MU, or 10⁶ ions — per fraction)."""

    name: str
    gantry_deg: float
    couch_deg: float
    isocenter_mm: tuple[float, float, float]
    spots: np.ndarray


@dataclass(frozen=True, eq=False)
class IonPlanContents:
    """What ``read_rtionplan`` returns."""

    sop_instance_uid: str
    machine: str
    radiation_type: str
    fractions: int
    beams: tuple[IonPlanBeam, ...]


def write_rtionplan(case: Case, plan: Plan, path: str | Path, *, structure_set_uid: str, machine: str | None = None,
                    uid_seed: str | None = None, label: str = "rtautoplan", sad_mm: float | None = None) -> Path:
    """Write the proton or carbon ``plan`` as an RT Ion Plan at ``path`` on the study and frame of
    reference of ``case.refs``, referencing the RTSTRUCT ``structure_set_uid``. machine and sad_mm
    default by modality (``KINDS``); uid_seed makes the UIDs reproducible."""
    if plan.modality not in KINDS:
        raise ValueError(f"write_rtionplan writes proton and carbon plans, not {plan.modality.value}")
    if len(plan.positions) != len(plan.beams) or len(plan.weights) != len(plan.beams):
        raise ValueError("the plan lacks spot positions or weights for some beams (Plan.positions, Plan.weights)")
    kind = KINDS[plan.modality]
    layers = [_layers(p, w, beam.name) for beam, p, w in zip(plan.beams, plan.positions, plan.weights)]
    when = _dt.datetime.now()
    make = pm.uid_maker(uid_seed)
    ds = pm.new_plan_dataset(case, RTIonPlanStorage, make("rtionplan"), make("rtionplan-series"), label=label,
                             structure_set_uid=structure_set_uid, when=when)
    pm.add_rt_prescription(ds, case)
    totals = [sum(float(w.sum()) for _, _, w in beam_layers) for beam_layers in layers]
    pm.add_fraction_scheme(ds, case, [t * kind.unit_per_weight for t in totals])
    ds.IonBeamSequence = [
        _beam_item(n, beam, beam_layers, kind, machine or kind.machine, sad_mm or kind.sad_mm)
        for n, (beam, beam_layers) in enumerate(zip(plan.beams, layers), start=1)]
    pm.add_patient_setup(ds, case)
    pm.add_approval(ds)
    return modules.save(ds, path)


def _layers(positions: np.ndarray, weights: np.ndarray, name: str) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(energy, xy (n, 2), weights (n,)) per layer, highest energy first; zero-weight spots dropped."""
    p, w = np.asarray(positions, float).reshape(-1, 3), np.asarray(weights, float).ravel()
    if p.shape[0] != w.size:
        raise ValueError(f"beam {name!r}: {p.shape[0]} spot positions for {w.size} weights")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"beam {name!r}: spot weights must be finite and non-negative")
    keep = w > 0
    if not keep.any():
        raise ValueError(f"beam {name!r} has no spot with a weight: remove it from the plan before writing")
    p, w = p[keep], w[keep]
    energies = np.unique(p[:, 2])[::-1]
    return [(float(e), p[p[:, 2] == e, :2], w[p[:, 2] == e]) for e in energies]


def _beam_item(number: int, beam: Beam, layers, kind: IonKind, machine: str, sad_mm: float):
    """One IonBeamSequence item (C.8.8.25.1)."""
    item = pm.beam_header(number, beam, machine)
    item.PrimaryDosimeterUnit = kind.unit
    item.RadiationType = kind.radiation
    if kind.particle:
        item.RadiationMassNumber, item.RadiationAtomicNumber, item.RadiationChargeState = kind.particle
    item.ScanMode = "MODULATED"
    item.ModulatedScanModeType = "STATIONARY"
    item.VirtualSourceAxisDistances = [float(sad_mm), float(sad_mm)]
    pm.add_device_counts(item, "NumberOfRangeShifters", "NumberOfLateralSpreadingDevices", "NumberOfRangeModulators")
    item.PatientSupportType = "TABLE"
    cumulative = np.concatenate([[0.0], np.cumsum([w.sum() for _, _, w in layers])])
    item.FinalCumulativeMetersetWeight = format_ds(cumulative[-1])
    item.NumberOfControlPoints = 2 * len(layers)
    item.IonControlPointSequence = [
        _control_point(2 * n + k, beam, layer, kind, cumulative[n + k], k)
        for n, layer in enumerate(layers) for k in (0, 1)]
    return item


def _control_point(index: int, beam: Beam, layer, kind: IonKind, cumulative: float, second: int):
    """Control point ``index`` (C.8.8.25.7): a layer's spots, weighted on its first CP only."""
    energy, xy, w = layer
    fwhm = float(FWHM_PER_SIGMA * sigma0_mm(energy, kind.ion))
    cp = pm.item(ControlPointIndex=index, NominalBeamEnergy=format_ds(energy), ScanSpotTuneID=SPOT_TUNE_ID,
                 NumberOfScanSpotPositions=int(w.size), ScanSpotPositionMap=[float(v) for v in xy.ravel()],
                 ScanSpotMetersetWeights=[0.0] * w.size if second else [float(v) for v in w],
                 ScanningSpotSize=[fwhm, fwhm], NumberOfPaintings=1)
    if index == 0:
        pm.add_first_control_point_geometry(cp, beam)
        cp.TableTopPitchAngle, cp.TableTopPitchRotationDirection = 0.0, "NONE"
        cp.TableTopRollAngle, cp.TableTopRollRotationDirection = 0.0, "NONE"
    cp.CumulativeMetersetWeight = format_ds(cumulative)
    return cp


def read_rtionplan(path: str | Path) -> IonPlanContents:
    """The fields and spots of an RT Ion Plan (as ``write_rtionplan`` writes them): spot weights in
    the plan's units per fraction (MU, or 10⁶ ions for NP)."""
    ds = pydicom.dcmread(path)
    where = f"RT Ion Plan {path}"
    if ds.get("SOPClassUID") != RTIonPlanStorage:
        raise InputError(where, f"SOPClassUID is {ds.get('SOPClassUID')}, not RT Ion Plan Storage",
                         "pass an RT Ion Plan file")
    group = ds.FractionGroupSequence[0]
    metersets = {int(r.ReferencedBeamNumber): float(r.BeamMeterset) for r in group.ReferencedBeamSequence}
    beams = tuple(_read_beam(b, metersets.get(int(b.BeamNumber), 0.0)) for b in ds.IonBeamSequence)
    first = ds.IonBeamSequence[0]
    return IonPlanContents(str(ds.SOPInstanceUID), str(first.get("TreatmentMachineName", "")), str(first.RadiationType),
                           int(group.NumberOfFractionsPlanned), beams)


def _read_beam(b, meterset: float) -> IonPlanBeam:
    per_weight = meterset / float(b.FinalCumulativeMetersetWeight)  # meterset units per weight
    if str(b.PrimaryDosimeterUnit) == "NP":
        per_weight /= 1e6
    spots = []
    for cp in b.IonControlPointSequence:
        w = np.atleast_1d(np.asarray(cp.get("ScanSpotMetersetWeights", []), float))
        if not np.any(w > 0):
            continue
        xy = np.asarray(cp.ScanSpotPositionMap, float).reshape(-1, 2)
        spots.append(np.column_stack([xy, np.full(w.size, float(cp.NominalBeamEnergy)), w * per_weight]))
    first = b.IonControlPointSequence[0]
    return IonPlanBeam(str(b.BeamName), float(first.GantryAngle), float(first.PatientSupportAngle),
                       tuple(float(v) for v in first.IsocenterPosition), np.concatenate(spots))
