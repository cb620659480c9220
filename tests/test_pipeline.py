"""The closed loop end to end: DICOM in, a better plan out as valid DICOM, every decision logged."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from dicom_checks import dciodvfy, to_16_bit
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.cli import main
from rtautoplan.dicom.read import read_case
from rtautoplan.loop import BREAKS_GATE, UNDONE, is_better, run_loop
from rtautoplan.outputs import write_outputs
from rtautoplan.pipeline import SETUPS, make_env, plan_case
from rtautoplan.policies import tpp as T

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dij")


def coarse(cache, factor=(2, 4, 4)):
    """The in-house engine on a coarse dose grid. H&N needs (2, 2, 2): on 6 × 10 × 10 mm dose voxels
    the leaf-sequenced plan loses what the loop gained (the small OARs sit in steep gradients)."""
    return InHousePhoton(n_beams=7, dose_grid_factor=factor, max_iter=60, cache_dir=cache)


@pytest.fixture(scope="module")
def prostate_plan(cache):
    return plan_case(read_case(SAMPLES / "prostate01"), site="prostate", tps=coarse(cache), policy="rule-based")


def test_prostate_cases_are_planned_by_acer_by_default(cache):
    """Issue 7 item 6: the trained ACER planner is the prostate default (docs/results.md, ACER)."""
    _, result = plan_case(read_case(SAMPLES / "prostate01"), site="prostate", tps=coarse(cache), max_steps=2)
    assert result.policy.startswith("acer")


@pytest.mark.parametrize("sample, site", [("prostate01", "prostate"), ("hn01", "hn")])
def test_rule_based_plan_improves_on_the_initial_plan(sample, site, cache, prostate_plan):
    planned, result = prostate_plan if site == "prostate" else plan_case(
        read_case(SAMPLES / sample), site=site, tps=coarse(cache, (2, 2, 2)), max_steps=3)
    assert is_better(result.score, result.initial_score), (result.initial_score.total, result.score.total)
    assert result.best_step > 0 and result.policy == "rule-based"
    assert planned.has("zRing_7000" if site == "hn" else "PTV_7800")
    assert all(s.alternatives and s.parameters for s in result.steps)
    accepted = [s.score for s in result.steps if s.accepted]  # greedy: every kept step is a better plan
    assert all(b > a for a, b in zip(accepted, accepted[1:]))
    assert all(s.reason in ("", UNDONE, BREAKS_GATE) for s in result.steps)  # the greedy planner's and the gate's


def test_photon_result_is_the_sequenced_delivered_plan(prostate_plan):
    _, result = prostate_plan
    assert result.delivery and len(result.delivery) == len(result.plan.beams)
    for weights, beam in zip(result.plan.weights, result.delivery):
        assert (weights == beam.delivered).all()


def test_rejected_actions_are_logged_and_never_reach_the_plan(cache):
    """A planner that only ever raises λ_BLA (×1.65 per step) leaves the safety bound 10³ after
    14 steps (the rectum still fails, so ψ < 9 and the loop goes on): that step is rejected with
    its reason and the loop stops, since the planner proposes nothing else."""

    class Reckless:
        name = "reckless"

        def act(self, observation):
            return T.NAMES.index("lam_bla") * 2  # lam_bla+

    env = make_env(SETUPS[("prostate", "photon")], read_case(SAMPLES / "prostate01"), tps=coarse(cache), max_steps=20)
    loop = run_loop(env, Reckless(), max_steps=20)
    rejected = [s for s in loop.steps if not s.accepted]
    assert len(rejected) == 1 and "lam_bla" in rejected[0].reason and "outside its bounds" in rejected[0].reason
    assert env.parameters["lam_bla"] <= 1e3
    assert not is_better(loop.initial_score, loop.best_score)


def test_an_action_that_changes_no_parameter_is_passed_over_for_the_next_ranked(cache):
    """From the trivial TPPs t_PTV is at its lower clamp (1.0), so "t_ptv−" would re-optimise the
    same plan: the loop skips it without calling the TPS and takes the planner's second choice."""

    class Stuck:
        name = "stuck"

        def rank(self, observation):
            return [(T.NAMES.index("t_ptv") * 2 + 1, 0.9), (T.NAMES.index("lam_ptv") * 2, 0.1)]

    env = make_env(SETUPS[("prostate", "photon")], read_case(SAMPLES / "prostate01"), tps=coarse(cache), max_steps=2)
    assert not env.moves(T.NAMES.index("t_ptv") * 2 + 1) and env.moves(T.NAMES.index("lam_ptv") * 2)
    loop = run_loop(env, Stuck(), max_steps=2)
    assert [s.action for s in loop.steps] == ["lam_ptv+"] * len(loop.steps) and loop.steps
    assert env.parameters["t_ptv"] == 1.0 and env.parameters["lam_ptv"] > 1.0
    assert [label for label, _ in loop.steps[0].alternatives] == ["lam_ptv+"]


