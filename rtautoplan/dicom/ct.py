"""Writing a case's CT as a CT Image Storage series (PS3.3 A.3), one file per slice."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from rtautoplan.case import Case, Grid
from rtautoplan.dicom import modules
from rtautoplan.dicom.uid import check_refs

RESCALE_INTERCEPT = -1024  # HU = stored value - 1024; stored as uint16, so HU below -1024 are clipped to -1024
CT_SERIES_NUMBER = 1


def slice_position(grid: Grid, k: int) -> np.ndarray:
    """ImagePositionPatient (mm) of slice ``k``: the centre of its first pixel."""
    return grid.index_to_patient([k, 0, 0])


def slice_location(grid: Grid, k: int) -> float:
    """SliceLocation (mm): z for axial slices, else the position along the slice normal."""
    position = slice_position(grid, k)
    normal = grid.axes[0]
    return float(position[2]) if abs(abs(normal[2]) - 1.0) < 1e-6 else float(position @ normal)


def write_ct(case: Case, folder: str | Path) -> list[Path]:
    """Write ``case.hu`` as ``folder/CT_<k>.dcm``, k = 0 … slices-1 in grid order.

    Identities (study, series, frame of reference, per-slice SOP instance, PatientPosition) come
    from ``case.refs`` (complete them with ``uid.complete_refs`` for a case built from scratch).
    """
    grid = case.grid
    check_refs(case.refs, grid.shape[0])
    when = _dt.datetime.now()
    paths = []
    for k in range(grid.shape[0]):  # one slice at a time: no full-volume copies
        ds = _ct_slice(case, k, when)
        stored = np.clip(case.hu[k].astype(np.int32) - RESCALE_INTERCEPT, 0, np.iinfo(np.uint16).max)
        ds.PixelData = stored.astype("<u2").tobytes()
        paths.append(modules.save(ds, Path(folder) / f"CT_{k}.dcm"))
    return paths


def _ct_slice(case: Case, k: int, when: _dt.datetime) -> Dataset:
    """Every module of one CT slice except its pixel data."""
    refs, grid = case.refs, case.grid
    ds = modules.new_dataset(CTImageStorage, refs.ct_sop_instance_uids[k], when)
    modules.add_patient(ds, refs)
    modules.add_general_study(ds, refs)
    modules.add_general_series(ds, "CT", refs.ct_series_instance_uid, CT_SERIES_NUMBER,
                               description=f"rtautoplan {case.case_id}"[:64],
                               patient_position=refs.patient_position)
    modules.add_frame_of_reference(ds, refs)
    modules.add_general_equipment(ds)
    # General Image (C.7.6.1)
    ds.InstanceNumber = k + 1
    ds.ImageLaterality = "U"  # unpaired body part: so General Series' Laterality (2C) is not needed
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    # Image Plane (C.7.6.2)
    ds.ImagePositionPatient = [modules.format_ds(v) for v in slice_position(grid, k)]
    ds.ImageOrientationPatient = [modules.format_ds(v) for v in grid.orientation]
    ds.PixelSpacing = [modules.format_ds(grid.spacing[1]), modules.format_ds(grid.spacing[2])]
    ds.SliceThickness = modules.format_ds(grid.spacing[0])
    ds.SliceLocation = modules.format_ds(slice_location(grid, k))
    # Image Pixel (C.7.6.3) and CT Image (C.8.2.1)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.AcquisitionNumber = ""
    # VOI LUT (C.11.2): a soft-tissue window
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds
