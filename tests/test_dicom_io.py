"""write_case → read_case round trips, coordinate conventions and the rt-utils 1.2.7 pitfalls."""

import ast
import importlib.metadata
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RTStructureSetStorage

from rtautoplan.case import Role, Structure
from rtautoplan.dicom.read import read_case, write_case
from rtautoplan.dicom.rtstruct import read_rtstruct, write_rtstruct
from rtautoplan.dicom.uid import new_uid

FFS = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def assert_same_case(read, written):
    assert read.grid == written.grid  # origin, spacing, shape, orientation: exactly
    assert read.hu.dtype == np.int16 and np.array_equal(read.hu, written.hu)
    assert [s.name for s in read.structures] == [s.name for s in written.structures]
    for got, want in zip(read.structures, written.structures):
        assert np.array_equal(got.mask, want.mask), got.name
        assert (got.role, got.level, got.rx_gy, got.color) == (want.role, want.level, want.rx_gy, want.color)
    assert read.prescription == written.prescription
    refs, want = read.refs, written.refs
    assert (refs.study_instance_uid, refs.frame_of_reference_uid, refs.ct_series_instance_uid) == (
        want.study_instance_uid, want.frame_of_reference_uid, want.ct_series_instance_uid)
    assert refs.ct_sop_instance_uids == want.ct_sop_instance_uids
    assert (refs.patient_id, refs.patient_name, refs.patient_position) == (
        want.patient_id, want.patient_name, want.patient_position)
    assert refs.extra == want.extra


@pytest.mark.parametrize("kwargs", [
    {},
    {"spacing": (3.0, 1.5, 2.0)},  # PixelSpacing [1.5, 2.0]: non-square pixels
    {"spacing": (2.0, 0.9765625, 0.9765625), "origin": (-249.51171875, -120.25, 17.5)},
    {"orientation": FFS, "patient_position": "FFS", "origin": (40.0, -30.0, 12.5)},
    {"orientation": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0), "patient_position": "HFP"},
], ids=["small", "non-square", "scanner-like", "FFS", "HFP"])
def test_round_trip(tmp_path, make_small_case, kwargs):
    case = make_small_case(**kwargs)
    write_case(case, tmp_path / "case")
    assert_same_case(read_case(tmp_path / "case"), case)


def test_case_id_is_the_folder_name_and_input_roi_names_are_kept(tmp_path, small_case):
    write_case(small_case, tmp_path / "patient7")
    case = read_case(tmp_path / "patient7")
    assert case.case_id == "patient7"
    assert [s.roi_name for s in case.structures] == [s.name for s in small_case.structures]
    assert read_case(tmp_path / "patient7", case_id="x").case_id == "x"


def test_slice_order_comes_from_positions_not_file_names(tmp_path, small_case):
    folder = tmp_path / "case"
    paths = write_case(small_case, folder)
    cts = sorted(p for p in paths if p.name.startswith("CT_"))
    shuffled = cts[:]
    random.Random(3).shuffle(shuffled)
    (folder / "sub").mkdir()
    for n, path in enumerate(cts):  # names in reverse order, half in a subfolder, InstanceNumber shuffled
        ds = pydicom.dcmread(path)
        path.unlink()
        ds.InstanceNumber = 1 + shuffled.index(path)
        ds.save_as(folder / ("sub" if n % 2 else "") / f"IMG{len(cts) - n:04d}.dcm")
    assert_same_case(read_case(folder), small_case)


def test_voxel_lands_at_the_patient_position_in_contour_data(tmp_path, make_small_case):
    """One voxel at (k, j, i): its contour is centred on IPP_k + i·PixelSpacing[1]·row + j·PixelSpacing[0]·col."""
    for orientation, origin in ((None, (-35.0, -30.0, -28.75)), (FFS, (40.0, -30.0, 12.5))):
        case = make_small_case(**({} if orientation is None else {"orientation": orientation}), origin=origin)
        lens = case.structure("Lens_L")
        (k, j, i), = np.argwhere(lens.mask)
        path = write_rtstruct(case, tmp_path / "rs.dcm", [lens])
        ds = pydicom.dcmread(path)
        contour = ds.ROIContourSequence[0].ContourSequence[0]
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        ct = pydicom.dcmread(write_case(case, tmp_path / "ct")[k])
        ipp = np.asarray(ct.ImagePositionPatient, float)
        row, col = np.asarray(ct.ImageOrientationPatient[:3], float), np.asarray(ct.ImageOrientationPatient[3:], float)
        row_step, col_step = (float(v) for v in ct.PixelSpacing)
        centre = ipp + i * col_step * row + j * row_step * col
        assert ipp[2] == pytest.approx(origin[2] + k * 2.5 * (1 if orientation is None else -1))
        assert centre[0] == pytest.approx(origin[0] + (1 if orientation is None else -1) * i * 2.0)
        assert centre[1] == pytest.approx(origin[1] + j * 1.5)
        np.testing.assert_allclose(points.mean(axis=0), centre, atol=0.01)
        np.testing.assert_allclose(np.ptp(points, axis=0), [2.0, 1.5, 0.0], atol=0.01)  # half a pixel each side
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID


def test_rtstruct_content(tmp_path, small_case):
    generated = Structure("zRing_6000", small_case.structure("CTV_6000").mask, Role.OTHER)  # roi_name "": generated
    case = small_case.with_structures(small_case.structures + (generated,))
    ds = pydicom.dcmread(write_rtstruct(case, tmp_path / "rs.dcm", uid_seed="s"))
    assert ds.SOPClassUID == RTStructureSetStorage and ds.Modality == "RTSTRUCT"
    assert ds.FrameOfReferenceUID == case.refs.frame_of_reference_uid
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert frame.FrameOfReferenceUID == case.refs.frame_of_reference_uid
    assert frame.RTReferencedStudySequence[0].ReferencedSOPInstanceUID == case.refs.study_instance_uid
    assert series.SeriesInstanceUID == case.refs.ct_series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(case.refs.ct_sop_instance_uids)
    rois = {r.ROIName: r for r in ds.StructureSetROISequence}
    assert rois["CTV_6000"].ROIGenerationAlgorithm == "MANUAL"
    assert rois["zRing_6000"].ROIGenerationAlgorithm == "AUTOMATIC"
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert [types[r.ROINumber] for r in ds.StructureSetROISequence] == [
        "EXTERNAL", "CTV", "ORGAN", "ORGAN", "ORGAN", "CONTROL"]
    assert list(ds.ROIContourSequence[2].ROIDisplayColor) == [255, 255, 0]
    assert all(c.ContourGeometricType == "CLOSED_PLANAR" for r in ds.ROIContourSequence for c in r.ContourSequence)
    again = pydicom.dcmread(write_rtstruct(case, tmp_path / "again.dcm", uid_seed="s"))
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # uid_seed: reproducible UIDs
    read = read_rtstruct(tmp_path / "rs.dcm")
    assert read.frame_of_reference_uid == case.refs.frame_of_reference_uid
    assert read.referenced_series_uid == case.refs.ct_series_instance_uid
    name, contours, color = read.rois[3]
    assert name == "Esophagus" and color == (139, 69, 19) and all(c.shape[1] == 3 for c in contours)


@pytest.mark.parametrize("patient_name, charset", [("Muster^Max", "ISO_IR 100"), ("Müller^Jörg", "ISO_IR 100"),
                                                   ("山田^太郎", "ISO_IR 192")])
def test_patient_names_keep_their_characters(tmp_path, small_case, patient_name, charset):
    case = replace(small_case, refs=replace(small_case.refs, patient_name=patient_name))
    paths = write_case(case, tmp_path)
    assert pydicom.dcmread(paths[0]).SpecificCharacterSet == charset
    assert read_case(tmp_path).refs.patient_name == patient_name


def test_prescription_json_is_written(tmp_path, small_case):
    write_case(small_case, tmp_path)
    data = json.loads((tmp_path / "prescription.json").read_text())
    assert data == {"fractions": 30, "levels": [{"target": "CTV_6000", "dose_gy": 60.0}]}


def test_uids(small_case):
    assert new_uid("a") == new_uid("a") != new_uid("b")
    assert new_uid() != new_uid()
    assert len(new_uid()) <= 64 and pydicom.uid.UID(new_uid()).is_valid


def _ds_values(ds):
    for elem in ds.iterall():
        if elem.VR == "DS" and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                yield elem.keyword, str(getattr(value, "original_string", None) or value)


def test_every_ds_value_fits_16_characters(tmp_path, make_small_case):
    """rt-utils 1.2.7 writes ContourData with up to 20 characters: invalid DICOM."""
    case = make_small_case(spacing=(2.0, 0.9765625, 0.9765625), origin=(-249.51171875, -120.123456789, 17.3333333))
    paths = write_case(case, tmp_path)
    for path in (paths[0], paths[-2]):  # a CT slice, the RTSTRUCT
        with open(path, "rb") as f:
            ds = pydicom.dcmread(f)
        for keyword, text in _ds_values(ds):
            assert len(text) <= 16, (path.name, keyword, text)
    rtstruct = pydicom.dcmread(paths[-2])
    for roi in rtstruct.ROIContourSequence:
        for contour in roi.ContourSequence:  # ContourData as stored, before pydicom converts it
            assert max(len(v.strip()) for v in contour.get_item(0x30060050).value.split(b"\\")) <= 16


def test_installed_distribution_has_no_top_level_package_but_rtautoplan():
    """rt-utils 1.2.7 installs a top-level ``tests`` package into site-packages. Checked three ways: the
    installed RECORD and top_level.txt, the editable finder's mapping, and the packages pyproject.toml builds."""
    dists = [d for d in importlib.metadata.distributions(name="rtautoplan")
             if str(getattr(d, "_path", "")).endswith(".dist-info")]  # not a stale *.egg-info in the checkout
    assert dists, "rtautoplan is not installed"
    for dist in dists:
        assert set((dist.read_text("top_level.txt") or "rtautoplan").split()) <= {"rtautoplan"}
        top = {f.parts[0] for f in dist.files or [] if len(f.parts) > 1 or f.suffix == ".py"}
        top -= {"..", "__pycache__"}
        top = {t for t in top if not t.endswith((".dist-info", ".data")) and not t.startswith("__editable__")}
        assert top <= {"rtautoplan"}, top
        for finder in (f for f in dist.files or [] if f.name.startswith("__editable__") and f.suffix == ".py"):
            mapping = re.search(r"MAPPING[^=]*=\s*(\{.*?\})", finder.read_text()).group(1)
            assert {name.split(".")[0] for name in ast.literal_eval(mapping)} <= {"rtautoplan"}
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    packages = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"]
    assert all(p == "rtautoplan" or p.startswith("rtautoplan.") for p in packages), packages
