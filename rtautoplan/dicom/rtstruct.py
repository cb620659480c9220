"""RT Structure Set Storage (PS3.3 A.19): writing a case's structures, reading ROI contours.

The structure set lives on the CT's frame of reference and references every CT slice
(Structure Set module C.8.8.5); each contour references the slice it is drawn on (ROI Contour
module C.8.8.6). Contour points are patient coordinates in mm, rounded to 0.01 mm.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import RTStructureSetStorage

from rtautoplan.case import Case, Structure, UnplannedRoi
from rtautoplan.dicom import modules
from rtautoplan.dicom.contours import mask_to_contours
from rtautoplan.dicom.uid import check_refs, new_uid
from rtautoplan.errors import InputError

log = logging.getLogger(__name__)

STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as RTReferencedStudySequence uses
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")
RTSTRUCT_SERIES_NUMBER = 2
_CONTOUR_DATA = 0x30060050


def _ds_mm(values: np.ndarray) -> list[str]:
    """Coordinates (mm) as DS strings rounded to 0.01 mm (≤ 16 characters for |value| < 1e12 mm)."""
    rounded = np.round(np.asarray(values, float).ravel(), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return [f"{v:.2f}".rstrip("0").rstrip(".") for v in rounded]


def _item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def write_rtstruct(case: Case, path: str | Path, structures: Sequence[Structure] | None = None,
                   label: str = "rtautoplan", uid_seed: str | None = None, unplanned: bool = False) -> Path:
    """Write ``structures`` (default: all of the case's) as an RTSTRUCT at ``path`` referencing the CT
    series of ``case.refs``; with ``unplanned``, also the input ROIs the case does not plan on
    (``case.unplanned``), after them, with their contours as read. ``uid_seed`` makes its SOP instance
    and series UIDs reproducible."""
    refs, grid = case.refs, case.grid
    check_refs(refs, grid.shape[0])
    structures = case.structures if structures is None else tuple(structures)
    kept = case.unplanned if unplanned else ()
    when = _dt.datetime.now()
    seeded = (lambda what: new_uid(f"{uid_seed}/{what}")) if uid_seed is not None else (lambda what: new_uid())
    ds = modules.new_dataset(RTStructureSetStorage, seeded("rtstruct"), when)
    modules.add_patient(ds, refs)
    modules.add_general_study(ds, refs)
    modules.add_rt_series(ds, "RTSTRUCT", seeded("rtstruct-series"), RTSTRUCT_SERIES_NUMBER,
                          description=label[:64], when=when)
    modules.add_frame_of_reference(ds, refs)
    modules.add_general_equipment(ds)
    # Structure Set (C.8.8.5)
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = when.strftime("%Y%m%d")
    ds.StructureSetTime = when.strftime("%H%M%S")
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(case)]
    ds.StructureSetROISequence = [
        _item(ROINumber=n, ReferencedFrameOfReferenceUID=refs.frame_of_reference_uid, ROIName=s.name,
              ROIGenerationAlgorithm="AUTOMATIC" if s.roi_name == "" else "MANUAL")
        for n, s in enumerate(structures, start=1)] + [
        _item(ROINumber=n, ReferencedFrameOfReferenceUID=refs.frame_of_reference_uid, ROIName=r.name,
              ROIGenerationAlgorithm="MANUAL")
        for n, r in enumerate(kept, start=len(structures) + 1)]
    # ROI Contour (C.8.8.6)
    ds.ROIContourSequence = [_roi_contour(case, s, n) for n, s in enumerate(structures, start=1)] + [
        _unplanned_contour(case, r, n) for n, r in enumerate(kept, start=len(structures) + 1)]
    # RT ROI Observations (C.8.8.8)
    ds.RTROIObservationsSequence = [
        _item(ObservationNumber=n, ReferencedROINumber=n, RTROIInterpretedType=s.role.dicom_type, ROIInterpreter="")
        for n, s in enumerate(structures, start=1)] + [
        _item(ObservationNumber=n, ReferencedROINumber=n, RTROIInterpretedType=r.interpreted_type, ROIInterpreter="")
        for n, r in enumerate(kept, start=len(structures) + 1)]
    return modules.save(ds, path)


def _image_refs(case: Case, slices: Sequence[int]) -> DicomSequence:
    return DicomSequence([_item(ReferencedSOPClassUID=case.refs.ct_sop_class_uid,
                                ReferencedSOPInstanceUID=case.refs.ct_sop_instance_uids[k]) for k in slices])


def _frame_of_reference(case: Case) -> Dataset:
    """ReferencedFrameOfReferenceSequence item: the CT's frame → study → series → every slice."""
    refs = case.refs
    series = _item(SeriesInstanceUID=refs.ct_series_instance_uid,
                   ContourImageSequence=_image_refs(case, range(case.grid.shape[0])))
    study = _item(ReferencedSOPClassUID=STUDY_COMPONENT_SOP_CLASS, ReferencedSOPInstanceUID=refs.study_instance_uid,
                  RTReferencedSeriesSequence=[series])
    return _item(FrameOfReferenceUID=refs.frame_of_reference_uid, RTReferencedStudySequence=[study])


def _roi_contour(case: Case, structure: Structure, number: int) -> Dataset:
    item = _item(ReferencedROINumber=number, ROIDisplayColor=[int(c) for c in structure.color])
    contours = mask_to_contours(structure.mask, case.grid)
    if contours:
        item.ContourSequence = [
            _item(ContourImageSequence=_image_refs(case, [k]), ContourGeometricType="CLOSED_PLANAR",
                  NumberOfContourPoints=len(points), ContourNumber=c, ContourData=_ds_mm(points))
            for c, (k, points) in enumerate(contours, start=1)]
    return item


def _unplanned_contour(case: Case, roi: UnplannedRoi, number: int) -> Dataset:
    """ROI Contour item of an input ROI written back as read: its ContourData unchanged, referencing the
    CT slice a contour lies on when there is one (within half a slice)."""
    item = _item(ReferencedROINumber=number, ROIDisplayColor=[int(c) for c in (roi.color or (255, 255, 0))])
    if roi.contours:
        slices = [case.grid.patient_to_index(points[0])[0] for points in roi.contours]
        item.ContourSequence = [
            _item(**({"ContourImageSequence": _image_refs(case, [int(round(k))])}
                     if 0 <= round(k) < case.grid.shape[0] and abs(k - round(k)) <= 0.25 else {}),
                  ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(points), ContourNumber=c,
                  ContourData=_ds_mm(points))
            for c, (k, points) in enumerate(zip(slices, roi.contours), start=1)]
    return item


class RoiContours(NamedTuple):
    """One ROI of a structure set: its name, closed contours ((n, 3) patient mm), ROIDisplayColor."""

    name: str
    contours: list[np.ndarray]
    color: tuple[int, int, int] | None


@dataclass(frozen=True)
class StructureSet:
    """What ``read_rtstruct`` finds: the ROIs, the frame of reference, and the CT they reference.

    interpreted_types: each ROI's RTROIInterpretedType (upper case, "" when absent), in ``rois`` order."""

    rois: tuple[RoiContours, ...]
    frame_of_reference_uid: str
    referenced_series_uid: str | None
    referenced_sop_instance_uids: frozenset[str]
    interpreted_types: tuple[str, ...] = ()

    def interpreted_type(self, n: int) -> str:
        """RTROIInterpretedType of ``rois[n]``, "" when the RTSTRUCT gives none."""
        return self.interpreted_types[n] if n < len(self.interpreted_types) else ""


# what a malformed or truncated RTSTRUCT raises in pydicom or in the conversions below
_MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


def read_rtstruct(source: str | Path | Dataset) -> StructureSet:
    """The ROIs (closed planar contours only) of an RTSTRUCT file or dataset, in StructureSetROISequence order.

    A malformed or truncated file (pydicom reads a cut-off file without complaint) is an InputError naming it."""
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
    where = f"RTSTRUCT {getattr(ds, 'filename', None) or ds.get('SOPInstanceUID', '')}"
    try:
        return _read(ds, where)
    except _MALFORMED as error:
        raise InputError(where, f"cannot be read ({type(error).__name__}: {error}); the file is truncated or "
                                "malformed", "Export the RTSTRUCT again from the TPS") from None


def _read(ds: Dataset, where: str) -> StructureSet:
    names = {}
    for n, roi in enumerate(ds.get("StructureSetROISequence", [])):
        if roi.get("ROINumber") is None:
            raise InputError(where, f"StructureSetROISequence item {n + 1} has no ROINumber",
                             "Export the RTSTRUCT again from the TPS (the file may be truncated)")
        name = str(roi.get("ROIName", "") or "")
        if not name.strip():
            raise InputError(where, f"ROI number {roi.ROINumber} has no ROIName",
                             "Name the ROI in the TPS (or delete it) and re-export")
        if int(roi.ROINumber) in names:
            raise InputError(where, f"ROIs '{names[int(roi.ROINumber)]}' and '{name}' have the same ROINumber "
                                    f"{roi.ROINumber}", "Export the RTSTRUCT again from the TPS")
        names[int(roi.ROINumber)] = name
    contours_of, colors = {}, {}
    for n, roi_contour in enumerate(ds.get("ROIContourSequence", [])):
        if roi_contour.get("ReferencedROINumber") is None:
            raise InputError(where, f"ROIContourSequence item {n + 1} has no ReferencedROINumber",
                             "Export the RTSTRUCT again from the TPS (the file may be truncated)")
        number = int(roi_contour.ReferencedROINumber)
        if number not in names:
            log.warning("%s: contours of ROI number %d, which StructureSetROISequence does not list, skipped",
                        where, number)
            continue
        color = roi_contour.get("ROIDisplayColor")
        colors[number] = tuple(int(c) for c in color) if color is not None and len(color) == 3 else None
        contours = roi_contour.get("ContourSequence", [])
        roi_where = f"RTSTRUCT ROI '{names[number]}' ({where.removeprefix('RTSTRUCT ')})"
        contours_of[number] = [_points(c, m, roi_where) for m, c in enumerate(contours, start=1)
                               if c.get("ContourGeometricType", "") in CLOSED_TYPES]
        if len(contours_of[number]) < len(contours):
            log.info("%s: %d point/open contours skipped", roi_where, len(contours) - len(contours_of[number]))
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").strip().upper()
             for o in ds.get("RTROIObservationsSequence", []) if o.get("ReferencedROINumber") is not None}
    rois = tuple(RoiContours(name, contours_of.get(number, []), colors.get(number)) for number, name in names.items())
    series_uid, sops = _referenced_images(ds)
    return StructureSet(rois, _frame_of_reference_uid(ds), series_uid, sops,
                        tuple(types.get(number, "") for number in names))


