"""The client side of the PHOENIX wire API (``http_api``, ``docs/phoenix_api.md``).

``RemoteServer(url).connect(user)`` gives a ``RemoteSession`` with the calls and return types of
the in-process ``Session``, so ``PhoenixAdapter`` works over either. Errors in the server's JSON
error body come back as the same ``PhoenixError`` (code and message); a server that cannot be
reached is PHX-4001. ``LocalServerProcess`` starts ``rtautoplan phoenix-server`` on a free
loopback port as a child process (what the adapter does when no server is given).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Sequence
from urllib.parse import quote, urlencode, urlsplit

import numpy as np

from rtautoplan.adapters.phoenix_api import codec
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.http_api import PREFIX, SESSION_HEADER
from rtautoplan.adapters.phoenix_api.records import FieldSpec, JobStatus, ObjectiveInfo, PlanInfo, RoiInfo
from rtautoplan.case import Case

POLL_S = 10.0  # one long-poll of a job's status


class RemoteServer:
    """A PHOENIX server at ``url`` (``http://host:port``). timeout_s: per HTTP request (a job wait
    long-polls in pieces of ``POLL_S``)."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"PHOENIX server URL must look like http://host:port, not {url!r}")
        self.url, self.host, self.port, self.timeout_s = url.rstrip("/"), parts.hostname, parts.port or 80, timeout_s
        self._patients: dict[int, tuple[Case, str]] = {}  # id(case) → (case, patient UID): import once
        self._lock = threading.Lock()

    def connect(self, user: str) -> "RemoteSession":
        return RemoteSession(self, user)

    def request(self, method: str, path: str, body=None, session: str | None = None, query: dict | None = None,
                connection: list | None = None):
        """One call: the decoded JSON answer, or the server's PhoenixError. ``connection``: a
        one-element list holding a kept-alive ``HTTPConnection`` (reused, replaced when broken)."""
        target = PREFIX + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data or b""))}
        if session:
            headers[SESSION_HEADER] = session
        holder = connection if connection is not None else [None]
        for attempt in (0, 1):
            if holder[0] is None:
                holder[0] = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                holder[0].request(method, target, data, headers)
                response = holder[0].getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                holder[0].close()
                holder[0] = None
                if attempt or isinstance(error, TimeoutError):
                    raise PhoenixError(E.SERVER_DOWN, f"PHOENIX server {self.url} not reachable: "
                                                      f"{type(error).__name__}: {error}") from None
        if connection is None:
            holder[0].close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            raise PhoenixError(E.INTERNAL_ERROR, f"{method} {target}: HTTP {response.status}, not JSON: {raw[:200]!r}") \
                from None
        if response.status >= 400:
            err = answer.get("error", {}) if isinstance(answer, dict) else {}
            code = err.get("code") if err.get("code") in E.CODES else E.INTERNAL_ERROR
            raise PhoenixError(code, err.get("message", f"HTTP {response.status}: {raw[:200]!r}"))
        return answer

    def status(self) -> dict:
        return self.request("GET", "/status")

    def shutdown(self) -> None:
        """Nothing to stop: the server process belongs to whoever started it."""

    def patient_uid(self, case: Case) -> str | None:
        with self._lock:
            hit = self._patients.get(id(case))
        return hit[1] if hit is not None and hit[0] is case else None

    def remember_patient(self, case: Case, uid: str) -> None:
        with self._lock:
            self._patients[id(case)] = (case, uid)


def _status(body: dict) -> JobStatus:
    return JobStatus(**{k: body.get(k) for k in JobStatus.__dataclass_fields__})


def _fields(items) -> tuple[FieldSpec, ...]:
    return tuple(FieldSpec(f["gantry_deg"], f["couch_deg"], f["name"]) for f in items)


