"""Input ROIs that are not planned on (ignored, empty) leave in the output RTSTRUCT as they came in."""

import json

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from conftest import build_small_case
from rtautoplan.dicom.read import read_case, write_case
from rtautoplan.dicom.rtstruct import write_rtstruct


def _add_roi(ds: Dataset, name: str, interpreted_type: str, contours: list) -> None:
    """Append ROI ``name`` to an RTSTRUCT dataset with ``contours`` (ContourSequence items, maybe none)."""
    number = max(int(r.ROINumber) for r in ds.StructureSetROISequence) + 1
    roi = Dataset()
    roi.ROINumber, roi.ROIName = number, name
    roi.ReferencedFrameOfReferenceUID = ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence.append(roi)
    item = Dataset()
    item.ReferencedROINumber, item.ROIDisplayColor = number, [0, 255, 0]
    if contours:
        item.ContourSequence = contours
    ds.ROIContourSequence.append(item)
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = number, number
    observation.RTROIInterpretedType, observation.ROIInterpreter = interpreted_type, ""
    ds.RTROIObservationsSequence.append(observation)


def _case_with_extra_rois(folder):
    write_case(build_small_case(), folder, uid_seed="unplanned")
    path = folder / "RTSTRUCT.dcm"
    ds = pydicom.dcmread(path)
    cord = next(r for r in ds.StructureSetROISequence if r.ROIName == "SpinalCord").ROINumber
    contours = next(c for c in ds.ROIContourSequence if c.ReferencedROINumber == cord).ContourSequence
    _add_roi(ds, "Couch", "SUPPORT", list(contours))
    _add_roi(ds, "XApprox", "MARKER", [])
    ds.save_as(path)
    rx = json.loads((folder / "prescription.json").read_text())
    rx["ignore"] = ["Couch", "XApprox"]
    (folder / "prescription.json").write_text(json.dumps(rx))
    return [np.asarray(c.ContourData, float) for c in contours]


def test_ignored_and_empty_rois_leave_unchanged(tmp_path):
    couch = _case_with_extra_rois(tmp_path / "case")
    case = read_case(tmp_path / "case")
    assert [r.name for r in case.unplanned] == ["Couch", "XApprox"]
    assert not any(s.roi_name in ("Couch", "XApprox") for s in case.structures)

    out = pydicom.dcmread(write_rtstruct(case, tmp_path / "RS.dcm", unplanned=True))
    names = {int(r.ROINumber): r.ROIName for r in out.StructureSetROISequence}
    assert {"Couch", "XApprox"} <= set(names.values())
    assert set(names.values()) >= {s.name for s in case.structures}
    number = {v: k for k, v in names.items()}
    written = next(c for c in out.ROIContourSequence if c.ReferencedROINumber == number["Couch"]).ContourSequence
    assert len(written) == len(couch)
    for item, original in zip(written, couch):
        np.testing.assert_allclose(np.asarray(item.ContourData, float), original, atol=0.005)
        assert item.ContourImageSequence[0].ReferencedSOPInstanceUID in case.refs.ct_sop_instance_uids
    types = {int(o.ReferencedROINumber): o.RTROIInterpretedType for o in out.RTROIObservationsSequence}
    assert types[number["Couch"]] == "SUPPORT" and types[number["XApprox"]] == "MARKER"
    assert "ContourSequence" not in next(c for c in out.ROIContourSequence
                                         if c.ReferencedROINumber == number["XApprox"])


def test_planning_rtstruct_without_unplanned_by_default(tmp_path):
    _case_with_extra_rois(tmp_path / "case")
    case = read_case(tmp_path / "case")
    out = pydicom.dcmread(write_rtstruct(case, tmp_path / "RS.dcm"))
    assert "Couch" not in {r.ROIName for r in out.StructureSetROISequence}


def test_output_rtstruct_passes_dciodvfy(tmp_path, tool):
    import subprocess

    _case_with_extra_rois(tmp_path / "case")
    path = write_rtstruct(read_case(tmp_path / "case"), tmp_path / "RS.dcm", unplanned=True)
    result = subprocess.run([tool("/usr/bin/dciodvfy"), str(path)], capture_output=True, text=True)
    assert "Error" not in result.stderr + result.stdout, result.stderr