def _points(contour: Dataset, number: int, where: str) -> np.ndarray:
    """ContourData as (n, 3) mm, parsed straight from the raw bytes when pydicom has not converted them yet;
    InputError when it is missing, not numbers, not x y z triplets or not NumberOfContourPoints long."""
    elem = contour.get_item(_CONTOUR_DATA)
    if elem is None or elem.value is None or (isinstance(elem, RawDataElement) and not elem.value):
        raise InputError(where, f"contour {number} has no ContourData", "Re-export the RTSTRUCT from the TPS")
    try:
        if isinstance(elem, RawDataElement):
            values = np.array(elem.value.split(b"\\")).astype(float)
        else:
            values = np.atleast_1d(np.asarray(contour.ContourData, float)).ravel()
    except ValueError:
        raise InputError(where, f"contour {number}: ContourData holds values that are not numbers",
                         "Re-export the RTSTRUCT from the TPS") from None
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise InputError(where, f"contour {number}: ContourData has {values.size} values, not x, y, z triplets of "
                                "finite numbers", "Re-export the RTSTRUCT from the TPS (the file may be truncated)")
    expected = contour.get("NumberOfContourPoints")
    if expected not in (None, "") and int(expected) * 3 != values.size:
        raise InputError(where, f"contour {number}: ContourData has {values.size // 3} points but "
                                f"NumberOfContourPoints is {int(expected)}",
                         "Re-export the RTSTRUCT from the TPS (the file may be truncated)")
    return values.reshape(-1, 3)


