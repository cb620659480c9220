"""Shared fixtures: ``small_case`` (a complete small Case built in memory) and its builder.

The case is deliberately awkward: anisotropic voxels (2.5 × 1.5 × 2.0 mm), a non-square
in-plane pixel, an OAR with a hole and an island in the hole, a one-voxel structure, and
HU covering the stored range (−1024 … 3071).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtautoplan.case import AXIAL_HFS, Case, DicomRefs, DoseLevel, Grid, Prescription, Role, Structure
from rtautoplan.dicom.uid import complete_refs

PROSTATE01 = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"
SHAPE = (24, 40, 36)
SPACING = (2.5, 1.5, 2.0)  # (dz, PixelSpacing[0] = row step, PixelSpacing[1] = column step) mm
ORIGIN = (-35.0, -30.0, -28.75)


def build_small_case(spacing=SPACING, orientation=AXIAL_HFS, origin=ORIGIN, patient_position="HFS",
                     shape=SHAPE, seed=0) -> Case:
    """The small test case on any grid; masks are defined in index space, so they are the same voxels
    whatever the spacing or orientation."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = shape
    k, j, i = np.indices(shape, dtype=float)
    ck, cj, ci = (nk - 1) / 2, (nj - 1) / 2, (ni - 1) / 2
    external = ((k - ck) / (0.48 * nk)) ** 2 + ((j - cj) / (0.45 * nj)) ** 2 + ((i - ci) / (0.45 * ni)) ** 2 <= 1
    ctv = (k - ck) ** 2 + (j - cj + 4) ** 2 + (i - ci - 5) ** 2 <= 4.2 ** 2
    cord = ((j - cj - 10) ** 2 + (i - ci) ** 2 <= 2.3 ** 2) & (k >= 2) & (k <= nk - 3)
    r2 = (j - cj + 3) ** 2 + (i - ci + 8) ** 2
    ring = (r2 <= 4.5 ** 2) & (r2 >= 2.5 ** 2) & (k >= 5) & (k <= nk - 6)
    ring |= (r2 <= 0.5) & (k >= 9) & (k <= 11)  # an island inside the hole
    dot = np.zeros(shape, bool)
    dot[7, 11, 23] = True
    hu = np.where(external, rng.integers(-120, 120, shape), -1000).astype(np.int16)
    hu[cord] = 700
    hu[0, 0, :4] = (-1024, -1000, 3071, 0)
    structures = (
        Structure("External", external, Role.EXTERNAL, roi_name="External", color=(0, 255, 0)),
        Structure("CTV_6000", ctv, Role.CTV, level=2, rx_gy=60.0, roi_name="CTV_6000", color=(255, 0, 0)),
        Structure("SpinalCord", cord, Role.OAR, level=1, roi_name="SpinalCord", color=(255, 255, 0)),
        Structure("Esophagus", ring, Role.OAR, level=3, roi_name="Esophagus", color=(139, 69, 19)),
        Structure("Lens_L", dot, Role.OAR, level=3, roi_name="Lens_L", color=(255, 0, 255)),
    )
    refs = DicomRefs(patient_id="RTAP-SMALL", patient_name="Small^Case", patient_position=patient_position,
                     extra={"StudyDate": "20240102", "StudyTime": "101010", "StudyID": "S1", "PatientSex": "O",
                            "AccessionNumber": "A1"})
    grid = Grid(origin, spacing, shape, orientation)
    return Case("small", grid, hu, structures, Prescription((DoseLevel("CTV_6000", 60.0),), 30),
                complete_refs(refs, nk, seed=f"small/{seed}/{orientation}"))


@pytest.fixture
def small_case() -> Case:
    """A 24×40×36 HFS case, spacing (2.5, 1.5, 2.0) mm: External, CTV_6000, SpinalCord, Esophagus
    (a ring with a hole and an island), Lens_L (one voxel); 60 Gy in 30 fractions."""
    return build_small_case()


@pytest.fixture
def make_small_case():
    """The builder of ``small_case``, for other grids: ``make_small_case(spacing=…, orientation=…)``."""
    return build_small_case


def require_tool(path: str) -> str:
    """Skip (or fail, with RTAUTOPLAN_REQUIRE_TOOLS=1 as in CI) when an external checker is missing."""
    if shutil.which(path) is None:
        if os.environ.get("RTAUTOPLAN_REQUIRE_TOOLS"):
            pytest.fail(f"{path} is required (RTAUTOPLAN_REQUIRE_TOOLS is set) but not installed")
        pytest.skip(f"{path} not installed")
    return path


@pytest.fixture
def tool():
    """``tool("/usr/bin/dciodvfy")`` → its path, or skip the test when it is absent."""
    return require_tool


@pytest.fixture
def storescp(tmp_path, tool):
    """dcmtk's storescp on a free loopback port, storing into tmp_path/storescp (``dicom_peers``)."""
    from dicom_peers import storescp_peer

    with storescp_peer(tmp_path / "storescp", tool("/usr/bin/storescp")) as peer:
        yield peer


@pytest.fixture
def orthanc(tmp_path, tool):
    """An Orthanc server of our own (free ports, folders in tmp_path/orthanc)."""
    from dicom_peers import orthanc_peer

    with orthanc_peer(tmp_path / "orthanc", tool("/usr/sbin/Orthanc")) as peer:
        yield peer


@pytest.fixture(scope="session")
def prostate01():
    """sample_data/prostate01 as ``read_case`` reads it (read once per session: do not modify)."""
    from rtautoplan.dicom.read import read_case

    return read_case(PROSTATE01)


@pytest.fixture(scope="session")
def prostate01_nifti(tmp_path_factory) -> Path:
    """The folder ``rtautoplan export sample_data/prostate01 --nifti DIR`` wrote (ct, masks, label map)."""
    from rtautoplan.cli import main

    out = tmp_path_factory.mktemp("prostate01_nifti")
    assert main(["export", str(PROSTATE01), "--nifti", str(out)]) == 0
    return out
