"""``rtautoplan export … --nifti``: the bundled prostate01 case and a planned output as NIfTI, read back with
SimpleITK: geometry, HU, masks, the label map and the dose."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtautoplan.cli import main
from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.errors import InputError
from rtautoplan.export import export_nifti
from rtautoplan.physics.dij import coarse_grid
from rtautoplan.plan import Dose

from conftest import PROSTATE01 as PROSTATE

ROOT = PROSTATE.parents[1]


@pytest.fixture
def case(prostate01):
    return prostate01


@pytest.fixture
def exported(prostate01_nifti):
    return prostate01_nifti


def assert_geometry(image: sitk.Image, grid) -> None:
    """The NIfTI's geometry (LPS, as SimpleITK reads it) is the CT grid's: origin = ImagePositionPatient of
    the first slice, spacing (column, row, slice), direction columns = row, column, slice normal."""
    assert np.allclose(image.GetOrigin(), grid.origin, atol=1e-4)
    assert np.allclose(image.GetSpacing(), grid.spacing[::-1], atol=1e-5)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), grid.axes[::-1].T, atol=1e-6)
    assert image.GetSize()[:3] == tuple(grid.shape[::-1])


def test_ct_is_int16_hu_on_the_ct_grid(exported, case):
    image = sitk.ReadImage(str(exported / "ct.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert_geometry(image, case.grid)
    assert np.array_equal(sitk.GetArrayFromImage(image), case.hu)
    # a voxel's physical point is where the CT grid puts it
    k, j, i = 20, 30, 40
    assert np.allclose(image.TransformIndexToPhysicalPoint((i, j, k)), case.grid.index_to_patient([k, j, i]))


def test_one_uint8_mask_per_structure_with_its_voxel_count(exported, case):
    for s in case.structures:
        image = sitk.ReadImage(str(exported / f"mask_{s.name}.nii.gz"))
        assert image.GetPixelID() == sitk.sitkUInt8
        assert_geometry(image, case.grid)
        mask = sitk.GetArrayFromImage(image)
        assert int(mask.sum()) == int(s.mask.count) and np.array_equal(mask.astype(bool), s.mask)


def test_label_map_holds_every_structure_in_non_overlapping_layers(exported, case):
    table = json.loads((exported / "labels.json").read_text())
    assert table["labels"] == {str(n): s.name for n, s in enumerate(case.structures, start=1)}
    assert table["frame_of_reference_uid"] == case.refs.frame_of_reference_uid
    image = sitk.ReadImage(str(exported / "labels.nii.gz"))
    assert image.GetDimension() == 4 and image.GetSize()[3] == table["layers"] > 1  # External holds the organs
    layers = sitk.GetArrayFromImage(image)  # [layer, k, j, i]
    for label, s in enumerate(case.structures, start=1):
        assert int((layers == label).sum()) == int(s.mask.count)
        assert np.array_equal((layers == label).any(axis=0), s.mask)
    assert_geometry(image[:, :, :, 0], case.grid)


def output_folder(case, folder: Path) -> Path:
    """What `rtautoplan plan` leaves that the export reads: RS_rtautoplan.dcm (on the case's CT) and
    RD_rtautoplan.dcm (a smooth dose on a coarser grid)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rtstruct(case, folder / "RS_rtautoplan.dcm", uid_seed="export-test")
    grid = coarse_grid(case.grid, (1, 2, 2))
    x, y, z = grid.centres()
    gy = 78.0 * np.exp(-(x ** 2 + (y - 10) ** 2 + z ** 2) / 5000.0)
    write_rtdose(case, Dose(grid, gy), folder / "RD_rtautoplan.dcm", uid_seed="export-test")
    (folder / "plan_log.json").write_text(json.dumps({"case": case.case_id}))
    return folder


def test_output_folder_adds_the_dose_in_gy_on_its_own_grid(tmp_path, case):
    out = output_folder(case, tmp_path / "out")
    assert main(["export", str(out), "--nifti", str(tmp_path / "nifti"), "--ct", str(PROSTATE)]) == 0
    image = sitk.ReadImage(str(tmp_path / "nifti" / "dose.nii.gz"))
    grid = coarse_grid(case.grid, (1, 2, 2))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert_geometry(image, grid)
    x, y, z = grid.centres()
    assert np.allclose(sitk.GetArrayFromImage(image), 78.0 * np.exp(-(x ** 2 + (y - 10) ** 2 + z ** 2) / 5000.0),
                       atol=1e-4)
    assert_geometry(sitk.ReadImage(str(tmp_path / "nifti" / "ct.nii.gz")), case.grid)
    for s in case.structures:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nifti" / f"mask_{s.name}.nii.gz"))).sum() \
            == s.mask.count


def test_output_folder_needs_the_case_it_was_planned_from(tmp_path, case, capsys):
    out = output_folder(case, tmp_path / "out")
    with pytest.raises(InputError, match="--ct CASE"):
        export_nifti(out, tmp_path / "nifti")
    hn01 = ROOT / "sample_data" / "hn01"
    assert main(["export", str(out), "--nifti", str(tmp_path / "nifti"), "--ct", str(hn01)]) == 2
    error = capsys.readouterr().err
    assert "RS_rtautoplan.dcm" in error and "not the CT of hn01" in error and "--ct" in error