@pytest.mark.tools
def test_outputs_are_valid_dicom_with_consistent_references(prostate_plan, tmp_path, tool):
    planned, result = prostate_plan
    paths = write_outputs(planned, result, tmp_path, uid_seed="test")
    rs, rp, rd = (pydicom.dcmread(paths[k]) for k in ("rtstruct", "plan", "rtdose"))
    assert len({rs.StudyInstanceUID, rp.StudyInstanceUID, rd.StudyInstanceUID}) == 1
    assert len({rs.SeriesInstanceUID, rp.SeriesInstanceUID, rd.SeriesInstanceUID}) == 3
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    assert rd.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    again = write_outputs(planned, result, tmp_path / "again", uid_seed="test")
    assert pydicom.dcmread(again["plan"]).SOPInstanceUID == rp.SOPInstanceUID  # deterministic option
    for path in (paths["rtstruct"], paths["plan"], to_16_bit(paths["rtdose"], tmp_path / "RD16.dcm")):
        errors, output = dciodvfy(tool, path)
        assert not errors, output
    log = json.loads(paths["log"].read_text())
    assert log["input_sha256"] and len(log["steps"]) == len(result.steps)
    assert log["final score"] == pytest.approx(result.score.total, abs=1e-3)
    html = paths["report"].read_text()
    assert "Bladder V94.3%" in html and "rule-based" in html