def _frame_of_reference_uid(ds: Dataset) -> str:
    """The frame of reference the ROIs are drawn on."""
    for item in ds.get("ReferencedFrameOfReferenceSequence", []):
        if item.get("FrameOfReferenceUID"):
            return str(item.FrameOfReferenceUID)
    if ds.get("FrameOfReferenceUID"):
        return str(ds.FrameOfReferenceUID)
    for roi in ds.get("StructureSetROISequence", []):
        if roi.get("ReferencedFrameOfReferenceUID"):
            return str(roi.ReferencedFrameOfReferenceUID)
    return ""


def _referenced_images(ds: Dataset) -> tuple[str | None, frozenset[str]]:
    """The image series the structure set references and every image SOP instance it names."""
    series_uid = None
    sops = set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                series_uid = series_uid or str(series.get("SeriesInstanceUID", "")) or None
                sops.update(str(i.ReferencedSOPInstanceUID) for i in series.get("ContourImageSequence", [])
                            if "ReferencedSOPInstanceUID" in i)
    for roi_contour in ds.get("ROIContourSequence", []):
        for contour in roi_contour.get("ContourSequence", []):
            sops.update(str(i.ReferencedSOPInstanceUID) for i in contour.get("ContourImageSequence", [])
                        if "ReferencedSOPInstanceUID" in i)
    return series_uid, frozenset(sops)
