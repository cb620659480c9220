"""The TPS scripting hook: the Python call, and JSON Lines over a real ``rtautoplan hook`` process.

Plans are coarse (dose grid 2 × 4 × 4, 1–2 steps) so the file stays well under 30 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.folder import PlanOptions
from rtautoplan.hook import MAX_LINE_BYTES, answer, run_request, serve

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> PlanOptions:
    cache = tmp_path_factory.mktemp("dij")

    def tps():
        return InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30, cache_dir=cache)

    return PlanOptions(tps=tps, max_steps=2)


def test_python_call_plans_the_case(fast, tmp_path):
    response = run_request({"case": str(SAMPLE), "output": str(tmp_path / "plan"), "seed": 1}, fast)
    assert response["status"] in ("ok", "unacceptable"), response
    assert response["acceptable"] is (response["status"] == "ok") and "goals" in response
    assert set(response["files"]) == {"rtstruct", "plan", "rtdose", "report", "log"}
    assert all(Path(p).is_file() for p in response["files"].values())
    score = response["score"]
    assert score["system"] == "proknow9" and score["final"] >= score["initial"]
    assert response["steps"] == 2
    json.dumps(response)  # plain JSON types only


@pytest.mark.parametrize("request_, where", [
    ({"case": "x", "output": "y", "colour": "red"}, "unknown key(s) 'colour'"),
    ({"case": "x"}, "'output' is missing"),
    ({"case": "x", "output": "y", "max_steps": "3"}, "request key 'max_steps'"),
    ({"case": "x", "output": "y", "seed": True}, "is not an integer"),
    ({"case": "x", "output": "y", "site": "lung"}, "request key 'site'"),
    ({"case": "x", "output": "y", "unknown_rois": "guess"}, "request key 'unknown_rois'"),
    ({"case": "x", "output": "y", "policy": "oracle"}, "Use one of"),
    (["case", "x"], "not a JSON object"),
    ({"case": "", "output": "y"}, "is not a non-empty string"),
    ({"case": "x", "output": "x/plans"}, "inside it"),
])
def test_bad_requests_are_input_errors_naming_the_key(request_, where):
    response = run_request(request_)
    assert response["status"] == "error" and response["kind"] == "input"
    assert where in response["error"] and "\n" not in response["error"]


def test_a_bad_case_is_an_input_error(tmp_path):
    response = run_request({"case": str(tmp_path / "missing"), "output": str(tmp_path / "out")})
    assert response == {"status": "error", "kind": "input",
                        "error": f"{tmp_path / 'missing'}: is not a folder. Give the folder that holds the CT "
                                 "series and the RTSTRUCT"}


def test_serve_answers_each_line_and_skips_blank_ones():
    written = []
    assert serve(["{oops\n", "\n", '{"case": "x"}\n'], written.append) == 2
    first, second = (json.loads(line) for line in written)
    assert first["kind"] == "input" and "not JSON" in first["error"]
    assert "'output' is missing" in second["error"]
    assert answer("[]")["kind"] == "input"


def test_hook_process_speaks_json_lines(tmp_path):
    requests = [json.dumps({"case": str(SAMPLE), "output": str(tmp_path / "good"), "max_steps": 1}),
                '{"case": "unterminated',
                json.dumps({"case": str(tmp_path / "no-such-case"), "output": str(tmp_path / "bad")})]
    env = {**os.environ, "RTAUTOPLAN_CACHE": str(tmp_path / "dij")}
    script = Path(sys.executable).with_name("rtautoplan")  # the installed command, as a TPS script runs it
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "rtautoplan.cli"]
    hook = [*command, "hook", "--dose-grid-factor", "2", "4", "4"]
    done = subprocess.run(hook, input="\n".join(requests) + "\n", capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    responses = [json.loads(line) for line in done.stdout.splitlines()]  # stdout is JSON and nothing else
    assert [r["status"] for r in responses[1:]] == ["error", "error"], done.stderr
    assert responses[0]["status"] == ("ok" if responses[0]["acceptable"] else "unacceptable")
    assert responses[0]["steps"] == 1 and Path(responses[0]["files"]["plan"]).is_file()
    assert responses[1]["kind"] == "input" and "not JSON" in responses[1]["error"]
    assert responses[2]["kind"] == "input" and "no-such-case" in responses[2]["error"]
    assert "step 1" in done.stderr  # progress goes to stderr


def test_hook_process_answers_every_hostile_line(tmp_path):
    """Deep nesting (RecursionError), an over-long line, bytes that are not UTF-8, NUL in a path,
    an output that is a file, an output below a file: one input error each, in order."""
    (tmp_path / "afile").write_text("x")
    lines = [b"[" * 2000 + b"]" * 2000, b"{" * 100_000, b'{"case": "x", "output": "\xff\xfe"}',
             b"x" * (MAX_LINE_BYTES + 10),
             json.dumps({"case": "a\u0000b", "output": "y"}).encode(),
             json.dumps({"case": str(SAMPLE), "output": str(tmp_path / "afile")}).encode(),
             json.dumps({"case": str(SAMPLE), "output": str(tmp_path / "afile" / "plan")}).encode(),
             b'"just a string"']
    script = Path(sys.executable).with_name("rtautoplan")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "rtautoplan.cli"]
    done = subprocess.run([*command, "hook"], input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    responses = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(responses) == len(lines), done.stdout
    assert all(r["status"] == "error" and r["kind"] == "input" for r in responses), responses
    assert "nested too deeply" in responses[0]["error"] and "longer than" in responses[3]["error"]
    assert "cannot be written" in responses[6]["error"]
    assert "is a file" in responses[5]["error"]
