"""Suggest mode (issue 19): the planner's top-k with what-ifs, the clinician's accept / edit / reject in
the log, through the Python API and the hook; every hook request and response checked against the
versioned JSON Schema ``docs/hook.schema.json``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.folder import PlanOptions
from rtautoplan.hook import answer, run_request, serve

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "prostate01"
SCHEMA = json.loads((ROOT / "docs" / "hook.schema.json").read_text())


def validator(kind: str):
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": SCHEMA["$defs"]})


REQUEST, RESPONSE = validator("request"), validator("response")


def ask(request: dict, options: PlanOptions) -> dict:
    """A request through the hook, both sides checked against the schema."""
    response = run_request(request, options)
    RESPONSE.validate(response)
    return response


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> PlanOptions:
    cache = tmp_path_factory.mktemp("dij")
    return PlanOptions(tps=lambda: InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                                                 cache_dir=cache), max_steps=3)


@pytest.fixture(scope="module")
def session(fast, tmp_path_factory):
    """A hook session on prostate01 through four decisions: accept #2, edit, reject, finish."""
    out = tmp_path_factory.mktemp("suggest") / "plan"
    opened = {"mode": "suggest", "case": str(SAMPLE), "output": str(out), "k": 2}
    REQUEST.validate(opened)
    first = ask(opened, fast)
    sid = first["session"]
    follow = [{"session": sid, "decision": "accept", "index": 1},
              {"session": sid, "decision": "edit", "index": 0, "action": "t_bla-"},
              {"session": sid, "decision": "reject"},
              {"session": sid, "decision": "finish"}]
    responses = [first]
    for request in follow:
        REQUEST.validate(request)
        responses.append(ask(request, fast))
    return out, responses


@pytest.mark.slow
def test_suggestions_carry_their_what_if_and_the_step_its_uncertainty(session):
    _, (first, *_) = session
    assert first["status"] == "suggest" and first["step"] == 1 and len(first["suggestions"]) == 2
    for rank, s in enumerate(first["suggestions"], 1):
        assert s["rank"] == rank
        if s["accepted"]:
            assert s["score"] == pytest.approx(first["score"]["current"] + s["score_delta"])
            assert set(s["dvh_delta"]) >= {"Rectum", "Bladder"}
            assert all(len(v) == len(s["dvh_dose_gy"]) for v in s["dvh_delta"].values())
            assert all(abs(x) <= 100.0 for v in s["dvh_delta"].values() for x in v)
    assert first["uncertainty"]["kind"] == "probability" and "flags" in first["uncertainty"]


def test_what_if_does_not_change_the_plan(fast):
    from rtautoplan.suggest import SuggestSession

    s = SuggestSession.open(SAMPLE, fast, k=2)
    before, parameters = s.env.last_dose.gy.copy(), dict(s.env.parameters)
    assert s.suggest() is s.suggest()  # asked once per step
    assert s.env.parameters == parameters
    assert np.array_equal(s.env.last_dose.gy, before)


@pytest.mark.slow
def test_decisions_are_recorded_as_overrides_in_the_responses_and_the_log(session):
    out, (first, accepted, edited, rejected, finished) = session
    assert accepted["last"]["override"] == "accepted" and accepted["last"]["action"] == first["suggestions"][1]["action"]
    assert edited["last"]["override"].startswith("edited: ") and edited["last"]["action"] == "t_bla-"
    assert edited["last"]["mu"] is None  # a clinician's edit has no behaviour probability
    assert rejected["last"]["override"] == "rejected" and rejected["last"]["accepted"] is False
    assert finished["status"] in ("ok", "unacceptable")
    assert [o["decision"].split(":")[0] for o in finished["overrides"]] == ["accepted", "edited", "rejected"]
    log = json.loads((out / "plan_log.json").read_text())
    assert log["mode"] == "suggest" and len(log["overrides"]) == 3
    import pydicom

    assert pydicom.dcmread(out / "RP_rtautoplan.dcm").ApprovalStatus == "UNAPPROVED"


@pytest.mark.parametrize("request_, where", [
    ({"session": "nope", "decision": "accept"}, "not an open session"),
    ({"mode": "suggest", "case": "x"}, "'output' is missing"),
    ({"mode": "tinker", "case": "x", "output": "y"}, "request key 'mode'"),
    ({"mode": "suggest", "case": "x", "output": "y", "k": "3"}, "request key 'k'"),
    ({"session": "nope", "decision": "accept", "colour": 1}, "unknown key(s) 'colour'"),
    ({"case": "x", "output": "y", "k": 2}, "suggest mode only"),
])
def test_bad_suggest_requests_are_input_errors_matching_the_schema(request_, where):
    response = run_request(request_)
    RESPONSE.validate(response)
    assert response["kind"] == "input" and where in response["error"]


def test_follow_ups_on_an_open_session_are_checked(fast, tmp_path):
    first = ask({"mode": "suggest", "case": str(SAMPLE), "output": str(tmp_path / "p"), "k": 1}, fast)
    sid = first["session"]
    for request, where in (({"session": sid, "decision": "edit"}, "missing for an edit"),
                           ({"session": sid, "decision": "edit", "action": "warp+"}, "not an action"),
                           ({"session": sid, "decision": "accept", "index": 5}, "not a suggestion"),
                           ({"session": sid, "decision": "approve"}, "not a decision")):
        response = ask(request, fast)
        assert response["status"] == "error" and where in response["error"], response
    accepted = ask({"session": sid, "decision": "accept"}, fast)
    assert accepted["status"] == "suggest" and accepted["last"]["override"] == "accepted" and accepted["step"] == 2
    finished = ask({"session": sid, "decision": "finish"}, fast)
    assert finished["overrides"] == [{"step": 1, "action": first["suggestions"][0]["action"], "decision": "accepted"}]
    log = json.loads((tmp_path / "p" / "plan_log.json").read_text())
    assert log["overrides"][0]["decision"] == "accepted" and log["steps"][0]["override"] == "accepted"
    assert ask({"session": sid, "decision": "accept"}, fast)["kind"] == "input"  # closed


def test_every_response_of_the_json_lines_hook_matches_the_schema(fast, tmp_path):
    lines = ["{oops", json.dumps({"case": "x"}), json.dumps(["x"]), json.dumps({"case": str(tmp_path / "none"),
             "output": str(tmp_path / "o")}), json.dumps({"case": str(SAMPLE), "output": str(tmp_path / "auto"),
                                                          "max_steps": 0})]
    written = []
    serve([line + "\n" for line in lines], written.append, fast)
    assert len(written) == len(lines)
    for line in written:
        RESPONSE.validate(json.loads(line))
    assert json.loads(written[-1])["status"] in ("ok", "unacceptable")
    RESPONSE.validate(answer("{oops"))
