"""RT Dose writing and reading: round trips on the small case's CT grid, the attributes, dciodvfy."""

import logging

import numpy as np
import pydicom
import pytest

from rtautoplan.dicom.rtdose import UINT32_MAX, dose_grid_scaling, quantise, read_rtdose, write_rtdose
from rtautoplan.errors import InputError
from rtautoplan.plan import Dose
from dicom_checks import dciodvfy, to_16_bit

PLAN_UID = "1.2.826.0.1.3680043.8.498.1"


def ramp(grid) -> np.ndarray:
    """A smooth dose (Gy): a linear ramp in patient x, y, z, from 1 Gy up (~25 Gy on the small case)."""
    x, y, z = grid.centres()
    gy = np.broadcast_to(0.1 * x + 0.05 * y + 0.2 * z, grid.shape)
    return gy - gy.min() + 1.0


@pytest.fixture
def written(tmp_path, small_case):
    dose = Dose(small_case.grid, ramp(small_case.grid))
    path = write_rtdose(small_case, dose, tmp_path / "RTDOSE.dcm", plan_sop_instance_uid=PLAN_UID, uid_seed="t")
    return small_case, dose, path


def test_round_trip_within_scaling_precision(written):
    case, dose, path = written
    back = read_rtdose(path)
    scaling = float(pydicom.dcmread(path).DoseGridScaling)
    assert back.gy.shape == dose.gy.shape
    assert np.max(np.abs(back.gy - dose.gy)) <= 0.5 * scaling * (1 + 1e-6)
    assert scaling < dose.gy.max() / 2 ** 31  # the full 32 bits are used
    assert back.kind == "PHYSICAL"


def test_grid_is_identical(written):
    case, _, path = written
    assert read_rtdose(path).grid == case.grid


def test_grid_frame_offset_vector_is_relative(written):
    case, _, path = written
    ds = pydicom.dcmread(path)
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    assert offsets[0] == 0
    np.testing.assert_allclose(offsets, case.grid.spacing[0] * np.arange(case.grid.shape[0]))
    assert ds.FrameIncrementPointer == 0x3004000C
    assert int(ds.NumberOfFrames) == case.grid.shape[0]
    np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), case.grid.origin)


def test_attributes(written):
    case, _, path = written
    ds = pydicom.dcmread(path)
    assert (ds.Modality, ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("RTDOSE", "GY", "PHYSICAL", "PLAN")
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (32, 32, 31, 0)
    assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
    assert ds.StudyInstanceUID == case.refs.study_instance_uid
    assert ds.FrameOfReferenceUID == case.refs.frame_of_reference_uid
    assert [float(v) for v in ds.PixelSpacing] == [case.grid.spacing[1], case.grid.spacing[2]]
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == PLAN_UID
    assert int(ds.pixel_array.max()) > UINT32_MAX * 0.999  # Dmax maps to the top of the range


def test_no_plan_reference_without_a_plan(tmp_path, small_case, caplog):
    dose = Dose(small_case.grid, ramp(small_case.grid), kind="EFFECTIVE")
    with caplog.at_level(logging.WARNING):
        path = write_rtdose(small_case, dose, tmp_path / "d.dcm")
    ds = pydicom.dcmread(path)
    assert "ReferencedRTPlanSequence" not in ds
    assert "ReferencedRTPlanSequence" in caplog.text
    assert read_rtdose(path).kind == "EFFECTIVE"


def test_round_trip_on_other_orientations(tmp_path, make_small_case):
    for n, orientation in enumerate([(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)]):
        case = make_small_case(orientation=orientation)
        dose = Dose(case.grid, ramp(case.grid))
        back = read_rtdose(write_rtdose(case, dose, tmp_path / f"d{n}.dcm", PLAN_UID))
        assert back.grid == case.grid
        np.testing.assert_allclose(back.gy, dose.gy, atol=1e-8)


def test_zero_dose_and_scaling_edge_cases():
    assert dose_grid_scaling(0.0) == "1"
    for top in (1e-3, 0.7, 70.0, 123.456789, 1e4):
        s = float(dose_grid_scaling(top))
        assert quantise(np.array([top]), s)[0] <= UINT32_MAX
        assert top / s > UINT32_MAX * 0.9999


def test_rejects_bad_doses(tmp_path, small_case):
    grid = small_case.grid
    with pytest.raises(ValueError, match="shape"):
        write_rtdose(small_case, Dose(grid, np.zeros((2, 2, 2))), tmp_path / "a.dcm")
    with pytest.raises(ValueError, match="negative"):
        write_rtdose(small_case, Dose(grid, ramp(grid) - 5.0), tmp_path / "b.dcm")
    with pytest.raises(ValueError, match="kind"):
        write_rtdose(small_case, Dose(grid, ramp(grid), kind="ERROR"), tmp_path / "c.dcm")


def test_read_rejects_other_objects(tmp_path, small_case):
    from rtautoplan.dicom.rtstruct import write_rtstruct

    with pytest.raises(InputError, match="RT Dose"):
        read_rtdose(write_rtstruct(small_case, tmp_path / "s.dcm"))


@pytest.mark.tools
def test_dciodvfy_finds_no_error(written, tool, tmp_path):
    """dciodvfy finds no error in the RTDOSE (with its RTPLAN reference).

    dciodvfy (dicom3tools) aborts on 32-bit pixel data (an assertion, ``bitsallocated <=
    bytesinword*8``, in its OB/OW encoding rules) before checking anything, so it checks a copy
    re-encoded with 16-bit pixels (BitsAllocated/BitsStored 16, HighBit 15, DoseGridScaling
    rescaled); every other attribute is the one we wrote. The 32-bit Image Pixel attributes
    themselves are checked in ``test_attributes``.
    """
    _, _, path = written
    errors, output = dciodvfy(tool, to_16_bit(path, tmp_path / "RTDOSE16.dcm"))
    assert not errors, output
    assert "RTDose" in output  # it recognised the IOD


@pytest.mark.tools
def test_dciodvfy_without_a_plan_lacks_only_the_plan_reference(tmp_path, small_case, tool):
    """Without an RTPLAN the one error is the missing ReferencedRTPlanSequence (type 1C for PLAN),
    the documented limitation of a dose written before its plan (see rtautoplan.dicom.rtdose)."""
    path = write_rtdose(small_case, Dose(small_case.grid, ramp(small_case.grid)), tmp_path / "d.dcm")
    errors, output = dciodvfy(tool, to_16_bit(path, tmp_path / "d16.dcm"))
    assert len(errors) == 1 and "ReferencedRTPlanSequence" in errors[0], output
