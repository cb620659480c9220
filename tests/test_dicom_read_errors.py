"""Every defect read_case refuses: each built by editing a written case with pydicom; the message must
name the file, series, ROI or tag and say what to do."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage

from rtautoplan.case import Role
from rtautoplan.dicom.read import read_case, write_case
from rtautoplan.dicom.uid import new_uid
from rtautoplan.errors import InputError

N_SLICES = 24
DZ = 2.5
Z0 = -28.75


@pytest.fixture
def folder(tmp_path, small_case):
    write_case(small_case, tmp_path / "case")
    return tmp_path / "case"


def ct(folder, k):
    return folder / f"CT_{k}.dcm"


def edit(path, change):
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def edit_slices(folder, change):
    """``change(ds, k)`` on every CT slice."""
    for k in range(N_SLICES):
        edit(ct(folder, k), lambda ds: change(ds, k))


def roi(ds, name):
    """(StructureSetROISequence item, ROIContourSequence item) of a ROI."""
    item = next(r for r in ds.StructureSetROISequence if r.ROIName == name)
    return item, next(c for c in ds.ROIContourSequence if c.ReferencedROINumber == item.ROINumber)


def rename(folder, old, new):
    edit(folder / "RTSTRUCT.dcm", lambda ds: setattr(roi(ds, old)[0], "ROIName", new))


def raises(folder, *patterns):
    with pytest.raises(InputError) as info:
        read_case(folder)
    message = str(info.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, message
    return message


# --- files -------------------------------------------------------------------------------------

def test_non_dicom_files_are_skipped_but_a_broken_dcm_is_named(folder):
    (folder / "notes.txt").write_text("exported by the TPS")
    (folder / ".DS_Store").write_bytes(b"\0\1\2" * 50)
    assert read_case(folder).has("External")
    (folder / "CT_broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x99" * 50)
    raises(folder, "CT_broken.dcm", "Export the file again or remove it")


def test_no_rtstruct(folder):
    (folder / "RTSTRUCT.dcm").unlink()
    raises(folder, str(folder), "no RTSTRUCT found", "Export the structure set")


def test_of_several_rtstructs_the_one_on_this_ct_is_used(folder):
    def elsewhere(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
        series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        series.SeriesInstanceUID = new_uid()
        for item in series.ContourImageSequence:
            item.ReferencedSOPInstanceUID = new_uid()
        for roi_contour in ds.ROIContourSequence:
            for contour in roi_contour.ContourSequence:
                contour.ContourImageSequence[0].ReferencedSOPInstanceUID = new_uid()
        roi(ds, "SpinalCord")[0].ROIName = "Thymus"  # would fail if this one were read

    shutil.copy(folder / "RTSTRUCT.dcm", folder / "RS_other.dcm")
    edit(folder / "RS_other.dcm", elsewhere)
    assert read_case(folder).has("SpinalCord")


def test_two_rtstructs_on_the_same_ct(folder):
    shutil.copy(folder / "RTSTRUCT.dcm", folder / "RS_v2.dcm")
    edit(folder / "RS_v2.dcm", lambda ds: setattr(ds, "SOPInstanceUID", new_uid()))
    raises(folder, "2 RTSTRUCTs", "RS_v2.dcm", "RTSTRUCT.dcm", "Keep only")


# --- the image series ---------------------------------------------------------------------------

def test_mr_series_is_refused(folder):
    def to_mr(ds, k):
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage

    edit_slices(folder, to_mr)
    raises(folder, "MR series", "is MR", "rtautoplan plans on CT")


def test_oblique_orientation(folder):
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    edit_slices(folder, lambda ds, k: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    raises(folder, "CT series", "ImageOrientationPatient", "oblique", "Resample")


def test_gantry_tilt(folder):
    edit_slices(folder, lambda ds, k: setattr(ds, "GantryDetectorTilt", 12.0))
    raises(folder, "GantryDetectorTilt is 12", "without gantry tilt")


def test_positions_drifting_in_plane(folder):
    def drift(ds, k):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y + 0.4 * k, z]

    edit_slices(folder, drift)
    raises(folder, "ImagePositionPatient moves", "in-plane", "gantry tilt")


def test_uneven_slice_spacing(folder):
    def stretch(ds, k):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, z + (0.3 if k > 11 else 0.0)]

    edit_slices(folder, stretch)
    z11, z12 = Z0 + 11 * DZ, Z0 + 12 * DZ + 0.3
    raises(folder, "uneven slice spacing", f"between z = {z11:.2f} and z = {z12:.2f} mm", "constant slice spacing")


def test_missing_slices(folder):
    ct(folder, 10).unlink()
    ct(folder, 11).unlink()
    raises(folder, "CT series", f"slices missing between z = {Z0 + 9 * DZ:.2f} and z = {Z0 + 12 * DZ:.2f} mm",
           "expected a step of 2.5 mm", "Export the complete series")


def test_duplicate_slice_positions(folder):
    shutil.copy(ct(folder, 5), folder / "CT_5_copy.dcm")
    edit(folder / "CT_5_copy.dcm", lambda ds: setattr(ds, "SOPInstanceUID", new_uid()))
    raises(folder, "CT_5.dcm", "CT_5_copy.dcm", "duplicate slice positions")


def test_an_exact_copy_of_a_slice_is_one_slice(folder, small_case):
    shutil.copy(ct(folder, 5), folder / "CT_5_copy.dcm")
    assert np.array_equal(read_case(folder).hu, small_case.hu)


def test_frame_of_reference_differs_between_slices(folder):
    edit(ct(folder, 7), lambda ds: setattr(ds, "FrameOfReferenceUID", new_uid()))
    raises(folder, "CT_7.dcm", "FrameOfReferenceUID")


@pytest.mark.parametrize("keyword, value", [("PixelSpacing", [1.5, 2.5]), ("Rows", 38),
                                            ("ImageOrientationPatient", [0, 1, 0, 1, 0, 0])])
def test_slices_must_share_their_geometry(folder, keyword, value):
    edit(ct(folder, 3), lambda ds: setattr(ds, keyword, value))
    raises(folder, "CT_3.dcm", keyword)


def test_rtstruct_on_another_frame_of_reference(folder):
    def move(ds):
        uid = new_uid()
        ds.FrameOfReferenceUID = ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = uid
        for item in ds.StructureSetROISequence:
            item.ReferencedFrameOfReferenceUID = uid

    edit(folder / "RTSTRUCT.dcm", move)
    raises(folder, "RTSTRUCT", "RTSTRUCT.dcm", "FrameOfReferenceUID", "is not that of CT series")


# --- ROIs ---------------------------------------------------------------------------------------

def test_unknown_roi_name_says_how_to_map_it(folder):
    rename(folder, "SpinalCord", "Rueckenmark")
    message = raises(folder, "ROI 'Rueckenmark'", "unknown structure name", "Rename the ROI",
                     '"structure_names": {"Rueckenmark": "<TG-263 name>"}', '"goals"', '"ignore": ["Rueckenmark"]',
                     "prescription.json")
    assert "did you mean" not in message


def test_a_misspelt_roi_name_gets_its_tg263_name(folder):
    rename(folder, "SpinalCord", "SpinalCrd")
    raises(folder, "ROI 'SpinalCrd' (did you mean SpinalCord?)", '"structure_names": {"SpinalCrd": "SpinalCord"}')


def test_unknown_roi_kept_but_not_planned_when_asked(folder, caplog):
    rename(folder, "SpinalCord", "Rueckenmark")
    case = read_case(folder, unknown_rois="keep")
    kept = case.structure("Rueckenmark")
    assert kept.role is Role.OTHER and kept.level is None and kept.mask.any()
    assert "Rueckenmark" in caplog.text and "never planned on" in caplog.text
    with pytest.raises(ValueError, match="unknown_rois"):
        read_case(folder, unknown_rois="guess")


def test_structure_names_and_ignore_from_prescription_json(folder):
    rename(folder, "SpinalCord", "Rueckenmark")
    rename(folder, "Lens_L", "Kissen")
    rx = json.loads((folder / "prescription.json").read_text())
    rx.update(structure_names={"Rueckenmark": "SpinalCord"}, ignore=["Kissen"])
    (folder / "prescription.json").write_text(json.dumps(rx))
    case = read_case(folder)
    cord = case.structure("SpinalCord")
    assert (cord.roi_name, cord.role, cord.level) == ("Rueckenmark", Role.OAR, 1)
    assert not case.has("Lens_L") and len(case.structures) == 4


def test_empty_roi(folder):
    edit(folder / "RTSTRUCT.dcm", lambda ds: delattr(roi(ds, "SpinalCord")[1], "ContourSequence"))
    raises(folder, "ROI 'SpinalCord'", "is empty", '"ignore"')


def test_empty_non_anatomical_roi_is_dropped_with_a_warning(folder, caplog):
    rename(folder, "Lens_L", "Couch")
    edit(folder / "RTSTRUCT.dcm", lambda ds: delattr(roi(ds, "Couch")[1], "ContourSequence"))
    with caplog.at_level(logging.WARNING, logger="rtautoplan"):
        case = read_case(folder)
    assert not case.has("Couch") and "'Couch' is empty" in caplog.text


def test_two_rois_with_the_same_meaning(folder):
    rename(folder, "Esophagus", "Spinal Cord")
    raises(folder, "ROIs 'SpinalCord' and 'Spinal Cord'", "both mean SpinalCord")


def test_two_rois_with_the_same_roi_name(folder):
    rename(folder, "Esophagus", "SpinalCord")
    raises(folder, "ROI 'SpinalCord'", "2 ROIs have this ROIName")


def test_no_external(folder):
    rename(folder, "External", "zOutline")
    raises(folder, "RTSTRUCT", "no External", "body outline")


def test_contour_between_slices(folder):
    def lift(ds):
        contour = roi(ds, "CTV_6000")[1].ContourSequence[0]
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        points[:, 2] += 1.0  # 1 mm off a 2.5 mm step
        contour.ContourData = [f"{v:.2f}" for v in points.ravel()]

    edit(folder / "RTSTRUCT.dcm", lift)
    raises(folder, "ROI 'CTV_6000'", "off the nearest CT slice", "z = ")


def test_target_without_a_dose(folder):
    rename(folder, "CTV_6000", "CTV_High")
    (folder / "prescription.json").unlink()
    raises(folder, "ROI 'CTV_High'", "no dose level", '"levels"', "prescription.json")


def test_target_dose_from_prescription_json(folder):
    rename(folder, "CTV_6000", "CTV_High")
    (folder / "prescription.json").write_text(json.dumps({"levels": [{"target": "CTV_High", "dose_gy": 66.0}]}))
    case = read_case(folder)
    ctv = case.structure("CTV_6600")
    assert (ctv.roi_name, ctv.rx_gy, ctv.level) == ("CTV_High", 66.0, 2)
    assert case.prescription.levels[0].target == "CTV_6600" and case.prescription.fractions == 33


def test_bad_prescription_json_is_named(folder):
    (folder / "prescription.json").write_text('{"fractions": 30,')
    raises(folder, "prescription.json", "not valid JSON")


def test_messages_give_patient_z_also_feet_first(tmp_path, make_small_case):
    """FFS: slices run towards -z; the message still names the z of the slices around the gap."""
    case = make_small_case(orientation=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), patient_position="FFS", origin=(0.0, 0.0, 30.0))
    write_case(case, tmp_path / "ffs")
    ct(tmp_path / "ffs", 4).unlink()
    raises(tmp_path / "ffs", f"slices missing between z = {30.0 - 3 * DZ:.2f} and z = {30.0 - 5 * DZ:.2f} mm")


def test_dcm_files_without_the_preamble_are_read(folder, small_case):
    ds = pydicom.dcmread(ct(folder, 0))
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(ct(folder, 0), ds, implicit_vr=True, little_endian=True)
    assert ct(folder, 0).read_bytes()[128:132] != b"DICM"
    assert np.array_equal(read_case(folder).hu, small_case.hu)


# --- broken files of the sample case (sample_data/hn01, copied) ------------------------------------

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"


@pytest.fixture
def hn01(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "hn01")
    return tmp_path / "hn01"


def shift(folder, name, dx=0.0, dz=0.0, contours=slice(None)):
    """Move some contours of a ROI by dx, dz mm."""
    def move(ds):
        for contour in list(roi(ds, name)[1].ContourSequence)[contours]:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) + [dx, 0.0, dz]
            contour.ContourData = [f"{v:.2f}" for v in points.ravel()]

    edit(folder / "RTSTRUCT.dcm", move)


def test_truncated_ct_file_is_named(hn01):
    data = ct(hn01, 10).read_bytes()
    ct(hn01, 10).write_bytes(data[: len(data) // 2])
    raises(hn01, "CT_10.dcm", "PixelData holds", "truncated", "Export or copy this slice again")


def test_ct_with_short_pixel_data_is_named(hn01):
    edit(ct(hn01, 20), lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]))
    raises(hn01, "CT_20.dcm", "PixelData holds 1000 bytes, 14418 expected for 89×81 pixels of 16 bits")


def test_ct_without_bits_allocated(hn01):
    edit(ct(hn01, 3), lambda ds: delattr(ds, "BitsAllocated"))
    raises(hn01, "CT_3.dcm", "BitsAllocated missing")


def test_ct_with_rescale_slope_not_a_number(hn01):
    data = ct(hn01, 3).read_bytes()
    at = data.index(b"\x28\x00\x53\x10DS") + 6  # explicit VR little endian: tag, VR, 2-byte length
    length = int.from_bytes(data[at: at + 2], "little")
    ct(hn01, 3).write_bytes(data[: at + 2] + b"x" * length + data[at + 2 + length:])
    raises(hn01, "CT_3.dcm", "RescaleSlope is", "not a number")


@pytest.mark.parametrize("keyword, value, problem", [
    ("ImagePositionPatient", [1.0, 2.0], "not 3 numbers"),
    ("PixelSpacing", [0.0, 0.0], "not 2 positive numbers"),
])
def test_ct_geometry_tag_with_wrong_values(hn01, keyword, value, problem):
    edit(ct(hn01, 7), lambda ds: setattr(ds, keyword, value))
    raises(hn01, "CT_7.dcm", keyword, problem)


def test_two_different_files_with_one_sop_instance_uid(hn01):
    """A second, different image under CT_10's SOPInstanceUID: either could be the one the RTSTRUCT means."""
    def other_position(ds):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x, y, 500.0]

    shutil.copy(ct(hn01, 10), hn01 / "extra.dcm")
    edit(hn01 / "extra.dcm", other_position)
    raises(hn01, "CT_10.dcm and", "extra.dcm", "both have SOPInstanceUID", "different content")


