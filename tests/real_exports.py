"""The public DICOM-RT exports of tests/data/real (fetched by tests/data/real/fetch.py) as case folders.

The dicompyler-core export (a Varian Eclipse breast boost: RTSTRUCT of 10 ROIs on 98 slices, an RTPLAN,
and one of its 98 CT slices) lacks 97 CT slices. ``density_ct_case`` rebuilds a CT series under the
real RTSTRUCT: one slice per contour plane (the RTSTRUCT's own referenced SOPInstanceUIDs), on the real
slice's frame, pixel grid coarsened by an integer factor, water (0 HU) inside BODY and lung (-750 HU)
inside the lung contours, air elsewhere: a density-override CT, as a physicist builds for a phantom.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon

DATA = Path(__file__).resolve().parent / "data" / "real"
LUNG_HU = -750
AIR_HU = -1000


def real_export(source: str) -> Path:
    """The fetched folder of ``source`` (e.g. "dicompyler-core"); skips the test when it was not fetched."""
    root = Path(os.environ.get("RTAUTOPLAN_REAL_EXPORTS", DATA / "cache"))
    folder = root / source
    if not folder.is_dir():
        pytest.skip(f"{folder} missing: run python tests/data/real/fetch.py")
    return folder


def copy_case(files, folder: Path) -> Path:
    """A case folder holding copies of ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / Path(f).name)
    return folder


def _planes(rtss: pydicom.Dataset) -> dict[float, str]:
    """z (mm, rounded to 0.01) → referenced CT SOPInstanceUID, over every contour of the RTSTRUCT."""
    planes = {}
    for roi in rtss.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            z = round(float(contour.ContourData[2]), 2)
            planes.setdefault(z, str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
    return planes


def _inside(rtss: pydicom.Dataset, roi_names: set[str], z: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points (x, y) inside any contour of the named ROIs on plane z (even-odd within one ROI)."""
    numbers = {r.ROINumber for r in rtss.StructureSetROISequence if r.ROIName in roi_names}
    points = np.column_stack([x.ravel(), y.ravel()])
    inside = np.zeros(len(points), bool)
    for roi in rtss.ROIContourSequence:
        if roi.ReferencedROINumber not in numbers:
            continue
        roi_inside = np.zeros(len(points), bool)
        for contour in roi.get("ContourSequence", []):
            xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
            if abs(xyz[0, 2] - z) < 0.01:
                roi_inside ^= Polygon(xyz[:, :2]).contains_points(points)
        inside |= roi_inside
    return inside.reshape(x.shape)


def density_ct_case(source: Path, folder: Path, factor: int = 4, with_rtplan: bool = True) -> Path:
    """``folder`` with the real RTSTRUCT (and RTPLAN) and a density-override CT series under it."""
    folder.mkdir(parents=True, exist_ok=True)
    rtss = pydicom.dcmread(source / "rtss.dcm")
    template = pydicom.dcmread(source / "ct.0.dcm")
    shutil.copy(source / "rtss.dcm", folder / "rtss.dcm")
    if with_rtplan:
        shutil.copy(source / "rtplan.dcm", folder / "rtplan.dcm")
    dy, dx = (float(v) * factor for v in template.PixelSpacing)
    rows, cols = template.Rows // factor, template.Columns // factor
    shift = (factor - 1) / 2 * np.asarray(template.PixelSpacing, float)
    x0 = float(template.ImagePositionPatient[0]) + shift[1]
    y0 = float(template.ImagePositionPatient[1]) + shift[0]
    x, y = np.meshgrid(x0 + dx * np.arange(cols), y0 + dy * np.arange(rows))
    lungs = {r.ROIName for r in rtss.StructureSetROISequence if "lung" in r.ROIName.lower()}
    for n, (z, sop) in enumerate(sorted(_planes(rtss).items())):
        hu = np.where(_inside(rtss, {"BODY"}, z, x, y), 0, AIR_HU)
        hu[_inside(rtss, lungs, z, x, y)] = LUNG_HU
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.ImagePositionPatient = [x0, y0, z]
        ds.SliceLocation = z
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns, ds.PixelSpacing = rows, cols, [dy, dx]
        stored = (hu - float(template.RescaleIntercept)) / float(template.RescaleSlope)
        ds.PixelData = stored.astype(template.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"ct.{n}.dcm")
    return folder

