"""The public DICOM-RT exports of tests/data/real (fetched by tests/data/real/fetch.py) as case folders.

The Eclipse exports lack their CT: dicompyler-core's breast (RTSTRUCT of 10 ROIs on 98 slices, RTPLAN) has
one of its 98 CT slices, SlicerRT's prostate phantom (RTSTRUCT of 16 ROIs on 92 slices, RTPLAN) none.
``density_ct_case`` rebuilds a CT series under the real RTSTRUCT: one slice per contour plane (the
RTSTRUCT's own referenced SOPInstanceUIDs) on its frame of reference, water (0 HU) inside BODY and lung
(-750 HU) inside the lung contours, air elsewhere: a density-override CT, as a physicist builds for a phantom.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon

DATA = Path(__file__).resolve().parent / "data" / "real"
_spec = importlib.util.spec_from_file_location("fetch_real_exports", DATA / "fetch.py")
fetch = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fetch)
LUNG_HU = -750
AIR_HU = -1000


def real_export(source: str) -> Path:
    """The fetched folder of ``source`` (e.g. "dicompyler-core"); skips the test when it was not fetched."""
    root = Path(os.environ.get("RTAUTOPLAN_REAL_EXPORTS", DATA / "cache"))
    folder = root / source
    pinned = next(s for s in fetch.SOURCES if s.name == source)
    if not fetch.complete(folder, pinned):
        pytest.skip(f"{folder} missing or incomplete: run python tests/data/real/fetch.py")
    return folder


def copy_case(files, folder: Path) -> Path:
    """A case folder holding copies of ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)
    return folder


def _contours(rtss: pydicom.Dataset) -> tuple[dict[float, str], dict[str, list[tuple[float, np.ndarray]]]]:
    """z (mm, to 0.01) → referenced CT SOPInstanceUID; ROIName → its contours as (z, xy points) in mm."""
    names = {r.ROINumber: r.ROIName for r in rtss.StructureSetROISequence}
    planes, contours = {}, {}
    for roi in rtss.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
            z = round(float(xyz[0, 2]), 2)
            planes.setdefault(z, str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
            contours.setdefault(names[roi.ReferencedROINumber], []).append((z, xyz[:, :2]))
    return planes, contours


def _inside(contours: list[tuple[float, np.ndarray]], z: float, points: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie inside the contours on plane z (even-odd, as RTSTRUCT holes are drawn)."""
    inside = np.zeros(len(points), bool)
    for plane, xy in contours:
        if abs(plane - z) < 0.01:
            inside ^= Polygon(xy).contains_points(points)
    return inside


def density_ct_case(source: Path, folder: Path, template: Path, spacing_mm: float = 4.0,
                    with_rtplan: bool = True) -> Path:
    """``folder`` with ``source``'s rtss.dcm (and rtplan.dcm) and a density-override CT series under it: one
    slice per contour plane with the SOPInstanceUIDs the RTSTRUCT references, on its frame of reference, the
    BODY's bounding box (+ 10 mm) in pixels of ``spacing_mm``; ``template``: a CT slice lending the modules
    the RTSTRUCT does not fix (pixel format, PatientPosition)."""
    folder.mkdir(parents=True, exist_ok=True)
    rtss = pydicom.dcmread(source / "rtss.dcm")
    ct = pydicom.dcmread(template)
    dtype = ct.pixel_array.dtype
    shutil.copy(source / "rtss.dcm", folder / "rtss.dcm")
    if with_rtplan:
        shutil.copy(source / "rtplan.dcm", folder / "rtplan.dcm")
    planes, contours = _contours(rtss)
    body = np.concatenate([xy for _, xy in contours["BODY"]])
    lo, hi = body.min(axis=0) - 10.0, body.max(axis=0) + 10.0
    x, y = np.meshgrid(np.arange(lo[0], hi[0], spacing_mm), np.arange(lo[1], hi[1], spacing_mm))
    points = np.column_stack([x.ravel(), y.ravel()])
    lungs = [c for name, roi in contours.items() if "lung" in name.lower() for c in roi]
    frame = rtss.ReferencedFrameOfReferenceSequence[0]
    ct.FrameOfReferenceUID = frame.FrameOfReferenceUID
    ct.SeriesInstanceUID = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName"):
        setattr(ct, keyword, rtss.get(keyword))
    ct.Rows, ct.Columns = x.shape
    ct.PixelSpacing = [spacing_mm, spacing_mm]
    for n, (z, sop) in enumerate(sorted(planes.items())):
        hu = np.where(_inside(contours["BODY"], z, points), 0, AIR_HU)
        hu[_inside(lungs, z, points)] = LUNG_HU
        ds = copy.deepcopy(ct)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.ImagePositionPatient = [float(lo[0]), float(lo[1]), z]
        ds.SliceLocation, ds.InstanceNumber = z, n + 1
        stored = (hu.reshape(x.shape) - float(ct.RescaleIntercept)) / float(ct.RescaleSlope)
        ds.PixelData = stored.astype(dtype).tobytes()
        ds.save_as(folder / f"ct.{n}.dcm")
    return folder