def test_plan_command_writes_everything_and_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["plan", str(SAMPLES / "prostate01"), "-o", str(tmp_path / "out"), "--max-steps", "2"])
    assert code == (0 if json.loads((tmp_path / "out" / "plan_log.json").read_text())["acceptable"] else 3)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"RS_rtautoplan.dcm", "RP_rtautoplan.dcm", "RD_rtautoplan.dcm", "report.html", "plan_log.json"} <= names
    assert main(["plan", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "Traceback" not in err[0]


@pytest.mark.tools
@pytest.mark.parametrize("modality", ["proton", "carbon"])
def test_ion_plans_go_through_the_same_loop_to_a_valid_rt_ion_plan(modality, cache, tmp_path, tool):
    """Protons (in-house, seed 002 env) and carbon (PHOENIX simulator, seed 003's 45 agents): the plan
    leaves normalised on the target its engine optimised (the PTV for protons, the CTV for carbon, which
    plans no PTV) with D95 = Rx, checked by the gate, as a valid RT Ion Plan."""
    from rtautoplan.adapters.inhouse_proton import InHouseProton
    from rtautoplan.adapters.phoenix import PhoenixAdapter
    from rtautoplan.adapters.phoenix_api import PhoenixServer

    case = read_case(SAMPLES / "hn01")
    if modality == "proton":
        tps = InHouseProton(n_beams=2, dose_grid_factor=(2, 4, 4), spot_spacing_mm=8.0, max_iter=20, cache_dir=cache)
        planned, result = plan_case(case, site="hn", modality=modality, tps=tps, max_steps=2)
    else:
        with PhoenixServer(workers=1, dose_grid_mm=8.0, spot_spacing_mm=6.0) as server:
            tps = PhoenixAdapter(server=server, max_iterations=30)
            planned, result = plan_case(case, site="hn", modality=modality, tps=tps, max_steps=2)
    from rtautoplan.dvh import d_percent

    norm = result.normalisation
    assert norm.roi.startswith("PTV" if modality == "proton" else "CTV") and norm.dose_gy == 70.0
    assert d_percent(result.plan.dose.gy, planned.structure(norm.roi).voxels, 95.0) == pytest.approx(70.0, abs=0.05)
    assert result.gate is not None and len(result.gate.goals) > 0
    assert result.plan.dose.kind == "EFFECTIVE" and not result.delivery
    paths = write_outputs(planned, result, tmp_path)
    errors, output = dciodvfy(tool, paths["plan"])
    assert not errors, output
    assert pydicom.dcmread(paths["plan"]).IonBeamSequence[0].RadiationType == ("PROTON" if modality == "proton" else "ION")


def test_unknown_roi_names_stop_the_plan_unless_kept(tmp_path, capsys):
    """A case from elsewhere with a ROI name that matches no TG-263 name: by default the plan stops
    naming the ROI and the fix; with --unknown-rois keep it is planned and the ROI written back."""
    import shutil

    case = tmp_path / "case"
    shutil.copytree(SAMPLES / "prostate01", case)
    rs = pydicom.dcmread(case / "RTSTRUCT.dcm")
    next(r for r in rs.StructureSetROISequence if r.ROIName == "Femur_Head_L").ROIName = "Hueftkopf links"
    rs.save_as(case / "RTSTRUCT.dcm")
    fast = ["--max-steps", "1", "--dose-grid-factor", "2", "4", "4"]
    assert main(["plan", str(case), "-o", str(tmp_path / "a"), *fast]) == 2
    assert "Hueftkopf links" in capsys.readouterr().err
    assert main(["plan", str(case), "-o", str(tmp_path / "b"), "--unknown-rois", "keep", *fast]) in (0, 3)  # 3: gate
    written = pydicom.dcmread(tmp_path / "b" / "RS_rtautoplan.dcm")
    assert "Hueftkopf links" in [r.ROIName for r in written.StructureSetROISequence]


def test_a_photon_tps_without_beamlet_geometry_is_refused_clearly(cache):
    from dataclasses import replace

    from rtautoplan.errors import InputError

    class NoGeometry(InHousePhoton):
        def plan(self):
            return replace(super().plan(), positions=())

    tps = NoGeometry(n_beams=7, dose_grid_factor=(2, 4, 4), max_iter=60, cache_dir=cache)
    tps.name = "no-geometry"
    with pytest.raises(InputError, match="'no-geometry'.*cannot be leaf-sequenced"):
        plan_case(read_case(SAMPLES / "prostate01"), site="prostate", tps=tps, max_steps=1)


def test_adapter_options_add_to_the_setups_and_a_foreign_option_is_an_input_error():
    """``tps_with_options``: the shells' engine options (a dose grid) on top of the setup's (seed 000's
    engine for prostate); an option the adapter does not take names the adapter and the option."""
    from rtautoplan.errors import InputError
    from rtautoplan.pipeline import tps_with_options

    tps = tps_with_options(SETUPS[("prostate", "photon")], None, {"dose_grid_factor": (2, 4, 4)})
    assert tps.dose_grid_factor == (2, 4, 4) and not tps.warm_start and tps.max_iter == 60
    assert tps_with_options(SETUPS[("prostate", "photon")], "inhouse-proton", {}).name != tps.name
    with pytest.raises(InputError, match="inhouse-photon.*no_such_option"):
        tps_with_options(SETUPS[("prostate", "photon")], None, {"no_such_option": 1})
