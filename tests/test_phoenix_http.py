"""The PHOENIX-like TPS as a server process: the HTTP/JSON wire API (adapters/phoenix_api/http_api.py),
its client (client.py) and the adapter over it, on the loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from rtautoplan.adapters import check_tps
from rtautoplan.adapters.phoenix import PhoenixAdapter
from rtautoplan.adapters.phoenix_api import PhoenixError, PhoenixServer, codec
from rtautoplan.adapters.phoenix_api.client import LocalServerProcess, RemoteServer
from rtautoplan.adapters.phoenix_api.http_api import SESSION_HEADER, make_http_server
from test_phoenix import add_box_objectives, box_case, seed003_objectives


@pytest.fixture(scope="module")
def tps():
    """A PhoenixServer (2 workers) behind an HTTP server on a free loopback port, in this process."""
    with PhoenixServer(workers=2) as server:
        httpd = make_http_server(server, port=0)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        host, port = httpd.server_address[:2]
        yield server, RemoteServer(f"http://{host}:{port}")
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def small_box():
    return box_case(shape=(20, 40, 40), radius=12.0)


def raw_request(remote: RemoteServer, method: str, path: str, body: bytes | None = None, headers=None):
    """(HTTP status, decoded JSON) of one hand-made request."""
    conn = http.client.HTTPConnection(remote.host, remote.port, timeout=30)
    try:
        conn.putrequest(method, path)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_adapter_over_http_gives_the_in_process_dose(make_small_case, tps):
    server, remote = tps
    case = make_small_case()
    objectives = seed003_objectives("CTV_6000", 60.0)
    local = PhoenixAdapter(server=server, max_iterations=40)
    local.prepare(case)
    expected = local.optimize(objectives).gy
    over_http = PhoenixAdapter(server=remote, max_iterations=40)
    over_http.prepare(case)
    np.testing.assert_allclose(over_http.optimize(objectives).gy, expected, rtol=1e-5, atol=1e-4)
    check_tps(PhoenixAdapter(server=remote, max_iterations=40), case, objectives)
    # the objective catalogue was synced by parameter edits, not rebuilt, and the patient sent once
    before = [o.obj_id for o in over_http.session.list_objectives(over_http.plan_id)]
    over_http.optimize(objectives[:-1] + [objectives[-1].__class__(**{**objectives[-1].__dict__, "dose_gy": 25.0})])
    assert [o.obj_id for o in over_http.session.list_objectives(over_http.plan_id)] == before
    assert over_http.session.import_patient(case) == over_http.session.import_patient(case)
    dvh = over_http.session.export_dvh(over_http.plan_id, "CTV_6000")
    assert dvh[0] == (0.0, 100.0)


def test_jobs_over_http_timeout_lock_cancel(tps, small_box):
    _, remote = tps
    s = remote.connect("jobs")
    plan = s.create_plan(s.import_patient(small_box), "long")
    obj = add_box_objectives(s, plan)
    job = s.submit_optimization(plan, max_iterations=50_000, tolerance=0)
    with pytest.raises(PhoenixError) as err:
        s.wait(job, timeout_s=0.3)
    assert err.value.code == "PHX-3003"
    with pytest.raises(PhoenixError) as err:
        s.set_objective_parameter(obj, "weight", 2.0)
    assert err.value.code == "PHX-2201"
    deadline = time.monotonic() + 30
    while s.job_status(job).state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0.0 <= s.job_status(job).progress < 1.0
    s.cancel(job)
    with pytest.raises(PhoenixError) as err:
        s.wait(job, timeout_s=30)
    assert err.value.code == "PHX-3004"
    s.set_objective_parameter(obj, "weight", 2.0)  # unlocked again
    s.close()
    with pytest.raises(PhoenixError) as err:
        s.plan_info(plan)
    assert err.value.code == "PHX-1001"


def test_plans_are_deleted_and_the_adapter_keeps_the_server_bounded(make_small_case, tps, small_box):
    server, remote = tps
    s = remote.connect("cleanup")
    plan = s.create_plan(s.import_patient(small_box), "to delete")
    add_box_objectives(s, plan)
    job = s.submit_optimization(plan, max_iterations=50_000, tolerance=0)
    with pytest.raises(PhoenixError) as err:  # a plan being optimised is not deleted under its job
        s.delete_plan(plan)
    assert err.value.code == "PHX-2201"
    s.cancel(job)
    with pytest.raises(PhoenixError):
        s.wait(job, timeout_s=30)
    s.delete_plan(plan)
    for call in (lambda: s.plan_info(plan), lambda: s.list_objectives(plan), lambda: s.delete_plan(plan)):
        with pytest.raises(PhoenixError) as err:
            call()
        assert err.value.code == "PHX-2001"
    s.close()
    # an adapter that prepares case after case (a trainer's episodes) holds one plan on the server, not one per case
    adapter = PhoenixAdapter(server=remote, max_iterations=5)
    case = make_small_case()
    before = len(server._plans.plans)
    for _ in range(3):
        adapter.prepare(case)
        adapter.optimize(seed003_objectives("CTV_6000", 60.0))
    assert len(server._plans.plans) == before + 1
    assert adapter.session.plan_info(adapter.plan_id).optimised
    adapter.close()


def _malformed_requests(sid: str, plan: str, obj: str) -> list[tuple[str, str, bytes | None, dict]]:
    """100 bad requests: broken JSON, wrong types, missing fields, bad arrays, unknown IDs and paths."""
    good_patient = codec.encode_case(box_case(shape=(4, 6, 6), radius=3.0))
    session = {SESSION_HEADER: sid}
    out = []

    def post(path, body, headers=session, method="POST"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        out.append((method, path, data, dict(headers)))

    for junk in (b"{", b"not json", b"\xff\xfe", b"[1, 2", b'{"user": }', b"nan", b'{"a": NaN}'[:5], b"\x00" * 10):
        post("/v1/sessions", junk, {})
        post("/v1/patients", junk)
        post(f"/v1/plans/{plan}/objectives", junk)
    for user in (None, 5, [], {}, True, 1.5):
        post("/v1/sessions", {"user": user}, {})
    post("/v1/sessions", [], {})
    post("/v1/sessions", "text", {})
    for field, value in (("grid", None), ("grid", "x"), ("hu", {"dtype": "int16"}), ("rois", {}),
                         ("prescription", {"levels": []}), ("prescription", {"levels": [{"target": 1}]}),
                         ("rois", [{"name": "A"}]), ("hu", {"dtype": "complex", "shape": [1], "zlib_b64": ""}),
                         ("hu", {"dtype": "int16", "shape": [4, 6, 6], "zlib_b64": "@@@"}),
                         ("hu", {"dtype": "int16", "shape": [4, 6, 7], "zlib_b64": good_patient["hu"]["zlib_b64"]}),
                         ("hu", {"dtype": "int16", "shape": [10 ** 6, 10 ** 6, 10], "zlib_b64": ""}),
                         ("hu", {"dtype": "int16", "shape": [-1, 6, 6], "zlib_b64": ""}),
                         ("grid", {"origin": [0, 0], "spacing": [1, 1, 1], "shape": [4, 6, 6]}),
                         ("grid", {"origin": [0, 0, 0], "spacing": [0, 1, 1], "shape": [4, 6, 6]}),
                         ("case_id", 7)):
        post("/v1/patients", {"patient": {**good_patient, field: value}})
    post("/v1/patients", {"patient": "box"})
    post("/v1/patients", {"dicom_folder": 3})
    post("/v1/patients", {})
    for body in ({"patient_uid": 1, "label": "x"}, {"patient_uid": "PAT-no", "label": "x"}, {"label": "x"},
                 {"patient_uid": "PAT-no", "label": "x", "fields": "45"},
                 {"patient_uid": "PAT-no", "label": "x", "fields": [{"gantry_deg": "45"}]},
                 {"patient_uid": "PAT-no", "label": "x", "target_roi": [1, 2]},
                 {"patient_uid": "PAT-no", "label": "x", "fractions": 3.5}):
        post("/v1/plans", body)
    for body in ({"roi": "CTV", "type": "Max"}, {"roi": "CTV", "type": "Max", "parameters": []},
                 {"roi": "CTV", "type": "Max", "parameters": {"obj_value": "high", "weight": 1}},
                 {"roi": "CTV", "type": "Max", "parameters": {"obj_value": 1e9, "weight": 1}},
                 {"roi": "CTV", "type": "Maxi", "parameters": {"obj_value": 60, "weight": 1}},
                 {"roi": "Nope", "type": "Max", "parameters": {"obj_value": 60, "weight": 1}},
                 {"roi": "CTV", "type": "Max", "parameters": {"obj_value": 60, "weight": 1, "x": 2}},
                 {"roi": 3, "type": "Max", "parameters": {}}):
        post(f"/v1/plans/{plan}/objectives", body)
    for body in ({"name": "weight"}, {"name": "weight", "value": "2"}, {"name": "weight", "value": True},
                 {"name": "weight", "value": -1}, {"name": "colour", "value": 1}, {"value": 1}):
        post(f"/v1/objectives/{obj}", body, method="PATCH")
    post("/v1/objectives/OBJ-none", {"name": "weight", "value": 1}, method="PATCH")
    for body in ({"max_iterations": "many"}, {"max_iterations": 0}, {"max_iterations": 10 ** 9},
                 {"tolerance": "tight"}, {"max_iterations": 2.5}):
        post(f"/v1/plans/{plan}/optimizations", body)
    post("/v1/plans/PLN-none/optimizations", {})
    for method, path in (("GET", "/v1/jobs/JOB-none"), ("GET", f"/v1/plans/{plan}/dose?kind=ALPHA"),
                         ("GET", f"/v1/plans/{plan}/dose"), ("GET", f"/v1/plans/{plan}/dvh"),
                         ("GET", f"/v1/plans/{plan}/dvh?roi=Nope"), ("GET", "/v1/jobs/JOB-none?wait_s=abc"),
                         ("GET", "/v1/jobs/JOB-none?wait_s=-1"), ("GET", "/v1/nowhere"), ("GET", "/v2/status"),
                         ("GET", "/"), ("DELETE", "/v1/plans"), ("PUT", "/v1/sessions"),
                         ("GET", "/v1/patients/PAT-none/rois"), ("DELETE", "/v1/objectives/OBJ-none"),
                         ("POST", "/v1/jobs/JOB-none/cancel"), ("DELETE", "/v1/sessions/nope"),
                         ("GET", f"/v1/plans/{plan}?a=1&&&b"), ("GET", "/v1/plans/PLN-none")):
        out.append((method, path, None, dict(session)))
    for headers in ({}, {SESSION_HEADER: "forged"}, {SESSION_HEADER: ""}):  # no / unknown session
        out.append(("GET", f"/v1/plans/{plan}", None, headers))
    out.append(("POST", "/v1/sessions", b"{}", {"Content-Length": "-5"}))
    out.append(("POST", "/v1/sessions", b"{}", {"Content-Length": "ten"}))
    out.append(("POST", "/v1/sessions", b'{"user"', {"Content-Length": "400"}))
    return out[:100]


def test_malformed_requests_get_phx_errors_and_the_server_keeps_serving(tps, small_box):
    _, remote = tps
    s = remote.connect("robust")
    plan = s.create_plan(s.import_patient(small_box), "robust")
    obj = add_box_objectives(s, plan)
    requests = _malformed_requests(s._id, plan, obj)
    assert len(requests) == 100
    codes = []
    for method, path, body, headers in requests:
        status, answer = raw_request(remote, method, path, body, headers)
        assert 400 <= status < 500, (method, path, body, status, answer)
        code = answer["error"]["code"]
        assert code.startswith("PHX-") and answer["error"]["message"], (method, path, answer)
        codes.append(code)
    assert "PHX-4004" not in codes  # none of them reached the simulator unchecked
    assert {"PHX-4002", "PHX-4003", "PHX-1002", "PHX-2103", "PHX-2001"} <= set(codes)
    # still serving: a good job runs to the end
    assert s.wait(s.submit_optimization(plan, max_iterations=10), timeout_s=60).state == "DONE"
    assert s.get_dose(plan).max() > 0


def test_a_killed_worker_fails_its_job_not_hangs(tps, small_box):
    server, remote = tps
    s = remote.connect("killer")
    plan = s.create_plan(s.import_patient(small_box), "victim")
    add_box_objectives(s, plan)
    job = s.submit_optimization(plan, max_iterations=50_000, tolerance=0)
    deadline = time.monotonic() + 30
    while (status := s.job_status(job)).worker_pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status.state == "RUNNING" and status.worker_pid not in (None, os.getpid())
    os.kill(status.worker_pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(PhoenixError) as err:
        s.wait(job, timeout_s=60)
    assert time.monotonic() - t0 < 30
    assert err.value.code == "PHX-3005" and f"worker process {status.worker_pid}" in err.value.message
    assert "submit the job again" in err.value.message
    assert s.job_status(job).state == "FAILED"
    # the plan is unlocked, the pool restarted: the same plan optimises again
    again = s.wait(s.submit_optimization(plan, max_iterations=10), timeout_s=60)
    assert again.state == "DONE" and again.worker_pid != status.worker_pid
    assert remote.status()["pool_restarts"] >= 1


def test_phoenix_server_command_and_adapter_default(make_small_case, tmp_path):
    """``rtautoplan phoenix-server --port 0`` in a child process; the adapter without a server
    starts one itself and stops it at close()."""
    with LocalServerProcess(workers=1) as child:
        assert child.server.status()["workers"] == 1
        s = child.connect("cli")
        with pytest.raises(PhoenixError) as err:
            s.import_patient(tmp_path / "missing")
        assert err.value.code == "PHX-1101"
    assert child.process.poll() is not None
    tps = PhoenixAdapter(max_iterations=20)
    try:
        tps.prepare(make_small_case())
        dose = tps.optimize(seed003_objectives("CTV_6000", 60.0))
        assert dose.gy.max() > 0
        process = tps._server.process
    finally:
        tps.close()
    assert process.poll() is not None
    with pytest.raises(ValueError, match="http://host:port"):
        PhoenixAdapter(url="ftp://nowhere")
