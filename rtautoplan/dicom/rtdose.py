"""RT Dose Storage (PS3.3 A.18): writing a dose grid, and reading one back.

The dose is a multi-frame image on the case's study and frame of reference: frame k is dose slice k,
ImagePositionPatient is the centre of voxel [0, 0, 0], and GridFrameOffsetVector holds each frame's
offset (mm) from the first along the slice normal (the cross product of the two
ImageOrientationPatient directions, ``Grid.axes[0]``), so its first element is 0 (relative form,
C.8.8.3.2). Stored values are unsigned 32-bit integers; dose (Gy) = value × DoseGridScaling.

DoseGridScaling is chosen so that the maximum dose maps just below 2³²−1: the quantisation error
is then at most DoseGridScaling/2 ≈ Dmax · 1.2e-10, far below any clinical meaning. The scaling is
rounded *up* to the 16 characters a DS holds before the values are quantised with the scaling as
written, so the file's DoseGridScaling is exactly the one used and no value overflows.

DoseSummationType is PLAN (MULTI_PLAN for the course dose of sequential phases, referencing every
phase's plan), and PS3.3 C.8.8.3 then requires ReferencedRTPlanSequence (type 1C, required
when the summation type is PLAN, MULTI_PLAN, FRACTION, BEAM, BRACHY …). A dose written before its
RTPLAN exists (``plan_sop_instance_uid=None``) has nothing to reference, and no summation type avoids
the reference: each one requires a plan (or, for RECORD, a treatment record), which dciodvfy confirms.
We still write PLAN, the truth about what the dose is, omit the sequence rather than invent a dangling
UID, and log a warning: such a file reads in DVH tools (dicompyler-core, pydicom) but is not a
conformant RT Dose instance, and a TPS may refuse it. Pass the RTPLAN's SOPInstanceUID for any dose
that leaves rtautoplan.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import RTDoseStorage, RTPlanStorage
from pydicom.valuerep import format_number_as_ds

from rtautoplan.case import Case, Grid
from rtautoplan.dicom import modules
from rtautoplan.dicom.series import SPACING_TOLERANCE_MM
from rtautoplan.dicom.uid import new_uid
from rtautoplan.errors import InputError
from rtautoplan.plan import Dose

log = logging.getLogger(__name__)

RTDOSE_SERIES_NUMBER = 3
DOSE_TYPES = ("PHYSICAL", "EFFECTIVE")
UINT32_MAX = 2 ** 32 - 1
GRID_FRAME_OFFSET_VECTOR = Tag(0x3004, 0x000C)


def dose_grid_scaling(max_gy: float, levels: int = UINT32_MAX) -> str:
    """DoseGridScaling (DS text) for a dose whose maximum is ``max_gy``: max_gy / levels rounded up to
    what 16 characters hold, so that ``round(max_gy / scaling) <= levels``. "1" for an all-zero dose."""
    if max_gy <= 0:
        return "1"
    # Not modules.format_ds: it rounds to 1e-9, which would leave a 32-bit scaling (~1e-8) one digit.
    text = format_number_as_ds(max_gy / levels * (1 + 1e-8))  # 16 characters keep ≥ 10 significant digits
    assert round(max_gy / float(text)) <= levels, (max_gy, text)
    return text


def quantise(gy: np.ndarray, scaling: float, dtype=np.uint32) -> np.ndarray:
    """Stored pixel values of dose ``gy`` (Gy) for DoseGridScaling ``scaling``."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(np.asarray(gy, np.float64) / scaling), 0, top).astype(dtype)


