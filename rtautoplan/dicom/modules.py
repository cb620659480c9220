"""The PS3.3 modules every object we write shares, and the file format they are saved in.

Each ``add_*`` function fills one module of a ``pydicom.Dataset`` in place, named after PS3.3
(C.7.1.1 Patient, C.7.2.1 General Study, C.7.3.1 General Series, C.8.8.1 RT Series, C.7.4.1 Frame of
Reference, C.7.5.1 General Equipment, C.12.1 SOP Common). Type 2 attributes we have no value for are
written empty, as the standard requires. CT, RTSTRUCT, RTPLAN and RTDOSE writers all start from
``new_dataset`` and end with ``save``.
"""

from __future__ import annotations

import datetime as _dt
from importlib import metadata
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from rtautoplan.case import DicomRefs

MANUFACTURER = "rtautoplan"

# refs.extra keys written back to the module they belong to (all type 2 unless noted).
PATIENT_EXTRA = ("PatientBirthDate", "PatientSex")
STUDY_EXTRA = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
STUDY_OPTIONAL = ("StudyDescription",)  # type 3: written only when known

_TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}


def software_version() -> str:
    """The installed rtautoplan version (SoftwareVersions)."""
    try:
        return metadata.version("rtautoplan")
    except metadata.PackageNotFoundError:
        return "unknown"


def format_ds(value: float) -> str:
    """A Decimal String (DS, at most 16 characters) of ``value`` (mm, degrees …): the shortest text that
    reads back as the same float when it fits, else as many digits as fit. Rounded to 1e-9 first so
    that float noise (-0.0, 1e-17) is written as 0."""
    return format_number_as_ds(round(float(value), 9) + 0.0)


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """PS3.10 file meta information, explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"RTAUTOPLAN_{software_version()}"[:16]
    return meta


def new_dataset(sop_class_uid: str, sop_instance_uid: str, when: _dt.datetime | None = None) -> Dataset:
    """An empty dataset with its file meta and the SOP Common module."""
    ds = Dataset()
    ds.file_meta = file_meta(sop_class_uid, sop_instance_uid)
    add_sop_common(ds, sop_class_uid, sop_instance_uid, when)
    return ds


def add_sop_common(ds: Dataset, sop_class_uid: str, sop_instance_uid: str, when: _dt.datetime | None = None) -> None:
    """SOP Common (C.12.1). SpecificCharacterSet is set by ``save`` once all text is in."""
    when = when or _dt.datetime.now()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")


def add_patient(ds: Dataset, refs: DicomRefs) -> None:
    """Patient module (C.7.1.1)."""
    ds.PatientName = refs.patient_name
    ds.PatientID = refs.patient_id
    for keyword in PATIENT_EXTRA:
        setattr(ds, keyword, refs.extra.get(keyword, ""))


def add_general_study(ds: Dataset, refs: DicomRefs) -> None:
    """General Study module (C.7.2.1): the study of the input CT."""
    ds.StudyInstanceUID = refs.study_instance_uid
    for keyword in STUDY_EXTRA:
        setattr(ds, keyword, refs.extra.get(keyword, ""))
    for keyword in STUDY_OPTIONAL:
        if refs.extra.get(keyword):
            setattr(ds, keyword, refs.extra[keyword])


def add_general_series(ds: Dataset, modality: str, series_instance_uid: str, series_number: int,
                       description: str = "", patient_position: str | None = None) -> None:
    """General Series module (C.7.3.1), for images. PatientPosition is required for CT and MR."""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    if description:
        ds.SeriesDescription = description
    if patient_position is not None:
        ds.PatientPosition = patient_position


def add_rt_series(ds: Dataset, modality: str, series_instance_uid: str, series_number: int,
                  description: str = "", when: _dt.datetime | None = None) -> None:
    """RT Series module (C.8.8.1), for RTSTRUCT, RTPLAN, RTDOSE."""
    when = when or _dt.datetime.now()
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.SeriesTime = when.strftime("%H%M%S")
    if description:
        ds.SeriesDescription = description
    ds.OperatorsName = ""


def add_frame_of_reference(ds: Dataset, refs: DicomRefs) -> None:
    """Frame of Reference module (C.7.4.1): the input CT's patient coordinate system."""
    ds.FrameOfReferenceUID = refs.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def add_general_equipment(ds: Dataset) -> None:
    """General Equipment module (C.7.5.1): this software made the object."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = software_version()


def character_set(ds: Dataset) -> str:
    """SpecificCharacterSet for the text in ``ds``: ISO_IR 100 (Latin-1, read by every TPS) when all of
    it fits, else ISO_IR 192 (UTF-8)."""
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            try:
                for value in values:
                    str(value).encode("latin-1")
            except UnicodeEncodeError:
                return "ISO_IR 192"
    return "ISO_IR 100"


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a PS3.10 file (preamble, file meta, explicit VR little endian)."""
    path = Path(path)
    ds.SpecificCharacterSet = character_set(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
