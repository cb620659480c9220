"""The AAPM TG-119 test suite: the bundled cases read cleanly, carry the report's structures and goals,
and ``rtautoplan benchmark tg119`` plans them and reports every goal."""

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtautoplan import benchmark
from rtautoplan.case import Goal, Role
from rtautoplan.cli import main
from rtautoplan.dicom.read import read_case
from rtautoplan.goals import check_rois
from rtautoplan.phantom import tg119
from rtautoplan.structures.margins import distance_mm

BUNDLED = Path(__file__).resolve().parents[1] / "sample_data" / "tg119"
ROIS = {"multitarget": {"CentralTarget": "PTV", "SuperiorTarget": "PTV", "InferiorTarget": "PTV"},
        "prostate": {"PTV": "PTV", "Prostate": "CTV", "Rectum": "ORGAN", "Bladder": "ORGAN"},
        "headneck": {"PTV": "PTV", "Cord": "ORGAN", "Parotid_L": "ORGAN", "Parotid_R": "ORGAN"},
        "cshape_easy": {"OuterTarget": "PTV", "Core": "ORGAN"},
        "cshape_hard": {"OuterTarget": "PTV", "Core": "ORGAN"}}


@pytest.fixture(scope="module")
def cases():
    return {name: read_case(BUNDLED / name) for name in tg119.CASES}


def roi(case, name: str):
    return next(s for s in case.structures if s.roi_name == name)


@pytest.mark.parametrize("name", tg119.CASES)
def test_bundled_case_has_the_report_structures_and_dicom_types(cases, name):
    case = cases[name]
    assert {s.roi_name for s in case.structures} == set(ROIS[name]) | {"BODY"}
    rs = pydicom.dcmread(BUNDLED / name / "RTSTRUCT.dcm")
    types = {r.ROIName: o.RTROIInterpretedType for r, o in zip(rs.StructureSetROISequence,
                                                                 rs.RTROIObservationsSequence)}
    assert types == {**ROIS[name], "BODY": "EXTERNAL"}
    body = case.external.mask
    assert np.median(case.hu[body]) == 0 and (case.hu[~body] == -1000).all()  # water in air
    assert case.external.volume_cm3(case.grid) == pytest.approx(30 * 20 * 20, rel=0.03)  # 30 × 20 × 20 cm box
    for s in case.structures:
        assert s.mask.any() and not (s.mask & ~body).any(), s.roi_name


@pytest.mark.parametrize("name", tg119.CASES)
def test_bundled_case_is_what_the_documented_command_writes(cases, name):
    """sample_data/tg119 = `rtautoplan phantom tg119 -o sample_data/tg119`."""
    made, read = tg119.make_case(name), cases[name]
    assert read.grid == made.grid and np.array_equal(read.hu, made.hu)
    for s in made.structures:
        assert np.array_equal(roi(read, s.roi_name).mask, s.mask), s.roi_name


@pytest.mark.parametrize("name", tg119.CASES)
def test_volumes_match_the_described_shapes(cases, name):
    """Within 10 % of the analytic volume of the shape the test description gives (3 mm voxels; the
    report's own volumes were not available to us)."""
    case = cases[name]
    for roi_name, cm3 in tg119.nominal_volumes_cm3()[name].items():
        assert roi(case, roi_name).volume_cm3(case.grid) == pytest.approx(cm3, rel=0.10), roi_name


@pytest.mark.parametrize("name", tg119.CASES)
def test_prescription_and_goals_are_the_report_s(cases, name):
    rx = cases[name].prescription
    assert rx.site == "generic"
    expected = [p.goal() for p in tg119.published(name)]
    assert list(rx.goals) == expected and len(expected) >= 3
    assert all(g.source.startswith("AAPM TG-119") for g in rx.goals)
    check_rois(rx.goals, cases[name])  # every goal names a ROI of the case


def test_prescription_levels(cases):
    assert [lv.dose_gy for lv in cases["multitarget"].prescription.levels] == [50.0, 25.0, 12.5]
    assert [lv.dose_gy for lv in cases["prostate"].prescription.levels] == [75.6]
    for name in ("headneck", "cshape_easy", "cshape_hard"):
        assert [lv.dose_gy for lv in cases[name].prescription.levels] == [50.0]
    assert roi(cases["prostate"], "Prostate").role is Role.CTV


def test_cshape_surrounds_the_core_5_mm_away(cases):
    case = cases["cshape_hard"]
    core, c = roi(case, "Core").mask, roi(case, "OuterTarget").mask
    gap = distance_mm(core, case.grid.spacing, within_mm=30)[c].min()
    assert 4.5 <= gap < 8.0  # to the core's voxel boxes (half a voxel less than centre to centre)
    x, y, _ = case.grid.centres()
    assert c[:, 38].any() and not (c & (y > 0) & (np.abs(x) < 15)).any()  # closed anteriorly, open posteriorly
    goals = {(g.roi, g.metric): g.upper for g in case.prescription.goals}
    assert goals[("Core", "D10%")] == 10.0 and {g.upper for g in cases["cshape_easy"].prescription.goals
                                               if g.roi == "Core"} == {25.0}


def test_targets_and_organs_are_placed_as_described(cases):
    multi = cases["multitarget"]
    z = multi.grid.centres()[2][:, 0, 0]
    mean_z = {n: z[np.nonzero(roi(multi, n).mask.any(axis=(1, 2)))[0]].mean()
              for n in ("InferiorTarget", "CentralTarget", "SuperiorTarget")}
    assert mean_z["InferiorTarget"] < mean_z["CentralTarget"] < mean_z["SuperiorTarget"]
    prostate = cases["prostate"]
    ptv, gland = roi(prostate, "PTV").mask, roi(prostate, "Prostate").mask
    assert not (gland & ~ptv).any()
    assert (ptv & roi(prostate, "Rectum").mask).any() and (ptv & roi(prostate, "Bladder").mask).any()
    hn = cases["headneck"]
    cord_to_ptv = distance_mm(roi(hn, "Cord").mask, hn.grid.spacing, within_mm=40)[roi(hn, "PTV").mask].min()
    assert cord_to_ptv >= 15.0 - 1.5  # to the cord's voxel boxes


def test_at_or_better_than_the_published_mean():
    def row(goal, achieved, mean):
        return benchmark.GoalRow("c", goal, achieved, True, mean, 1.0, "generic", "photon", 1.0)

    upper = Goal("Core", "D10%", upper=10.0)
    lower = Goal("OuterTarget", "D95%", lower=50.0)
    assert row(upper, 9.0, 9.5).at_or_better_than_mean and not row(upper, 9.6, 9.5).at_or_better_than_mean
    assert row(lower, 50.2, 50.1).at_or_better_than_mean and not row(lower, 50.0, 50.1).at_or_better_than_mean
    assert row(lower, 50.0, None).at_or_better_than_mean is None
    missed = benchmark.GoalRow("c", upper, 12.0, False, None, None, "generic", "photon", 1.0)
    assert benchmark.exit_code([row(upper, 9.0, None)]) == 0 and benchmark.exit_code([missed]) == 3


def test_published_table_cites_the_report_and_invents_no_result():
    assert len(tg119.PUBLISHED) == 24
    for p in tg119.PUBLISHED:
        assert p.case in tg119.CASES and (p.lower is None) != (p.upper is None)
        assert (p.mean_gy is None) == (p.sd_gy is None)  # both from the report, or neither


def test_benchmark_command_on_one_case(tmp_path):
    out = tmp_path / "bm"
    code = main(["benchmark", "tg119", "-o", str(out), "--cases", "cshape_hard", "--max-steps", "0",
                 "--dose-grid-factor", "2", "4", "4"])
    assert code in (0, 3)
    with open(out / "tg119.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["roi"], r["metric"]) for r in rows] == [
        ("cshape_hard", "OuterTarget", "D95%"), ("cshape_hard", "OuterTarget", "D10%"), ("cshape_hard", "Core", "D10%")]
    assert all(float(r["achieved_gy"]) > 0 for r in rows)
    assert code == (0 if all(r["met"] == "yes" for r in rows) else 3)
    assert (out / "tg119.png").stat().st_size > 1000
    assert (out / "cshape_hard" / "RP_rtautoplan.dcm").is_file()


def test_phantom_command_writes_the_cases(tmp_path):
    assert main(["phantom", "tg119", "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(tg119.CASES)


@pytest.mark.slow
def test_benchmark_every_case(tmp_path):
    """The whole suite at the default settings: every goal measured, the exit code says whether all are met."""
    code = main(["benchmark", "tg119", "-o", str(tmp_path)])
    with open(tmp_path / "tg119.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(tg119.PUBLISHED)
    assert code == (0 if all(r["met"] == "yes" for r in rows) else 3)


@pytest.mark.slow
def test_multitarget_photons_meet_every_maximum_after_the_goal_rounds(tmp_path):
    """Multi-target photons at the defaults (9 fields, rounds from the best plan): the rounds bring every
    D10 maximum within its goal (measured 52.57 / 34.46 / 24.46 Gy for 53 / 35 / 25, 2026-12-03; 53.69 /
    35.75 / 25.74 before them) and keep every D99 within 0.3 Gy of its minimum (24.74 for 25, 12.35 for
    12.5: still missed, so the benchmark exits 3); after a round that is not kept, a gentler one is."""
    import json

    code = main(["benchmark", "tg119", "-o", str(tmp_path), "--cases", "multitarget"])
    with open(tmp_path / "tg119.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert all(r["met"] == "yes" for r in rows if r["upper_gy"])
    assert all(float(r["achieved_gy"]) >= float(r["lower_gy"]) - 0.3 for r in rows if r["lower_gy"])
    assert code == (0 if all(r["met"] == "yes" for r in rows) else 3)
    steps = json.loads((tmp_path / "multitarget" / "plan_log.json").read_text())["steps"]
    rounds = [s for s in steps if s["action"].startswith("goal round")]
    assert rounds and rounds[0]["accepted"] and "CentralTarget D10% ≤ 53 Gy at" in rounds[0]["action"]
    kept_after_a_miss = [b for a, b in zip(rounds, rounds[1:]) if not a["accepted"] and b["accepted"]]
    assert kept_after_a_miss