def write_rtdose(case: Case, dose: Dose, path: str | Path, plan_sop_instance_uid: str | None = None,
                 uid_seed: str | None = None, plan_sop_class_uid: str = RTPlanStorage,
                 summed_plan_uids: Sequence[str] = ()) -> Path:
    """Write ``dose`` as an RTDOSE at ``path`` on the study and frame of reference of ``case.refs``.

    dose.grid may differ from the CT grid (a coarser dose grid) but must be in the same patient
    coordinates. plan_sop_instance_uid: the RTPLAN this dose belongs to (see the module doc for what
    omitting it means); plan_sop_class_uid: its SOP class (RT Plan or RT Ion Plan Storage). uid_seed
    makes the SOP instance and series UIDs reproducible.
    summed_plan_uids: a course dose, the sum of these plans' doses (sequential phases): DoseSummationType
    MULTI_PLAN, every plan referenced (all of the class ``plan_sop_class_uid``), instead of one plan's.
    """
    refs, grid = case.refs, dose.grid
    missing = [n for n in ("study_instance_uid", "frame_of_reference_uid") if not getattr(refs, n)]
    if missing:
        raise ValueError(f"case.refs lacks {', '.join(missing)}; fill them with rtautoplan.dicom.uid.complete_refs")
    gy = np.asarray(dose.gy, np.float64)
    if gy.shape != tuple(grid.shape):
        raise ValueError(f"dose array shape {gy.shape} differs from its grid shape {tuple(grid.shape)}")
    if not np.all(np.isfinite(gy)):
        raise ValueError("the dose has NaN or infinite values")
    top = float(gy.max(initial=0.0))
    if gy.min(initial=0.0) < -1e-6 * max(top, 1e-12):
        raise ValueError(f"the dose has negative values (min {gy.min():.6g} Gy); RT Dose stores PHYSICAL and "
                         "EFFECTIVE dose as unsigned integers")
    if dose.kind not in DOSE_TYPES:
        raise ValueError(f"dose.kind must be one of {DOSE_TYPES}, got {dose.kind!r}")

    when = _dt.datetime.now()
    seeded = (lambda what: new_uid(f"{uid_seed}/{what}")) if uid_seed is not None else (lambda what: new_uid())
    ds = modules.new_dataset(RTDoseStorage, seeded("rtdose"), when)
    modules.add_patient(ds, refs)
    modules.add_general_study(ds, refs)
    modules.add_rt_series(ds, "RTDOSE", seeded("rtdose-series"), RTDOSE_SERIES_NUMBER,
                          description=f"rtautoplan {case.case_id}"[:64], when=when)
    modules.add_frame_of_reference(ds, refs)
    modules.add_general_equipment(ds)
    # General Image (C.7.6.1)
    ds.InstanceNumber = 1
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    # Image Plane (C.7.6.2): the first frame; the other frames are placed by GridFrameOffsetVector
    ds.ImagePositionPatient = [modules.format_ds(v) for v in grid.origin]
    ds.ImageOrientationPatient = [modules.format_ds(v) for v in grid.orientation]
    ds.PixelSpacing = [modules.format_ds(grid.spacing[1]), modules.format_ds(grid.spacing[2])]
    ds.SliceThickness = modules.format_ds(abs(grid.spacing[0]))
    # Image Pixel (C.7.6.3), as the RT Dose module (C.8.8.3.4) constrains it
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    # Multi-frame (C.7.6.6)
    ds.NumberOfFrames = grid.shape[0]
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_VECTOR
    # RT Dose (C.8.8.3)
    ds.DoseUnits = "GY"
    ds.DoseType = dose.kind
    ds.DoseSummationType = "MULTI_PLAN" if summed_plan_uids else "PLAN"
    scaling = dose_grid_scaling(top)
    ds.DoseGridScaling = scaling
    ds.GridFrameOffsetVector = [modules.format_ds(k * grid.spacing[0]) for k in range(grid.shape[0])]
    plans = tuple(summed_plan_uids) or ((plan_sop_instance_uid,) if plan_sop_instance_uid else ())
    if plans:
        ds.ReferencedRTPlanSequence = [_plan_reference(plan_sop_class_uid, uid) for uid in plans]
    else:
        log.warning("RTDOSE %s: no RTPLAN to reference; DoseSummationType PLAN without ReferencedRTPlanSequence is "
                    "not conformant (pass plan_sop_instance_uid)", path)
    ds.PixelData = quantise(gy, float(scaling)).astype("<u4").tobytes()
    return modules.save(ds, path)


def _plan_reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def read_rtdose(path: str | Path) -> Dose:
    """The dose grid (Gy) of an RTDOSE file, on its own Grid (origin, spacing, shape, orientation)."""
    ds = pydicom.dcmread(path)
    where = f"RTDOSE {path}"
    if ds.get("SOPClassUID") != RTDoseStorage:
        raise InputError(where, f"SOPClassUID is {ds.get('SOPClassUID')}, not RT Dose Storage", "pass an RTDOSE file")
    if "PixelData" not in ds:
        raise InputError(where, "it has no dose grid (PixelData): a DVH-only RTDOSE", "export the 3D dose grid")
    units = str(ds.get("DoseUnits", ""))
    if units != "GY":
        raise InputError(where, f"DoseUnits is {units!r}, not GY", "export the dose in Gy (absolute dose)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    values = ds.pixel_array.reshape(frames, rows, cols).astype(np.float64)
    gy = values * float(ds.DoseGridScaling)
    orientation = tuple(float(v) for v in ds.ImageOrientationPatient)
    origin = tuple(float(v) for v in ds.ImagePositionPatient)
    dz = _slice_step(ds, frames, orientation, where)
    grid = Grid(origin, (dz, float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])), (frames, rows, cols),
                orientation)
    return Dose(grid, gy, str(ds.get("DoseType", "PHYSICAL")))


def _slice_step(ds: Dataset, frames: int, orientation: tuple[float, ...], where: str) -> float:
    """The frame step (mm) along the slice normal, from GridFrameOffsetVector (relative or absolute form)."""
    if frames == 1:
        thickness = ds.get("SliceThickness")
        return float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0
    if "GridFrameOffsetVector" not in ds:
        raise InputError(where, "a multi-frame dose without GridFrameOffsetVector", "re-export the RTDOSE")
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    if offsets.size != frames:
        raise InputError(where, f"GridFrameOffsetVector has {offsets.size} values for {frames} frames",
                         "re-export the RTDOSE")
    if offsets[0] != 0:
        # Absolute form (C.8.8.3.2, axial images only): the z of each frame; project onto the normal.
        normal = np.cross(orientation[:3], orientation[3:])
        offsets = (offsets - offsets[0]) * normal[2]
    dz = float((offsets[-1] - offsets[0]) / (frames - 1))  # as the CT reader does (series._check_spacing)
    if dz == 0 or np.max(np.abs(offsets - dz * np.arange(frames))) > SPACING_TOLERANCE_MM:
        raise InputError(where, f"dose frames are not evenly spaced (steps {np.unique(np.round(np.diff(offsets), 3))} "
                         "mm)", "resample the dose onto a regular grid")
    return dz
