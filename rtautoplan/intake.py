"""What the node accepts at C-STORE time, and the failure status it answers otherwise.

What: ``check(event)`` decodes the dataset fully and checks it before anything is written: the
request's and the dataset's SOP class and instance UIDs are valid UIDs (at most 64 characters,
digits and dots, no empty component, no leading zero in a component) and agree; the SOP class is
one we plan with (CT Image, RT Structure Set); Study, Series and Frame of Reference UIDs are valid; a
CT slice holds all of its pixel data and an RTSTRUCT its ROIs. It returns an ``Accepted`` (the
encoded bytes to store, and what the journal files it by) or raises ``Refused`` with a DICOM status
and an ErrorComment.

Why: a dataset acknowledged with Success must be one we can plan with. A truncated or
inconsistent dataset answered 0x0000 fails later, out of the sender's sight; refused here, the
sender sees the failure at once and nothing is stored. File names are made from validated UIDs
only, so nothing from a dataset can name a path outside the workdir.

Statuses (PS3.4 B.2.3, C.4.2.1.4): 0x0122 SOP class not supported, 0xA900 dataset does not match
its SOP class (bad or inconsistent UIDs, missing content), 0xC210 cannot understand (does not
decode), 0xA700 out of resources (raised by the node: limits, disk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.sop_class import CTImageStorage, RTStructureSetStorage

PLANNABLE = {str(CTImageStorage): "CT", str(RTStructureSetStorage): "RTSTRUCT"}
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
NOT_SUPPORTED, MISMATCH, UNDECODABLE, OUT_OF_RESOURCES = 0x0122, 0xA900, 0xC210, 0xA700


class Refused(Exception):
    """A store the node answers with ``status`` and ``comment`` (the ErrorComment, ≤ 64 characters)."""

    def __init__(self, status: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = status, comment[:64]

    def response(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment
        return ds


@dataclass(frozen=True)
class Accepted:
    """A dataset that passed ``check``: what to store and what the journal files it by."""

    study: str
    series: str
    sop: str
    sop_class: str
    sort_key: str  # StructureSetDate+Time (RTSTRUCT) / SeriesDate+Time (CT), normalised; "" if absent
    data: bytes  # the DICOM file: file meta information and the dataset as received


def valid_uid(uid: object) -> bool:
    """PS3.5 9.1: at most 64 characters, components of digits without a leading zero, dot-separated."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and _UID.fullmatch(uid) is not None


def _moment(date: object, time: object) -> str:
    """DA + TM as a sortable string (YYYYMMDDHHMMSS.ffffff); "" without a date."""
    date = re.sub(r"\D", "", str(date or ""))[:8]
    if len(date) != 8:
        return ""
    whole, _, fraction = str(time or "").replace(":", "").strip().partition(".")
    whole, fraction = re.sub(r"\D", "", whole)[:6], re.sub(r"\D", "", fraction)[:6]
    return f"{date}{whole.ljust(6, '0')}.{fraction.ljust(6, '0')}"


def _decoded(event) -> Dataset:
    """The dataset with every element (sequences included) decoded; Refused(0xC210) if it does not."""
    try:
        ds = event.dataset
        for element in ds.iterall():  # converts every raw element: a truncated or garbled value raises here
            _ = element.value
        return ds
    except Exception as error:  # pydicom has no single decoding exception
        raise Refused(UNDECODABLE, f"does not decode: {type(error).__name__}") from error


def _check_content(ds: Dataset, kind: str) -> None:
    if kind == "CT":
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            expected = rows * columns * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
            expected *= int(ds.get("NumberOfFrames", 1) or 1)
            pixels = ds.PixelData
        except (AttributeError, TypeError, ValueError) as error:
            raise Refused(MISMATCH, f"CT image without {getattr(error, 'name', None) or 'image pixel module'}") \
                from error
        if len(pixels) < expected:
            raise Refused(MISMATCH, f"PixelData truncated: {len(pixels)} of {expected} bytes")
        if "ImagePositionPatient" not in ds or "PixelSpacing" not in ds:
            raise Refused(MISMATCH, "CT image without ImagePositionPatient/PixelSpacing")
    elif not ds.get("StructureSetROISequence"):
        raise Refused(MISMATCH, "RTSTRUCT without StructureSetROISequence")


def check(event) -> Accepted:
    """The store request ``event`` as an Accepted, or Refused (module docstring)."""
    request = event.request
    sop, sop_class = str(request.AffectedSOPInstanceUID or ""), str(request.AffectedSOPClassUID or "")
    if not (valid_uid(sop) and valid_uid(sop_class)):
        raise Refused(MISMATCH, "Affected SOP Class/Instance UID is not a valid UID")
    kind = PLANNABLE.get(sop_class)
    if kind is None:
        raise Refused(NOT_SUPPORTED, "SOP class not planned with: only CT Image, RT Structure Set")
    ds = _decoded(event)
    if ds.get("SOPInstanceUID") != sop or ds.get("SOPClassUID") != sop_class:
        raise Refused(MISMATCH, "SOPInstanceUID/SOPClassUID differ from the request's")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        value = ds.get(keyword)
        if (value is not None or keyword != "FrameOfReferenceUID") and not valid_uid(value):
            raise Refused(MISMATCH, f"{keyword} is missing or not a valid UID")
    _check_content(ds, kind)
    if kind == "RTSTRUCT":
        key = _moment(ds.get("StructureSetDate"), ds.get("StructureSetTime"))
    else:
        key = _moment(ds.get("SeriesDate"), ds.get("SeriesTime"))
    try:
        data = event.encoded_dataset()
    except Exception as error:  # no file meta could be made: the request is inconsistent
        raise Refused(UNDECODABLE, f"cannot be encoded: {type(error).__name__}") from error
    return Accepted(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop, sop_class, key, data)