def test_a_byte_identical_copy_is_still_one_slice(hn01):
    shutil.copy(ct(hn01, 10), hn01 / "copy_of_ct_10.dcm")
    assert read_case(hn01).grid.shape[0] == 70


def test_roi_wholly_outside_the_ct(hn01):
    """An OAR drawn on another CT: 'outside the CT' with both z ranges, never 'empty' nor 'delete'."""
    shift(hn01, "Parotid_L", dz=400.0)
    message = raises(hn01, "ROI 'Parotid_L'", "lies outside the CT", "the ROI spans z = 370.00 to 409.00 mm",
                     "the CT z = -90.00 to 117.00 mm", "Export the RTSTRUCT together with the CT it was drawn on")
    assert "empty" not in message and "elete" not in message and '"ignore"' not in message


def test_roi_outside_the_ct_in_plane(hn01):
    shift(hn01, "Eye_L", dx=500.0)
    raises(hn01, "ROI 'Eye_L'", "lies outside the CT", "x = ", "the CT x = -101.25 to 101.25 mm")


def test_target_partly_outside_the_ct(hn01):
    shift(hn01, "CTV_5400", dz=-60.0, contours=slice(0, 10))
    raises(hn01, "ROI 'CTV_5400'", "extends outside the CT", "10 of its 48 contours", "must lie wholly on the CT",
           "covers the whole target")