class RemoteSession:
    """A user's session on a ``RemoteServer``: the calls of ``session.Session``."""

    def __init__(self, server: RemoteServer, user: str):
        self._server, self.user = server, user
        self._connection: list = [None]
        self._id = self._call("POST", "/sessions", {"user": user}, session=False)["session_id"]

    def _call(self, method: str, path: str, body=None, query=None, session: bool = True):
        if session and self._id is None:
            raise PhoenixError(E.SESSION_CLOSED, f"session of {self.user!r} is closed; connect() again")
        return self._server.request(method, path, body, self._id if session else None, query, self._connection)

    def close(self) -> None:
        if self._id is not None:
            try:
                self._call("DELETE", f"/sessions/{self._id}", session=False)
            except PhoenixError:
                pass  # the server is gone or already forgot it: the session is closed either way
            self._id = None
        if self._connection[0] is not None:
            self._connection[0].close()
            self._connection[0] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # patients
    def import_patient(self, source: str | Path | Case) -> str:
        """A Case is sent once per server (the same object again gets the same UID); a folder path
        is read by the server (it must see that path)."""
        if not isinstance(source, Case):
            return self._call("POST", "/patients", {"dicom_folder": str(source)})["patient_uid"]
        uid = self._server.patient_uid(source)
        if uid is None:
            uid = self._call("POST", "/patients", {"patient": codec.encode_case(source)})["patient_uid"]
            self._server.remember_patient(source, uid)
        return uid

    def list_rois(self, patient_uid: str) -> list[RoiInfo]:
        return [RoiInfo(**r) for r in self._call("GET", f"/patients/{quote(patient_uid)}/rois")["rois"]]

    # plans
    def create_plan(self, patient_uid: str, label: str, fields=None, rbe_model: str = "LQ", technique: str = "PBS",
                    prescription_gy: float | None = None, fractions: int | None = None,
                    target_roi: str | Sequence[str] | None = None) -> str:
        body = {"patient_uid": patient_uid, "label": label, "rbe_model": rbe_model, "technique": technique,
                "prescription_gy": prescription_gy, "fractions": fractions,
                "target_roi": target_roi if target_roi is None or isinstance(target_roi, str) else list(target_roi)}
        if fields is not None:
            body["fields"] = [codec.encode_field(f if isinstance(f, FieldSpec) else FieldSpec(float(f))) for f in fields]
        return self._call("POST", "/plans", body)["plan_id"]

    def plan_info(self, plan_id: str) -> PlanInfo:
        b = self._call("GET", f"/plans/{quote(plan_id)}")
        b.update(fields=_fields(b["fields"]), n_spots=tuple(b["n_spots"]), isocenter_mm=tuple(b["isocenter_mm"]),
                 target_rois=tuple(b["target_rois"]))
        return PlanInfo(**b)

    def delete_plan(self, plan_id: str) -> None:
        self._call("DELETE", f"/plans/{quote(plan_id)}")

    # objectives
    def add_objective(self, plan_id: str, roi: str, type: str, **parameters: float) -> str:
        return self._call("POST", f"/plans/{quote(plan_id)}/objectives",
                          {"roi": roi, "type": type, "parameters": parameters})["obj_id"]

    def set_objective_parameter(self, obj_id: str, name: str, value: float) -> None:
        self._call("PATCH", f"/objectives/{quote(obj_id)}", {"name": name, "value": value})

    def remove_objective(self, obj_id: str) -> None:
        self._call("DELETE", f"/objectives/{quote(obj_id)}")

    def list_objectives(self, plan_id: str) -> list[ObjectiveInfo]:
        return [ObjectiveInfo(**o) for o in self._call("GET", f"/plans/{quote(plan_id)}/objectives")["objectives"]]

    # jobs
    def submit_optimization(self, plan_id: str, max_iterations: int = 200, tolerance: float | None = 1e-9) -> str:
        return self._call("POST", f"/plans/{quote(plan_id)}/optimizations",
                          {"max_iterations": max_iterations, "tolerance": tolerance})["job_id"]

    def job_status(self, job_id: str) -> JobStatus:
        return _status(self._call("GET", f"/jobs/{quote(job_id)}"))

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        """Long-polls the job until it ends; PHX-3003 after ``timeout_s`` (the job keeps running),
        the job's error code (PHX-3002 / 3004 / 3005) if it did not finish."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            status = _status(self._call("GET", f"/jobs/{quote(job_id)}", query={"wait_s": f"{max(left, 0.0):.3f}"}))
            if status.state == "DONE":
                return status
            if status.state in ("FAILED", "CANCELLED"):
                raise PhoenixError(status.error_code, f"job {job_id} (plan {status.plan_id}): {status.error}")
            if deadline is not None and time.monotonic() >= deadline:
                raise PhoenixError(E.TIMEOUT, f"job {job_id} not finished after {timeout_s:g} s (state "
                                              f"{status.state}); it keeps running")

    def cancel(self, job_id: str) -> JobStatus:
        return _status(self._call("POST", f"/jobs/{quote(job_id)}/cancel"))

    # results
    def get_dose(self, plan_id: str, kind: str = "RBE") -> np.ndarray:
        b = self._call("GET", f"/plans/{quote(plan_id)}/dose", query={"kind": kind})
        return codec.decode_array(b["dose"], "dose")

    def get_spots(self, plan_id: str) -> list[np.ndarray]:
        b = self._call("GET", f"/plans/{quote(plan_id)}/spots")
        return [codec.decode_array(f, f"fields[{i}]") for i, f in enumerate(b["fields"])]

    def export_dvh(self, plan_id: str, roi: str, kind: str = "RBE", bin_gy: float = 0.1) -> list[tuple[float, float]]:
        b = self._call("GET", f"/plans/{quote(plan_id)}/dvh", query={"roi": roi, "kind": kind, "bin_gy": bin_gy})
        return [tuple(p) for p in b["dvh"]]


class LocalServerProcess:
    """``rtautoplan phoenix-server`` on a free loopback port as a child process (niced like its
    parent); ``url`` once started, ``close()`` (or the context, or garbage collection) stops it.
    The child also stops when this process ends, however it ends: it watches its standard input,
    a pipe from here that the kernel closes."""

    def __init__(self, workers: int = 2, start_timeout_s: float = 120.0, **server_options):
        """server_options: the ``PhoenixServer`` options (dose_grid_mm, store_dir, spot_spacing_mm,
        layer_spacing_mm, margin_mm), passed as ``phoenix-server`` flags."""
        flags = {"store_dir": "--store", "dose_grid_mm": "--dose-grid-mm", "spot_spacing_mm": "--spot-spacing-mm",
                 "layer_spacing_mm": "--layer-spacing-mm", "margin_mm": "--margin-mm"}
        unknown = sorted(set(server_options) - set(flags))
        if unknown:
            raise TypeError(f"phoenix-server takes no option {', '.join(unknown)}")
        cmd = [sys.executable, "-m", "rtautoplan.cli", "phoenix-server", "--port", "0",
               "--workers", str(int(workers)), "--exit-on-stdin-eof"]
        for name, value in server_options.items():
            if value is not None:
                cmd += [flags[name], str(value)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._finalizer = weakref.finalize(self, _stop, self.process)
        line = _read_line(self.process, start_timeout_s)
        if "listening on " not in line:
            self.close()
            raise RuntimeError(f"PHOENIX server process did not start (exit {self.process.poll()}): {line!r}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.server = RemoteServer(self.url)

    def connect(self, user: str) -> RemoteSession:
        return self.server.connect(user)

    def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream:
            stream.close()


def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0].strip() if out else ""
