"""The TPS scripting examples (``examples/``) cannot run here (RayStation, Eclipse): their exact request
lines are replayed through the hook, checked against ``docs/hook.schema.json``, and every response key
the scripts read is checked to be there."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.folder import PlanOptions
from rtautoplan.hook import answer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "prostate01"
SCHEMA = json.loads((ROOT / "docs" / "hook.schema.json").read_text())
REQUEST = jsonschema.Draft202012Validator({"$ref": "#/$defs/request", "$defs": SCHEMA["$defs"]})
RESPONSE = jsonschema.Draft202012Validator({"$ref": "#/$defs/response", "$defs": SCHEMA["$defs"]})
CSHARP = (ROOT / "examples" / "eclipse" / "RtautoplanHook.cs").read_text()


def raystation():
    spec = importlib.util.spec_from_file_location("rs_hook", ROOT / "examples" / "raystation" / "rtautoplan_hook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no RayStation module until export/import are called
    return module


def csharp_templates() -> dict[str, str]:
    """The C# request templates (``const string XRequest = "…";``), unescaped; C# and Python share {0} / {{."""
    return {name: body.replace('\\"', '"') for name, body in
            re.findall(r'const string (\w+Request) = "((?:[^"\\]|\\.)*)";', CSHARP)}


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> PlanOptions:
    cache = tmp_path_factory.mktemp("dij")
    return PlanOptions(tps=lambda: InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                                                 cache_dir=cache), max_steps=1)


def send(line: str, options: PlanOptions) -> str:
    """One request line through the hook as the scripts send it; the response line they read."""
    REQUEST.validate(json.loads(line))
    response = answer(line, options)
    RESPONSE.validate(response)
    return json.dumps(response)


def test_every_request_the_scripts_can_send_matches_the_schema():
    rs = raystation()
    for request in (rs.autonomous_request("c", "o"), rs.autonomous_request("c", "o", "prostate", 5),
                    rs.suggest_request("c", "o", 2), rs.decision_request("s1", "accept", 1),
                    rs.decision_request("s1", "edit", 0, "t_rec-"), rs.decision_request("s1", "reject"),
                    rs.decision_request("s1", "finish")):
        REQUEST.validate(json.loads(rs.encode(request)))
    templates = csharp_templates()
    assert set(templates) == {"AutonomousRequest", "SuggestRequest", "AcceptRequest", "RejectRequest", "FinishRequest"}
    for name, template in templates.items():
        args = (json.dumps("s1"), 0) if name in ("AcceptRequest", "RejectRequest") else \
            (json.dumps("s1"),) if name == "FinishRequest" else (json.dumps(r"C:\export\p 1"), json.dumps("D:\\out"))
        REQUEST.validate(json.loads(template.format(*args)))
    with pytest.raises(RuntimeError, match="rtautoplan: request"):
        rs.parse_response(json.dumps(answer("{oops")))


@pytest.mark.slow
def test_raystation_script_replayed_through_the_hook(fast, tmp_path):
    rs = raystation()
    status, result = rs.parse_response(send(rs.encode(rs.autonomous_request(str(SAMPLE), str(tmp_path / "a"))), fast))
    assert status in ("ok", "unacceptable") and Path(result["files"]["plan"]).is_file()
    status, state = rs.parse_response(send(rs.encode(rs.suggest_request(str(SAMPLE), str(tmp_path / "s"), 2)), fast))
    assert status == "suggest" and len(state["suggestions"]) == 2 and state["suggestions"][0][0] == 1
    status, state = rs.parse_response(send(rs.encode(rs.decision_request(state["session"], "edit", 0, "t_rec-")), fast))
    assert status == "suggest" and state["done"]  # one step allowed
    status, result = rs.parse_response(send(rs.encode(rs.decision_request(state["session"], "finish")), fast))
    assert result["acceptable"] is (status == "ok") and Path(result["files"]["rtdose"]).is_file()


@pytest.mark.slow
def test_eclipse_script_replayed_through_the_hook_and_its_keys_exist(fast, tmp_path):
    t = csharp_templates()
    case, out = json.dumps(str(SAMPLE)), json.dumps(str(tmp_path / "e"))
    responses = [json.loads(send(t["SuggestRequest"].format(case, out), fast))]
    session = json.dumps(responses[0]["session"])
    responses.append(json.loads(send(t["AcceptRequest"].format(session, 0), fast)))
    responses.append(json.loads(send(t["FinishRequest"].format(session), fast)))
    responses.append(json.loads(send(t["AutonomousRequest"].format(case, json.dumps(str(tmp_path / "e2"))), fast)))
    responses.append(json.loads(send('{"session": "gone", "decision": "finish"}', fast)))
    seen: set[str] = set()

    def keys(value):
        if isinstance(value, dict):
            seen.update(value)
            for v in value.values():
                keys(v)
        elif isinstance(value, list):
            for v in value:
                keys(v)
    keys(responses)
    read = set(re.findall(r'\["(\w+)"\]', CSHARP)) | {"plan", "rtdose", "rtstruct"}
    assert read <= seen, read - seen
    assert responses[1]["last"]["override"] == "accepted" and responses[2]["overrides"][0]["decision"] == "accepted"