def test_oar_partly_outside_the_ct_keeps_its_part_with_a_warning(hn01, caplog):
    shift(hn01, "SpinalCord", dz=-60.0, contours=slice(0, 5))
    with caplog.at_level(logging.WARNING, logger="rtautoplan"):
        cord = read_case(hn01).structure("SpinalCord")
    assert cord.mask.any() and "'SpinalCord': 5 of its 29 contours lie (partly) outside the CT" in caplog.text
    assert "only its part on the CT is kept" in caplog.text


def test_non_anatomical_roi_outside_the_ct_is_kept_unplanned(hn01, caplog):
    rename(hn01, "Skin", "Couch")
    shift(hn01, "Couch", dz=400.0)
    with caplog.at_level(logging.WARNING, logger="rtautoplan"):
        case = read_case(hn01)
    assert not case.has("Couch") and [r.name for r in case.unplanned] == ["Couch"]
    assert "'Couch' is outside the CT: not planned on, written back unchanged" in caplog.text


# --- malformed RTSTRUCT content -------------------------------------------------------------------

def test_truncated_rtstruct(hn01):
    data = (hn01 / "RTSTRUCT.dcm").read_bytes()
    (hn01 / "RTSTRUCT.dcm").write_bytes(data[: len(data) // 2])
    raises(hn01, "RTSTRUCT.dcm", "truncated", "Export the RTSTRUCT again")


def test_contour_with_a_coordinate_missing(hn01):
    def cut(ds):
        contour = roi(ds, "Larynx")[1].ContourSequence[2]
        contour.ContourData = list(contour.ContourData)[:-1]

    edit(hn01 / "RTSTRUCT.dcm", cut)
    raises(hn01, "ROI 'Larynx'", "RTSTRUCT.dcm", "contour 3", "not x, y, z triplets", "Re-export the RTSTRUCT")


def test_contour_shorter_than_its_number_of_points(hn01):
    def cut(ds):
        contour = roi(ds, "Larynx")[1].ContourSequence[0]
        contour.ContourData = list(contour.ContourData)[:-3]

    edit(hn01 / "RTSTRUCT.dcm", cut)
    raises(hn01, "ROI 'Larynx'", "contour 1", "points but NumberOfContourPoints is", "truncated")


def test_contour_without_contour_data(hn01):
    edit(hn01 / "RTSTRUCT.dcm", lambda ds: delattr(roi(ds, "Larynx")[1].ContourSequence[0], "ContourData"))
    raises(hn01, "ROI 'Larynx'", "contour 1 has no ContourData")


def test_roi_contour_without_its_roi_number(hn01):
    edit(hn01 / "RTSTRUCT.dcm", lambda ds: delattr(roi(ds, "Larynx")[1], "ReferencedROINumber"))
    raises(hn01, "RTSTRUCT.dcm", "ROIContourSequence item 20 has no ReferencedROINumber")


def test_roi_without_a_name(hn01):
    rename(hn01, "Larynx", "")
    raises(hn01, "RTSTRUCT.dcm", "ROI number 20 has no ROIName", "Name the ROI")


def test_roi_without_contour_sequence_is_empty_not_deleted(hn01):
    edit(hn01 / "RTSTRUCT.dcm", lambda ds: delattr(roi(ds, "Larynx")[1], "ContourSequence"))
    message = raises(hn01, "ROI 'Larynx'", "is empty", "Contour it on this CT")
    assert "elete" not in message
