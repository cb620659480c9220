"""Clinical goals, normalisation and the clinical gate (issue 12): values against analytic doses,
and every surface (CLI exit code, log, report, hook, batch) marking a plan that fails its goals."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from rtautoplan import gate
from rtautoplan.case import Goal, Normalisation, Role
from rtautoplan.errors import InputError
from rtautoplan.goals import canonical_metric, measure, metric_value, parse_goal
from rtautoplan.normalisation import normalise
from rtautoplan.pipeline import choose_site
from rtautoplan.plan import Dose, Modality, Plan
from rtautoplan.protocols import goals_for


def test_metric_names_are_canonical():
    assert canonical_metric("d95%") == "D95%"
    assert canonical_metric("D0.03 cc") == "D0.03cc"
    assert canonical_metric("v20gy") == "V20Gy"
    assert canonical_metric("DMAX") == "Dmax"
    assert canonical_metric("D95") is None


@pytest.mark.parametrize("entry, message", [
    ({"roi": "Core", "metric": "D10", "max_gy": 25}, "metric"),
    ({"roi": "Core", "metric": "D10%"}, "no bound"),
    ({"roi": "Core", "metric": "V20Gy", "max_gy": 25}, "cannot take"),
    ({"roi": "Core", "metric": "D10%", "max_gy": -1}, "≥ 0"),
    ({"roi": "Core", "metric": "D10%", "max_gy": 25, "colour": 1}, "unknown key"),
    ({"roi": "Core", "metric": "D10%", "min_gy": 30, "max_gy": 25}, "above"),
])
def test_a_bad_goal_is_an_input_error_naming_the_entry(entry, message):
    with pytest.raises(InputError, match=message) as error:
        parse_goal(entry, "case/prescription.json", 3)
    assert '"goals"[3]' in str(error.value) and "prescription.json" in str(error.value)


def test_goal_values_on_a_linear_dose_ramp(small_case):
    """A dose rising linearly 0 … 99 Gy over 100 equal voxels: Dx% is the (100 − x)-th value, Vx Gy is
    (100 − x) %, Dmean 49.5 Gy."""
    dose = np.arange(100, dtype=float)
    idx = np.arange(100)
    assert metric_value("Dmean", "Gy", dose, idx, 0.001) == pytest.approx(49.5)
    assert metric_value("D10%", "Gy", dose, idx, 0.001) == pytest.approx(89.5, abs=0.6)
    assert metric_value("V20Gy", "%", dose, idx, 0.001) == pytest.approx(80.0)
    assert metric_value("V20Gy", "cc", dose, idx, 0.1) == pytest.approx(8.0)
    assert metric_value("Dmax", "Gy", dose, idx, 0.001) == 99.0


def _uniform_dose(case, gy_in_ctv: float, elsewhere: float = 0.0) -> np.ndarray:
    dose = np.full(case.grid.shape, elsewhere)
    dose[case.structure("CTV_6000").mask] = gy_in_ctv
    return dose


def test_goal_met_and_missed_with_margin(small_case):
    dose = _uniform_dose(small_case, 60.0, 10.0)
    met = measure(Goal("CTV_6000", "D95%", "Gy", 57.0), dose, small_case)
    missed = measure(Goal("SpinalCord", "Dmax", "Gy", None, 5.0), dose, small_case)
    assert met.met and met.margin == pytest.approx(3.0)
    assert not missed.met and missed.margin == pytest.approx(-5.0)
    with pytest.raises(InputError, match="does not have"):
        measure(Goal("Heart", "Dmean", "Gy", None, 20.0), dose, small_case)


def test_normalisation_scales_dose_and_weights_to_d95_equal_rx(small_case):
    rng = np.random.default_rng(0)
    dose = _uniform_dose(small_case, 1.0) * rng.uniform(50, 56, small_case.grid.shape)
    plan = Plan("small", Modality.PHOTON, (), (), (np.ones(4),), Dose(small_case.grid, dose))
    scaled, done = normalise(small_case, plan)
    ctv = small_case.structure("CTV_6000").mask
    assert metric_value("D95%", "Gy", scaled.dose.gy, ctv, 1.0) == pytest.approx(60.0, rel=1e-6)
    assert scaled.weights[0] == pytest.approx(np.full(4, done.factor))
    assert done.roi == "CTV_6000" and done.factor > 1
    unscaled, none = normalise(small_case, plan, Normalisation(metric="none"))
    assert none is None and unscaled is plan


def test_a_carbon_plan_is_normalised_on_its_ctv_a_photon_plan_on_its_ptv(small_case):
    """Seed 003 optimises CTVs only: its PTV is cold, and scaling the plan to PTV D95 = Rx made hn01's
    CTVs 137 % of Rx. The same dose normalises on the CTV for carbon and on the PTV for photons."""
    from rtautoplan.case import Structure
    from rtautoplan.structures.margins import expand

    ctv = small_case.structure("CTV_6000").mask
    ptv = expand(ctv, small_case.grid.spacing, 5.0)
    case = small_case.with_structures(small_case.structures + (Structure("PTV_6000", ptv, Role.PTV, rx_gy=60.0),))
    dose = np.where(ctv, 60.0, np.where(ptv, 40.0, 5.0))
    for modality, roi in ((Modality.CARBON, "CTV_6000"), (Modality.PHOTON, "PTV_6000")):
        plan = Plan("small", modality, (), (), (np.ones(4),), Dose(case.grid, dose))
        scaled, done = normalise(case, plan)
        assert done.roi == roi
        assert metric_value("D95%", "Gy", scaled.dose.gy, case.structure(roi).voxels, 1.0) == pytest.approx(60.0)
    assert done.factor > 1.4  # the photon plan, scaled to its cold PTV


def test_gate_fails_on_a_missed_must_goal_and_a_hot_spot_and_warns_on_a_desired_one(small_case):
    goals = goals_for(small_case, "generic") + (Goal("Esophagus", "Dmean", "Gy", None, 1.0, 2),)
    cold = gate.check(small_case, _uniform_dose(small_case, 60.0), goals)
    assert cold.acceptable
    hot = _uniform_dose(small_case, 60.0, 0.0)
    hot[small_case.structure("SpinalCord").mask] = 66.0  # outside the target: > 107 % of 60 Gy, > 50 Gy cord
    hot[small_case.structure("Esophagus").mask] = 5.0
    verdict = gate.check(small_case, hot, goals)
    assert not verdict.acceptable
    assert any("SpinalCord D0.03cc" in r for r in verdict.reasons)
    assert any("max outside the targets" in r for r in verdict.reasons)
    assert any("Esophagus Dmean" in w for w in verdict.all_warnings())
    assert not any("Esophagus" in r for r in verdict.reasons)
    record = verdict.as_json()
    assert record["acceptable"] is False and len(record["goals"]) == len(goals)


def test_protocol_goals_yield_to_the_prescription_s_own(small_case):
    own = (Goal("SpinalCord", "Dmax", "Gy", None, 45.0),)
    case = replace(small_case, prescription=replace(small_case.prescription, goals=own))
    goals = goals_for(case, "generic")
    assert [g for g in goals if g.roi == "SpinalCord"] == list(own)
    assert any(g.roi == "CTV_6000" and g.metric == "D98%" and g.lower == pytest.approx(57.0) for g in goals)


def test_site_is_chosen_from_the_rois_and_never_forced_to_hn(small_case):
    assert choose_site(small_case)[0] == "generic"
    assert choose_site(small_case, "hn") == ("hn", "--site option")
    with_rx_site = replace(small_case, prescription=replace(small_case.prescription, site="liver"))
    assert choose_site(with_rx_site) == ("liver", "prescription.json")
    from rtautoplan.phantom import make_case

    assert choose_site(make_case("hn", 1))[0] == "hn"
    assert choose_site(make_case("prostate", 1))[0] == "prostate"


def test_lower_level_hot_spot_is_held_away_from_the_boost_only(small_case):
    """A second level around the CTV: its voxels next to the boost may be hot, those ≥ 10 mm away not."""
    from rtautoplan.case import DoseLevel, Prescription, Structure
    from rtautoplan.structures.margins import expand

    ctv = small_case.structure("CTV_6000").mask
    elective = expand(ctv, small_case.grid.spacing, 16.0) & ~ctv
    case = small_case.with_structures(small_case.structures + (
        Structure("CTV_5000", elective, Role.CTV, level=2, rx_gy=50.0, roi_name="CTV_5000"),))
    case = replace(case, prescription=Prescription((DoseLevel("CTV_6000", 60.0), DoseLevel("CTV_5000", 50.0)), 30))
    region = gate.lower_level_region(case, case.structure("CTV_5000"))
    assert region.any() and not (region & expand(ctv, case.grid.spacing, 9.9)).any()
    dose = np.where(ctv, 60.0, np.where(elective, 50.0, 0.0))
    dose[elective & ~region] = 58.0  # the fall-off next to the boost
    assert all(h.met for h in gate.hotspots(case, dose) if "CTV_5000" in h.rule)
    dose[region] = 56.0  # 112 % of 50 Gy far from the boost
    assert not all(h.met for h in gate.hotspots(case, dose) if "CTV_5000" in h.rule)


# -- every surface marks a plan that fails its goals ---------------------------------------------

SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"
IMPOSSIBLE = {"roi": "Rectum", "metric": "Dmax", "max_gy": 1.0}


@pytest.fixture(scope="module")
def impossible_case(tmp_path_factory):
    """prostate01 with a goal no plan can meet (rectum Dmax ≤ 1 Gy next to a 78 Gy PTV)."""
    import shutil

    folder = tmp_path_factory.mktemp("cases") / "prostate_impossible"
    shutil.copytree(SAMPLE, folder)
    rx = json.loads((folder / "prescription.json").read_text())
    rx["goals"] = [IMPOSSIBLE]
    (folder / "prescription.json").write_text(json.dumps(rx))
    return folder


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.folder import PlanOptions

    cache = tmp_path_factory.mktemp("dij")
    return PlanOptions(tps=lambda: InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                                                 cache_dir=cache), max_steps=0)


def test_cli_exits_3_prints_the_goals_and_marks_log_and_report(impossible_case, tmp_path, capsys):
    from rtautoplan.cli import main

    out = tmp_path / "plan"
    code = main(["plan", str(impossible_case), "-o", str(out), "--max-steps", "0", "--dose-grid-factor", "2", "4", "4"])
    printed = capsys.readouterr().out
    assert code == gate.EXIT_UNACCEPTABLE == 3
    assert "NOT ACCEPTABLE" in printed and "Rectum" in printed and "clinical goals" in printed
    log = json.loads((out / "plan_log.json").read_text())
    assert log["acceptable"] is False and any("Rectum Dmax" in r for r in log["reasons"])
    assert log["steps"] == [] and "normalisation" in log
    rectum = [g for g in log["goals"] if g["roi"] == "Rectum" and g["metric"] == "Dmax"]
    assert rectum and rectum[0]["met"] is False and rectum[0]["value"] > 1.0
    page = (out / "report.html").read_text()
    assert 'class="banner fail"' in page and "NOT ACCEPTABLE" in page
    import pydicom

    assert pydicom.dcmread(out / "RP_rtautoplan.dcm").ApprovalStatus == "UNAPPROVED"


@pytest.mark.tools
def test_the_report_of_an_unacceptable_plan_opens_with_a_red_banner(impossible_case, tmp_path, tool):
    """Headless Chromium renders the report; the top of the page is the banner's red, not white."""
    import subprocess

    from matplotlib.image import imread

    from rtautoplan.cli import main

    chromium = tool("/usr/bin/chromium")
    out = tmp_path / "plan"
    main(["plan", str(impossible_case), "-o", str(out), "--max-steps", "0", "--dose-grid-factor", "2", "4", "4"])
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,600",
                    f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120)
    pixels = imread(shot)[:, :, :3]
    banner = (np.abs(pixels - np.array([0xfd, 0xe8, 0xea]) / 255.0).max(axis=2) < 0.02)  # .banner.fail background
    assert banner[: pixels.shape[0] // 2].mean() > 0.05, "no red banner in the top half of the report"


def test_hook_answers_unacceptable_with_the_reasons(impossible_case, fast, tmp_path):
    from rtautoplan.hook import run_request

    response = run_request({"case": str(impossible_case), "output": str(tmp_path / "p")}, fast)
    assert response["status"] == "unacceptable" and response["acceptable"] is False
    assert any("Rectum Dmax" in r for r in response["reasons"])
    assert set(response["files"]) == {"rtstruct", "plan", "rtdose", "report", "log"}
    json.dumps(response)


def test_batch_summary_has_the_gate_column_and_exit_3(impossible_case, tmp_path):
    from rtautoplan.batch import SUMMARY_FILE
    from rtautoplan.cli import main

    root = impossible_case.parent
    out = tmp_path / "out"
    code = main(["batch", str(root), "-o", str(out), "--max-steps", "0", "--dose-grid-factor", "2", "4", "4"])
    rows = list(csv.DictReader((out / SUMMARY_FILE).open()))
    assert code == 3
    assert rows[0]["status"] == "unacceptable" and rows[0]["acceptable"] == "no"
    assert "Rectum Dmax" in rows[0]["message"]


def test_adapters_the_command_line_cannot_drive_are_refused_in_one_line(tmp_path, capsys):
    from rtautoplan.cli import main

    assert main(["plan", str(SAMPLE), "-o", str(tmp_path / "a"), "--adapter", "dicom-export"]) == 2
    err = capsys.readouterr().err
    assert "adapter 'dicom-export'" in err and "exchange" in err and "\n" not in err.strip()
    assert main(["plan", str(SAMPLE), "-o", str(tmp_path / "b"), "--adapter", "phoenix"]) == 2
    assert "plans carbon beams, not photon" in capsys.readouterr().err


def test_when_no_plan_passes_the_one_nearest_to_passing_leaves():
    """A plan 0.05 Gy over a hot-spot limit beats a better-scoring one 3 Gy over it."""
    from rtautoplan.pipeline import choose_plan

    def verdict(value):
        return gate.GateResult((), (gate.HotSpot("max outside the targets", value, 74.9),))

    class Score:
        def __init__(self, total):
            self.total, self.higher_is_better = total, True

    finals = {"best": (3, None, Score(-1.5)), "initial": (0, None, Score(-3.0))}
    verdicts = {"best": verdict(77.9), "initial": verdict(74.95)}
    assert verdicts["best"].violation > verdicts["initial"].violation > 0
    assert choose_plan(finals, verdicts) == "initial"
    verdicts["best"] = verdict(74.0)
    assert verdicts["best"].violation == 0 and choose_plan(finals, verdicts) == "best"
