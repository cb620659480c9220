"""Seed 004's sequential course (issue 12): ``--policy sarsa`` plans the phases the prescription
states (primary 44 Gy by SARSA, boost 26 Gy by the rule-based planner), never re-prescribes, merges
or drops a ROI, and writes one RTPLAN and RTDOSE per phase plus the course RTDOSE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_checks import dcmdump, dciodvfy, to_16_bit
from rtautoplan import dvh
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.case import DoseLevel, Phase
from rtautoplan.cli import main
from rtautoplan.dicom.read import read_case, write_case
from rtautoplan.dicom.rtdose import read_rtdose
from rtautoplan.dicom.rtstruct import read_rtstruct
from rtautoplan.errors import InputError
from rtautoplan.outputs import write_outputs
from rtautoplan.phantom import make_case
from rtautoplan.pipeline import plan_case

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
PHASES = [{"name": "primary", "fractions": 22, "levels": [{"target": t, "dose_gy": 44}
                                                          for t in ("CTV_7000", "CTV_6000", "CTV_5400")]},
          {"name": "boost", "fractions": 13, "levels": [{"target": "CTV_7000", "dose_gy": 26}]}]
AUXILIARY = {"zCTV_Primary_4400", "PTV_4400", "zGap_4400", "zRing_4400", "zCTV_Boost_2600", "PTV_2600", "zGap_2600",
             "zRing_2600"}


def coarse(cache):
    return InHousePhoton(n_beams=7, dose_grid_factor=(2, 4, 4), max_iter=60, cache_dir=cache)


def test_sarsa_without_phases_stops_with_the_fix(tmp_path):
    with pytest.raises(InputError) as caught:
        plan_case(make_case("hn", 1000), policy="sarsa", tps=coarse(tmp_path))
    text = str(caught.value)
    assert "sequential course" in text and "3 levels, simultaneous" in text and "CTV_7000 70 Gy" in text
    assert '"phases": [{"name": "primary", "fractions": 22' in text and '"dose_gy": 26.0' in text
    assert "another planner" in text


def test_plan_command_with_sarsa_on_the_sample_says_it_in_one_line(tmp_path, capsys):
    assert main(["plan", str(SAMPLES / "hn01"), "-o", str(tmp_path / "out"), "--policy", "sarsa"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "states no phases" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "RP_rtautoplan.dcm").exists()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A phantom written as DICOM with seed 004's phases in prescription.json and one ROI exported
    under a non-TG-263 name ("Mandible"), read back, planned (1 step per phase) and written."""
    root = tmp_path_factory.mktemp("course")
    folder = root / "case"
    write_case(make_case("hn", 1000), folder)
    rx = json.loads((folder / "prescription.json").read_text())
    (folder / "prescription.json").write_text(json.dumps({**rx, "phases": PHASES}))
    rs = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    next(r for r in rs.StructureSetROISequence if r.ROIName == "Bone_Mandible").ROIName = "Mandible"
    rs.save_as(folder / "RTSTRUCT.dcm")
    case = read_case(folder)
    planned, result = plan_case(case, policy="sarsa", tps=coarse(root / "dij"), max_steps=1)
    paths = write_outputs(planned, result, root / "out", uid_seed="phases")
    return folder, case, planned, result, paths


def test_each_phase_is_planned_at_its_own_dose_and_the_course_is_their_sum(course):
    _, case, planned, result, _ = course
    primary, boost = result.phases
    assert primary.policy == "sarsa-model2" and primary.score.system == "relative_loss"
    assert boost.policy == "rule-based" and boost.score.system == "dose_distribution"
    assert np.allclose(result.plan.dose.gy, primary.plan.dose.gy + boost.plan.dose.gy, atol=1e-4)
    assert [s.step for s in result.steps] == sorted(s.step for s in result.steps)
    assert result.steps[0].action.startswith("primary: ") and result.steps[-1].action.startswith("boost: ")

    def d95(dose, name):
        return dvh.d_percent(dose.gy, np.flatnonzero(planned.structure(name).mask), 95.0)

    assert d95(primary.plan.dose, "PTV_4400") == pytest.approx(44.0, abs=0.05)  # normalised, SPEC §4.7
    assert d95(boost.plan.dose, "PTV_2600") == pytest.approx(26.0, abs=0.05)
    assert 66.0 <= d95(result.plan.dose, "CTV_7000") <= 78.0
    for elective in ("CTV_6000", "CTV_5400"):
        assert 42.0 <= d95(result.plan.dose, elective) <= 54.0
    assert d95(boost.plan.dose, "CTV_5400") < 5.0  # the boost is the high-dose CTV's only


