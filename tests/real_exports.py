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
    planes, contours = _contours(rtss)
    lungs = [c for name, roi in contours.items() if "lung" in name.lower() for c in roi]
    points = np.column_stack([x.ravel(), y.ravel()])
    for n, (z, sop) in enumerate(sorted(planes.items())):
        hu = np.where(_inside(contours["BODY"], z, points), 0, AIR_HU)
        hu[_inside(lungs, z, points)] = LUNG_HU
        hu = hu.reshape(x.shape)
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

