"""An image series as a voxel grid: slice order, geometry checks, HU and the identities to reference.

Slices are ordered by their position along the slice normal (the cross product of the two
ImageOrientationPatient directions), never by file name or InstanceNumber. The series must be a
regular grid: one orientation, axis-aligned (within ``IOP_TOLERANCE``; snapped to the axis), no
gantry tilt, evenly spaced slices (within ``SPACING_TOLERANCE_MM``) with none missing or doubled.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rtautoplan.case import DicomRefs, Grid
from rtautoplan.dicom import modules
from rtautoplan.errors import InputError

log = logging.getLogger(__name__)

IOP_TOLERANCE = 1e-3  # direction cosines within this of 0/±1 count as axis-aligned
SPACING_TOLERANCE_MM = 0.01  # slice positions may deviate this much from a constant step
IN_PLANE_TOLERANCE_MM = 0.01  # ImagePositionPatient may move this much in-plane from slice to slice
TILT_TOLERANCE_DEG = 1e-3
_REQUIRED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_COUNTS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
# what pydicom raises on a file it cannot parse or decode
_READ_ERRORS = (EOFError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, NotImplementedError,
                RuntimeError, struct.error)


@dataclass(frozen=True)
class Slice:
    """One image file of a series: where it is and its header (read without pixel data)."""

    path: Path
    ds: Dataset


def describe(series_uid: str, slices: list[Slice]) -> str:
    """How messages name a series: modality, UID and the folder its files are in."""
    folder = slices[0].path.parent if slices else Path(".")
    modality = slices[0].ds.get("Modality", "image") if slices else "image"
    return f"{modality} series {series_uid} ({folder}/…)"


def grid_of(series_uid: str, slices: list[Slice]) -> tuple[Grid, list[Slice]]:
    """The series' Grid and its slices in k order; InputError for anything that is not a regular grid."""
    where = describe(series_uid, slices)
    if len(slices) < 2:
        raise InputError(where, f"has {len(slices)} slice", "Export the complete CT series (at least 2 slices)")
    for s in slices:
        _check_header(s, where)
    _check_same(slices, where)
    orientation = _axis_aligned(np.asarray(slices[0].ds.ImageOrientationPatient, float), where)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array([np.asarray(s.ds.ImagePositionPatient, float) for s in slices])
    order = np.argsort(ipp @ normal, kind="stable")
    slices, ipp = [slices[n] for n in order], ipp[order]
    position = ipp @ normal
    axial = abs(normal[2]) > 0.5
    label = _Label("z" if axial else "position", ipp[:, 2] if axial else position)
    _check_duplicates(slices, position, label, where)
    _check_in_plane(ipp, np.stack([row_dir, col_dir]), label, where)
    dz = _check_spacing(position, label, where)
    first = slices[0].ds
    spacing = (dz, float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    grid = Grid(origin=tuple(float(v) for v in ipp[0]), spacing=spacing,
                shape=(len(slices), int(first.Rows), int(first.Columns)),
                orientation=tuple(float(v) for v in orientation))
    return grid, slices


def _check_header(s: Slice, where: str) -> None:
    """The geometry tags are present with as many numbers as they need; spacing and matrix size positive."""
    for keyword in _REQUIRED:
        value = s.ds.get(keyword)
        if value is None:
            raise InputError(f"{where} {s.path.name}", f"{keyword} is missing", "Export the series from the TPS again")
        try:
            numbers = np.asarray(value, float).ravel()
        except (TypeError, ValueError):
            numbers = np.zeros(0)
        count = _COUNTS.get(keyword, 1)
        positive = keyword not in ("ImagePositionPatient", "ImageOrientationPatient")
        if numbers.size != count or not np.all(np.isfinite(numbers)) or (positive and not np.all(numbers > 0)):
            what = f"{count} {'positive ' if positive else ''}number{'s' if count > 1 else ''}"
            raise InputError(f"{where} {s.path.name}", f"{keyword} is {value!r}, not {what}",
                             "Export the series from the TPS again")


def _check_same(slices: list[Slice], where: str) -> None:
    """One frame of reference, matrix size, pixel spacing, orientation and no tilt on every slice."""
    first = slices[0].ds
    for s in slices:
        for keyword in ("FrameOfReferenceUID", "Rows", "Columns"):
            if s.ds.get(keyword) != first.get(keyword):
                raise InputError(f"{where} {s.path.name}", f"{keyword} is {s.ds.get(keyword)} but "
                                 f"{first.get(keyword)} in {slices[0].path.name}",
                                 "Export one consistent CT series from the TPS")
        for keyword in ("PixelSpacing", "ImageOrientationPatient"):
            if not np.allclose(np.asarray(s.ds.get(keyword), float), np.asarray(first.get(keyword), float), atol=1e-4):
                raise InputError(f"{where} {s.path.name}", f"{keyword} is {list(s.ds.get(keyword))} but "
                                 f"{list(first.get(keyword))} in {slices[0].path.name}",
                                 "Export one consistent CT series from the TPS")
        tilt = s.ds.get("GantryDetectorTilt")
        if tilt is not None and abs(float(tilt)) > TILT_TOLERANCE_DEG:
            raise InputError(f"{where} {s.path.name}", f"GantryDetectorTilt is {float(tilt):g}°; rtautoplan needs "
                             "untilted axial slices",
                             "Reconstruct the CT without gantry tilt (or resample it) and re-export")


def _axis_aligned(iop: np.ndarray, where: str) -> np.ndarray:
    """ImageOrientationPatient snapped to the axes; InputError when oblique."""
    snapped = np.rint(iop)
    rows, cols = snapped[:3], snapped[3:]
    aligned = (np.max(np.abs(iop - snapped)) <= IOP_TOLERANCE and np.abs(rows).sum() == 1
               and np.abs(cols).sum() == 1 and rows @ cols == 0)
    if not aligned:
        raise InputError(where, f"ImageOrientationPatient {[float(v) for v in iop]} is oblique; rtautoplan needs "
                         "slices aligned with the patient axes", "Resample the CT to an axial grid and re-export")
    return snapped + 0.0


@dataclass(frozen=True)
class _Label:
    """How messages name slice positions: z (mm) for axial series, else the position along the normal."""

    axis: str
    values: np.ndarray

    def __call__(self, n: int) -> str:
        return f"{self.axis} = {self.values[n]:.2f}"


def _check_duplicates(slices: list[Slice], position: np.ndarray, label: _Label, where: str) -> None:
    same = np.flatnonzero(np.diff(position) <= SPACING_TOLERANCE_MM)
    if same.size:
        n = same[0]
        raise InputError(where, f"{slices[n].path.name} and {slices[n + 1].path.name} are both at {label(n)} mm "
                         "(duplicate slice positions)", "Remove the duplicate slices or export the series again")


def _check_in_plane(ipp: np.ndarray, in_plane: np.ndarray, label: _Label, where: str) -> None:
    """ImagePositionPatient must move only along the normal (else: tilted or sheared series)."""
    drift = np.linalg.norm((ipp - ipp[0]) @ in_plane.T, axis=1)
    if drift.max() > IN_PLANE_TOLERANCE_MM:
        n = int(np.argmax(drift > IN_PLANE_TOLERANCE_MM))
        raise InputError(where, f"ImagePositionPatient moves {drift[n]:.2f} mm in-plane between {label(0)} and "
                         f"{label(n)} mm (gantry tilt or sheared series)",
                         "Reconstruct the CT without gantry tilt (or resample it) and re-export")


def _check_spacing(position: np.ndarray, label: _Label, where: str) -> float:
    """The slice step (mm); InputError for missing slices or uneven spacing."""
    gaps = np.diff(position)
    step = float(np.median(gaps))
    multiple = np.rint(gaps / step)
    missing = np.flatnonzero((multiple >= 2) & (np.abs(gaps - multiple * step) <= SPACING_TOLERANCE_MM * multiple))
    if missing.size:
        n = missing[0]
        raise InputError(where, f"slices missing between {label(n)} and {label(n + 1)} mm "
                         f"(expected a step of {step:g} mm)", "Export the complete series from the TPS")
    dz = float((position[-1] - position[0]) / (len(position) - 1))
    expected = position[0] + dz * np.arange(len(position))
    if np.max(np.abs(position - expected)) > SPACING_TOLERANCE_MM:
        n = int(np.argmax(np.abs(gaps - step)))
        raise InputError(where, f"uneven slice spacing: {gaps[n]:.3f} mm between {label(n)} and {label(n + 1)} mm, "
                         f"{step:g} mm elsewhere; rtautoplan needs a constant step",
                         "Resample the CT to a constant slice spacing in the TPS and re-export")
    return dz


def read_hu(slices: list[Slice], where: str) -> np.ndarray:
    """HU = stored value × RescaleSlope + RescaleIntercept, int16 [k, j, i], filled slice by slice; InputError
    naming the file for a slice that is truncated, has too little pixel data, or whose pixels or rescale cannot
    be read."""
    hu = None
    for k, s in enumerate(slices):
        pixels = _hu(s, f"{where} {s.path.name}")
        if hu is None:  # every slice has the first one's Rows and Columns (grid_of checked)
            hu = np.empty((len(slices), *pixels.shape), np.int16)
        hu[k] = pixels
    return hu


def _hu(s: Slice, where: str) -> np.ndarray:
    again = "Export or copy this slice again from the TPS or PACS"
    try:
        ds = pydicom.dcmread(s.path, force=True)  # force: *.dcm files without the preamble were accepted
    except _READ_ERRORS as error:
        raise InputError(where, f"cannot be read ({type(error).__name__}: {error}); the file is truncated or "
                                "corrupt", again) from None
    _ensure_transfer_syntax(ds)
    if "PixelData" not in ds:
        raise InputError(where, "has no PixelData (or the file is cut off before it)", again)
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        _check_pixel_length(ds, where, again)
    try:
        pixels = ds.pixel_array
    except _READ_ERRORS as error:
        fix = "Export the CT uncompressed (explicit VR little endian)" if syntax.is_compressed else again
        raise InputError(where, f"cannot decode its pixel data (TransferSyntaxUID {syntax}: {error})", fix) from None
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise InputError(where, f"pixel data of shape {pixels.shape} is not one {ds.Rows}×{ds.Columns} slice",
                         "Export the CT as single-frame CT Image Storage")
    rescale = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = ds.get(keyword)
        try:
            rescale.append(float(value) if value not in (None, "") else default)
        except (TypeError, ValueError):
            raise InputError(where, f"{keyword} is {value!r}, not a number", again) from None
    slope = rescale[0] or 1.0
    return np.clip(np.rint(pixels * slope + rescale[1]), -32768, 32767).astype(np.int16)


def _check_pixel_length(ds: Dataset, where: str, fix: str) -> None:
    """Uncompressed PixelData must hold Rows × Columns × SamplesPerPixel samples of BitsAllocated bits."""
    missing = [k for k in ("BitsAllocated", "PixelRepresentation") if ds.get(k) is None]
    if missing:
        raise InputError(where, f"{' and '.join(missing)} missing: its pixel data cannot be read", fix)
    samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    expected = -(-samples * int(ds.BitsAllocated) // 8)
    found = len(ds.PixelData)
    if found < expected:
        raise InputError(where, f"PixelData holds {found} bytes, {expected} expected for {ds.Rows}×{ds.Columns} "
                                f"pixels of {ds.BitsAllocated} bits: the file is truncated or its pixel data "
                                "incomplete", fix)


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """A file read without file meta (no preamble) gets the transfer syntax it was read with."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def refs_of(series_uid: str, slices: list[Slice]) -> DicomRefs:
    """The identities later objects must reference, from the sorted slices."""
    first = slices[0].ds
    position = first.get("PatientPosition") or ""
    if not position:
        log.warning("%s: PatientPosition missing; assuming HFS", describe(series_uid, slices))
        position = "HFS"
    extra_keys = modules.PATIENT_EXTRA + modules.STUDY_EXTRA + modules.STUDY_OPTIONAL
    return DicomRefs(
        patient_id=str(first.get("PatientID", "")), patient_name=str(first.get("PatientName", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        ct_series_instance_uid=series_uid, ct_sop_class_uid=str(first.SOPClassUID),
        ct_sop_instance_uids=tuple(str(s.ds.SOPInstanceUID) for s in slices),
        patient_position=str(position),
        extra={k: str(first.get(k)) for k in extra_keys if first.get(k) not in (None, "")})
