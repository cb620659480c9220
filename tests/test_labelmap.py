"""read_case with structures from a label map: prostate01's masks exported as a label map, the RTSTRUCT
removed, must read back as the same structures; a map on another grid is resampled; bad maps are InputErrors
naming the file."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rtautoplan.case import Grid
from rtautoplan.dicom.contours import roi_mask
from rtautoplan.dicom.read import read_case
from rtautoplan.dicom.rtstruct import read_rtstruct, write_rtstruct
from rtautoplan.errors import InputError
from rtautoplan.labelmap import read_label_table, write_label_map

from conftest import PROSTATE01 as PROSTATE


@pytest.fixture
def reference(prostate01):
    return prostate01


@pytest.fixture
def folder(tmp_path, prostate01_nifti):
    """A copy of prostate01 whose RTSTRUCT is replaced by the exported label map and its table."""
    case = tmp_path / "prostate01"
    shutil.copytree(PROSTATE, case)
    (case / "RTSTRUCT.dcm").unlink()
    for name in ("labels.nii.gz", "labels.json"):
        shutil.copy(prostate01_nifti / name, case / name)
    return case


def same_structures(case, reference):
    assert [s.name for s in case.structures] == [s.name for s in reference.structures]
    for s in reference.structures:
        got = case.structure(s.name)
        assert int(got.mask.count) == int(s.mask.count) and np.array_equal(got.mask, s.mask), s.name
        assert (got.role, got.level, got.rx_gy) == (s.role, s.level, s.rx_gy), s.name
    assert case.prescription == reference.prescription


def test_label_map_reads_as_the_rtstruct_structures(folder, reference):
    case = read_case(folder)
    same_structures(case, reference)
    assert case.grid == reference.grid and np.array_equal(case.hu, reference.hu)
    assert case.refs.ct_series_instance_uid == reference.refs.ct_series_instance_uid


def test_output_rtstruct_of_a_label_map_case_has_contours_from_the_masks(folder, tmp_path):
    case = read_case(folder)
    structure_set = read_rtstruct(write_rtstruct(case, tmp_path / "RS.dcm"))
    for roi, s in zip(structure_set.rois, case.structures):
        assert roi.name == s.name and roi.contours
        assert np.array_equal(roi_mask(roi.contours, case.grid, roi.name)[0], s.mask), s.name


def write_on(folder: Path, reference, grid: Grid, place) -> None:
    """The reference masks, placed on ``grid`` by ``place(mask)``, as folder/labels.nii.gz + labels.json."""
    masks = [(s.name, place(s.mask)) for s in reference.structures]
    write_label_map(masks, grid, folder / "labels.nii.gz", folder / "labels.json")


def test_map_stored_in_ras_order_is_the_same_voxels(folder, reference):
    grid = reference.grid
    far = grid.index_to_patient([0, grid.shape[1] - 1, grid.shape[2] - 1])
    flipped = Grid(tuple(far), grid.spacing, grid.shape, (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    write_on(folder, reference, flipped, lambda m: m[:, ::-1, ::-1])
    same_structures(read_case(folder), reference)


def test_finer_map_is_resampled_to_the_ct_with_nearest_neighbour(folder, reference):
    grid = reference.grid
    spacing = tuple(s / 2 for s in grid.spacing)
    origin = grid.index_to_patient([-0.25, -0.25, -0.25])
    fine = Grid(tuple(origin), spacing, tuple(2 * n for n in grid.shape), grid.orientation)
    write_on(folder, reference, fine, lambda m: np.asarray(m).repeat(2, 0).repeat(2, 1).repeat(2, 2))
    same_structures(read_case(folder), reference)


def test_names_go_through_tg263_handling(folder, reference):
    table = json.loads((folder / "labels.json").read_text())
    table["labels"]["1"] = "urinary_bladder"  # TotalSegmentator's name: a known synonym
    (folder / "labels.json").write_text(json.dumps(table))
    case = read_case(folder)
    assert case.structure("Bladder").roi_name == "urinary_bladder"
    table["labels"]["1"] = "Harnblase"
    (folder / "labels.json").write_text(json.dumps(table))
    with pytest.raises(InputError) as info:
        read_case(folder)
    message = str(info.value)
    assert "labels.nii.gz label 'Harnblase'" in message and "unknown structure name" in message
    assert "Rename the label in" in message and "structure_names" in message
    (folder / "prescription.json").write_text(json.dumps({"fractions": 39, "levels": [{"target": "PTV_7800",
                                              "dose_gy": 78.0}], "structure_names": {"Harnblase": "Bladder"},
                                              "ignore": ["Femur_Head_L"]}))
    case = read_case(folder)
    assert case.structure("Bladder").roi_name == "Harnblase" and not case.has("Femur_Head_L")
    assert np.array_equal(case.structure("Bladder").mask, reference.structure("Bladder").mask)


def test_nnunet_table_name_to_label(folder, reference):
    table = json.loads((folder / "labels.json").read_text())["labels"]
    (folder / "labels.json").unlink()
    labels = {"background": 0, **{name: int(label) for label, name in table.items()}}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                     "labels": labels}))
    same_structures(read_case(folder), reference)


def test_unreadable_image_names_the_file(folder):
    (folder / "labels.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"labels\.nii\.gz: cannot be read as an image"):
        read_case(folder)


def test_labels_the_table_does_not_name_stop(folder):
    table = json.loads((folder / "labels.json").read_text())
    del table["labels"]["2"]
    (folder / "labels.json").write_text(json.dumps(table))
    with pytest.raises(InputError, match=r"labels\.nii\.gz: has labels the table does not name: 2\. Name them"):
        read_case(folder)


def test_table_label_not_in_the_image_warns(folder, reference, caplog):
    table = json.loads((folder / "labels.json").read_text())
    table["labels"]["99"] = "Liver"
    (folder / "labels.json").write_text(json.dumps(table))
    with caplog.at_level(logging.WARNING):
        case = read_case(folder)
    assert "table labels not in the image: 99 (Liver)" in caplog.text
    same_structures(case, reference)


def test_other_frame_of_reference_stops(folder):
    table = json.loads((folder / "labels.json").read_text())
    table["frame_of_reference_uid"] = "1.2.3.4"
    (folder / "labels.json").write_text(json.dumps(table))
    with pytest.raises(InputError, match=r"labels\.json: frame_of_reference_uid 1\.2\.3\.4 is not that of CT series"):
        read_case(folder)


def test_map_outside_the_ct_stops(folder, reference):
    grid = reference.grid
    away = Grid((grid.origin[0], grid.origin[1], grid.origin[2] + 500.0), grid.spacing, grid.shape, grid.orientation)
    write_on(folder, reference, away, lambda m: m)
    with pytest.raises(InputError, match=r"labels\.nii\.gz: does not overlap the CT: the label map spans .* z = 438"):
        read_case(folder)


def test_target_partly_off_the_ct_stops(folder, reference):
    grid = reference.grid
    ptv = reference.structure("PTV_7800").mask
    k_top = int(np.flatnonzero(ptv.any(axis=(1, 2)))[-1])
    shift = grid.shape[0] - 1 - k_top + 1  # the PTV's top slice one slice beyond the CT
    moved = Grid(tuple(grid.index_to_patient([shift, 0, 0])), grid.spacing, grid.shape, grid.orientation)
    write_on(folder, reference, moved, lambda m: m)
    with pytest.raises(InputError, match=r"label 'PTV_7800': \d+ of its voxels lie outside the CT; a target"):
        read_case(folder)


def test_probability_image_is_not_a_label_map(folder, reference):
    image = sitk.GetImageFromArray(np.full(reference.grid.shape, 0.5, np.float32))
    sitk.WriteImage(image, str(folder / "labels.nii.gz"))
    with pytest.raises(InputError, match="fractional values"):
        read_case(folder)


@pytest.mark.parametrize("content, problem", [
    ("{", "not valid JSON"),
    ('{"labels": {"1": "Bladder", "2": "Bladder"}}', "given to several labels"),
    ('{"labels": {"x": "Bladder"}}', "is not a label"),
    ('{"labels": {"whole": [1, 2]}}', "is a region"),
])
def test_bad_tables_name_the_file(tmp_path, content, problem):
    (tmp_path / "labels.json").write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        read_label_table(tmp_path / "labels.json")
    assert str(info.value).startswith(str(tmp_path / "labels.json"))


def test_image_without_table_and_two_images(folder):
    (folder / "labels.json").unlink()
    with pytest.raises(InputError, match="has no label table"):
        read_case(folder)
    shutil.copy(folder / "labels.nii.gz", folder / "segmentation.nii.gz")
    with pytest.raises(InputError, match="holds 2 label maps"):
        read_case(folder)