def test_no_input_roi_is_merged_dropped_or_re_prescribed(course):
    _, case, planned, _, _ = course
    assert planned.prescription == case.prescription and len(case.prescription.levels) == 3
    for s in case.structures:
        out = planned.structure(s.name)
        assert (out.role, out.roi_name, out.rx_gy) == (s.role, s.roi_name, s.rx_gy)
        assert np.array_equal(out.mask, s.mask)
    assert {s.name for s in planned.structures} == {s.name for s in case.structures} | AUXILIARY
    assert planned.structure("zCTV_Primary_4400").role.value == "CTV"
    union = np.logical_or.reduce([case.structure(n).mask for n in ("CTV_7000", "CTV_6000", "CTV_5400")])
    assert np.array_equal(planned.structure("zCTV_Primary_4400").mask, union)


def test_output_rtstruct_has_every_input_roi_unchanged_plus_the_planning_structures(course):
    folder, _, _, _, paths = course
    given = {r.name: r for r in read_rtstruct(folder / "RTSTRUCT.dcm").rois}
    written = {r.name: r for r in read_rtstruct(paths["rtstruct"]).rois}
    assert "Mandible" in given and "Mandible" in written and "Bone_Mandible" not in written
    assert set(written) == set(given) | AUXILIARY
    for name, roi in given.items():
        assert len(written[name].contours) == len(roi.contours), name
        assert all(np.array_equal(a, b) for a, b in zip(written[name].contours, roi.contours)), name


def test_one_rtplan_and_rtdose_per_phase_and_a_multi_plan_course_dose(course):
    _, _, _, result, paths = course
    rs = pydicom.dcmread(paths["rtstruct"])
    plans = {name: pydicom.dcmread(paths[f"plan {name}"]) for name in ("primary", "boost")}
    for name, fractions, dose_gy in (("primary", 22, 44.0), ("boost", 13, 26.0)):
        rp, rd = plans[name], pydicom.dcmread(paths[f"rtdose {name}"])
        assert rp.RTPlanLabel == name and rp.FractionGroupSequence[0].NumberOfFractionsPlanned == fractions
        assert {float(r.TargetPrescriptionDose) for r in rp.DoseReferenceSequence} == {dose_gy}
        assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
        assert rd.DoseSummationType == "PLAN"
        assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    rd = pydicom.dcmread(paths["rtdose"])
    assert rd.DoseSummationType == "MULTI_PLAN"
    assert [r.ReferencedSOPInstanceUID for r in rd.ReferencedRTPlanSequence] == \
        [plans[n].SOPInstanceUID for n in ("primary", "boost")]
    total = read_rtdose(paths["rtdose"]).gy
    summed = read_rtdose(paths["rtdose primary"]).gy + read_rtdose(paths["rtdose boost"]).gy
    assert np.allclose(total, summed, atol=1e-3 * total.max())
    written = result.plan.dose.native or result.plan.dose  # the RTDOSE is on the dose grid
    assert np.allclose(total, written.gy, atol=1e-6 * total.max())


def test_plan_log_lists_the_phases_and_the_course_dose(course):
    _, _, _, _, paths = course
    log = json.loads(paths["log"].read_text())
    assert [(p["name"], p["fractions"], p["planner"]) for p in log["phases"]] == \
        [("primary", 22, "sarsa-model2"), ("boost", 13, "rule-based")]
    assert log["phases"][0]["levels"][1] == {"target": "CTV_6000", "dose_gy": 44.0}
    assert {c["target"]: (c["dose_gy"], c["prescription_level_gy"]) for c in log["course"]} == \
        {"CTV_7000": (70.0, 70.0), "CTV_6000": (44.0, 60.0), "CTV_5400": (44.0, 54.0)}
    assert log["files"]["plan boost"] == "RP_rtautoplan_boost.dcm" and log["files"]["rtdose"] == "RD_rtautoplan.dcm"


@pytest.mark.tools
def test_every_written_object_conforms(course, tool, tmp_path):
    _, _, _, _, paths = course
    for key in ("rtstruct", "plan primary", "plan boost", "rtdose primary", "rtdose boost", "rtdose"):
        path = paths[key]
        dcmdump(tool, path)
        if key.startswith("rtdose"):
            path = to_16_bit(path, tmp_path / f"{key.replace(' ', '_')}_16.dcm")
        errors, output = dciodvfy(tool, path)
        assert not errors, output
