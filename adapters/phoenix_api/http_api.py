"""The PHOENIX-like TPS as a server process: the wire API (HTTP/1.1 + JSON) over ``PhoenixServer``.

``rtautoplan phoenix-server --port P`` (or ``serve``) runs one ``PhoenixServer`` (its plan store
and its pool of optimisation worker processes) behind a ``ThreadingHTTPServer``: one thread per
connection, so a client waiting on its job never blocks another. The endpoints, payloads and error
codes are in ``docs/phoenix_api.md``; ``client.py`` is the client side.

Every failure is a JSON body ``{"error": {"code": "PHX-xxyy", "title": …, "message": …}}`` with an
HTTP status of its class (400 request, 404 unknown ID, 409 state, 503 down, 500 internal). Bodies
that are not JSON, fields of the wrong type, unknown endpoints and even bugs of the simulator get
such a response (PHX-4002 / 4003 / 4004); the server keeps serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from rtautoplan.adapters.phoenix_api import codec, engine
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.server import PhoenixServer

log = logging.getLogger(__name__)

API_VERSION = 1
PREFIX = f"/v{API_VERSION}"
SESSION_HEADER = "X-Phoenix-Session"
MAX_BODY_BYTES = 1 << 30  # 1 GiB: a clinical CT and its ROIs, compressed
MAX_WAIT_S = 30.0  # longest long-poll of GET /jobs/{id}?wait_s=
FINAL = ("DONE", "FAILED", "CANCELLED")

STATUS = {E.UNKNOWN_SESSION: 404, E.UNKNOWN_PATIENT: 404, E.UNKNOWN_PLAN: 404, E.UNKNOWN_JOB: 404,
          E.UNKNOWN_ENDPOINT: 404, E.SESSION_CLOSED: 409, E.PLAN_LOCKED: 409, E.NO_DOSE: 409,
          E.JOB_FAILED: 409, E.CANCELLED: 409, E.WORKER_LOST: 409, E.TIMEOUT: 408, E.SERVER_DOWN: 503,
          E.INTERNAL_ERROR: 500}


class Api:
    """The routes: each handler takes (session, path parameters, query, body) and returns
    (HTTP status, JSON-able body). Sessions are server-side ``Session`` objects keyed by a random ID."""

    def __init__(self, server: PhoenixServer):
        self.server = server
        self._sessions: dict = {}
        self._lock = threading.Lock()
        # (method, path pattern split on "/", handler, needs a session)
        self.routes = [
            ("GET", "status", self.status, False),
            ("GET", "catalogue", self.catalogue, False),
            ("POST", "sessions", self.open_session, False),
            ("DELETE", "sessions/{id}", self.close_session, False),
            ("POST", "patients", self.import_patient, True),
            ("GET", "patients/{id}/rois", self.list_rois, True),
            ("POST", "plans", self.create_plan, True),
            ("GET", "plans/{id}", self.plan_info, True),
            ("DELETE", "plans/{id}", self.delete_plan, True),
            ("GET", "plans/{id}/objectives", self.list_objectives, True),
            ("POST", "plans/{id}/objectives", self.add_objective, True),
            ("PATCH", "objectives/{id}", self.set_objective_parameter, True),
            ("DELETE", "objectives/{id}", self.remove_objective, True),
            ("POST", "plans/{id}/optimizations", self.submit_optimization, True),
            ("GET", "jobs/{id}", self.job_status, True),
            ("POST", "jobs/{id}/cancel", self.cancel, True),
            ("GET", "plans/{id}/dose", self.get_dose, True),
            ("GET", "plans/{id}/spots", self.get_spots, True),
            ("GET", "plans/{id}/dvh", self.export_dvh, True),
        ]

    # -- dispatch
    def route(self, method: str, path: str):
        """(handler, path ID, needs session) for a request, or PHX-4003."""
        parts = path.strip("/").split("/")
        if parts[:1] != [PREFIX.strip("/")]:
            raise PhoenixError(E.UNKNOWN_ENDPOINT, f"{method} {path}: the API lives under {PREFIX}/")
        parts = parts[1:]
        allowed = []
        for m, pattern, handler, needs_session in self.routes:
            p = pattern.split("/")
            if len(p) == len(parts) and all(a == b or a == "{id}" for a, b in zip(p, parts)):
                if m == method:
                    ident = next((b for a, b in zip(p, parts) if a == "{id}"), None)
                    return handler, ident, needs_session
                allowed.append(m)
        if allowed:
            raise PhoenixError(E.UNKNOWN_ENDPOINT, f"{method} {path}: method not allowed; use {' or '.join(allowed)}")
        raise PhoenixError(E.UNKNOWN_ENDPOINT, f"{method} {path}: no such endpoint (docs/phoenix_api.md)")

    def session(self, sid: str | None):
        with self._lock:
            s = self._sessions.get(sid or "")
        if s is None:
            raise PhoenixError(E.UNKNOWN_SESSION, f"no open session {sid!r}: send the {SESSION_HEADER} header that "
                                                  f"POST {PREFIX}/sessions returned")
        return s

    # -- server and sessions
    def status(self, _s, _id, _q, _b):
        return 200, {"api_version": API_VERSION, "server": "PHOENIX-like carbon-ion TPS (rtautoplan simulator)",
                     "workers": self.server.workers, "pool_restarts": self.server._jobs.restarts,
                     "sessions": len(self._sessions)}

    def catalogue(self, _s, _id, _q, _b):
        return 200, {"types": {k: list(v) for k, v in engine.CATALOGUE.items()},
                     "bounds": {k: list(v) for k, v in engine.BOUNDS.items()}, "rbe_models": ["LQ"],
                     "techniques": ["PBS"]}

    def open_session(self, _s, _id, _q, body):
        user = codec.take(body, "user", str)
        s = self.server.connect(user)
        sid = secrets.token_hex(16)
        with self._lock:
            self._sessions[sid] = s
        return 201, {"session_id": sid, "user": user}

    def close_session(self, _s, sid, _q, _b):
        with self._lock:
            s = self._sessions.pop(sid, None)
        if s is None:
            raise PhoenixError(E.UNKNOWN_SESSION, f"no open session {sid!r}")
        s.close()
        return 200, {}

    # -- patients and plans
    def import_patient(self, s, _id, _q, body):
        if isinstance(body, dict) and "dicom_folder" in body:
            return 201, {"patient_uid": s.import_patient(codec.take(body, "dicom_folder", str))}
        return 201, {"patient_uid": s.import_patient(codec.decode_case(codec.take(body, "patient", dict)))}

    def list_rois(self, s, uid, _q, _b):
        return 200, {"rois": [codec.record(r) for r in s.list_rois(uid)]}

    def create_plan(self, s, _id, _q, body):
        target = codec.take(body, "target_roi", (str, list), default=None)
        if isinstance(target, list) and not all(isinstance(t, str) for t in target):
            raise codec.bad("body.target_roi", "must be a ROI name or a list of ROI names")
        plan_id = s.create_plan(codec.take(body, "patient_uid", str), codec.take(body, "label", str),
                                codec.decode_fields(body.get("fields")), codec.take(body, "rbe_model", str, default="LQ"),
                                codec.take(body, "technique", str, default="PBS"),
                                codec.take(body, "prescription_gy", (int, float), default=None),
                                codec.take(body, "fractions", int, default=None), target)
        return 201, {"plan_id": plan_id}

    def plan_info(self, s, plan_id, _q, _b):
        return 200, codec.record(s.plan_info(plan_id))

    def delete_plan(self, s, plan_id, _q, _b):
        s.delete_plan(plan_id)
        return 200, {}

    # -- objectives
    def list_objectives(self, s, plan_id, _q, _b):
        return 200, {"objectives": [codec.record(o) for o in s.list_objectives(plan_id)]}

    def add_objective(self, s, plan_id, _q, body):
        params = codec.take(body, "parameters", dict)
        obj_id = s.add_objective(plan_id, codec.take(body, "roi", str), codec.take(body, "type", str), **params)
        return 201, {"obj_id": obj_id}

    def set_objective_parameter(self, s, obj_id, _q, body):
        s.set_objective_parameter(obj_id, codec.take(body, "name", str), codec.take(body, "value", (int, float)))
        return 200, {}

    def remove_objective(self, s, obj_id, _q, _b):
        s.remove_objective(obj_id)
        return 200, {}

    # -- jobs
    def submit_optimization(self, s, plan_id, _q, body):
        body = {} if body is None else body
        tolerance = codec.take(body, "tolerance", (int, float), default=1e-9)
        job_id = s.submit_optimization(plan_id, codec.take(body, "max_iterations", int, default=200), tolerance)
        return 202, {"job_id": job_id}

    def job_status(self, s, job_id, query, _b):
        wait_s = _query_float(query, "wait_s", 0.0)
        if wait_s > 0:
            try:
                s.wait(job_id, timeout_s=min(wait_s, MAX_WAIT_S))
            except PhoenixError as error:
                if error.code not in (E.TIMEOUT, E.JOB_FAILED, E.CANCELLED, E.WORKER_LOST):
                    raise
        return 200, codec.record(s.job_status(job_id))

    def cancel(self, s, job_id, _q, _b):
        return 200, codec.record(s.cancel(job_id))

    # -- results
    def get_dose(self, s, plan_id, query, _b):
        return 200, {"kind": _query(query, "kind", "RBE"), "unit": "Gy(RBE)" if _query(query, "kind", "RBE") == "RBE"
                     else "Gy", "dose": codec.encode_array(s.get_dose(plan_id, _query(query, "kind", "RBE")))}

    def get_spots(self, s, plan_id, _q, _b):
        return 200, {"columns": ["x_mm", "y_mm", "energy_mev_u", "weight_1e6_ions"],
                     "fields": [codec.encode_array(f.astype("float64")) for f in s.get_spots(plan_id)]}

    def export_dvh(self, s, plan_id, query, _b):
        roi = _query(query, "roi", None)
        if roi is None:
            raise codec.bad("query.roi", "required")
        dvh = s.export_dvh(plan_id, roi, _query(query, "kind", "RBE"), _query_float(query, "bin_gy", 0.1))
        return 200, {"dvh": [list(p) for p in dvh]}

    def close(self):
        with self._lock:
            self._sessions.clear()


def _query(query: dict, name: str, default):
    values = query.get(name)
    return values[-1] if values else default


def _query_float(query: dict, name: str, default: float) -> float:
    text = _query(query, name, None)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise codec.bad(f"query.{name}", f"must be a number, got {text!r:.40}") from None
    if not value == value or value < 0 or value == float("inf"):
        raise codec.bad(f"query.{name}", f"must be a finite number ≥ 0, got {text!r:.40}")
    return value


def error_body(error: PhoenixError) -> dict:
    return {"error": {"code": error.code, "title": E.CODES[error.code], "message": error.message}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PhoenixSim/1"
    api: Api  # set on the subclass ``make_http_server`` builds

    def _dispatch(self, method: str):
        try:
            status, body = self._handle(method)
        except PhoenixError as error:
            status, body = STATUS.get(error.code, 400), error_body(error)
        except Exception as error:  # noqa: BLE001 - a bug must not take the server down: report it, keep serving
            log.error("PHOENIX server: %s %s failed:\n%s", method, self.path, traceback.format_exc())
            status = 500
            body = error_body(PhoenixError(E.INTERNAL_ERROR, f"{method} {urlsplit(self.path).path}: "
                                                             f"{type(error).__name__}: {error}"))
        data = json.dumps(body, allow_nan=False, default=_json_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str):
        url = urlsplit(self.path)
        body = self._body()
        handler, ident, needs_session = self.api.route(method, url.path)
        try:
            query = parse_qs(url.query, strict_parsing=bool(url.query), max_num_fields=20)
        except ValueError as error:
            raise codec.bad("query", str(error)) from None
        session = self.api.session(self.headers.get(SESSION_HEADER)) if needs_session else None
        return handler(session, ident, query, body)

    def _body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise codec.bad("request", "chunked bodies are not accepted; send Content-Length")
            return None
        try:
            n = int(length)
            if not 0 <= n <= MAX_BODY_BYTES:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise codec.bad("Content-Length", f"must be an integer in [0, {MAX_BODY_BYTES}], got {length!r:.40}") from None
        raw = self.rfile.read(n)
        if len(raw) != n:
            self.close_connection = True
            raise codec.bad("request", f"body ended after {len(raw)} of {n} bytes")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise codec.bad("body", f"not JSON ({error})") from None
        except RecursionError:
            raise codec.bad("body", "JSON nested too deeply") from None

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("PHOENIX server: " + format, *args)


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def make_http_server(server: PhoenixServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """The HTTP server of ``server``'s API on ``host:port`` (port 0: a free port; ``.server_address``)."""
    api = Api(server)
    handler = type("PhoenixHandler", (Handler,), {"api": api})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    httpd.api = api
    return httpd


def serve(host: str = "127.0.0.1", port: int = 8642, workers: int = 2, ready=print, watch_stdin: bool = False,
          **server_options) -> None:
    """Run the TPS until SIGINT / SIGTERM (or, with ``watch_stdin``, until its standard input closes:
    the parent that started it has gone): prints ``PHOENIX server listening on http://host:port``
    (the actual port when ``port`` is 0) once it accepts requests."""
    with PhoenixServer(workers=workers, **server_options) as tps:
        tps._jobs.start()  # fork the workers now, before the request threads exist
        httpd = make_http_server(tps, host, port)
        stop = threading.Event()

        def on_signal(*_):
            stop.set()
            threading.Thread(target=httpd.shutdown, daemon=True).start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        if watch_stdin:
            threading.Thread(target=lambda: (sys.stdin.read(), on_signal()), daemon=True).start()
        h, p = httpd.server_address[:2]
        ready(f"PHOENIX server listening on http://{h}:{p} ({workers} workers)", flush=True)
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            httpd.server_close()
            httpd.api.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8642, help="TCP port (0: a free port, printed at start)")
    p.add_argument("--workers", type=int, default=2, help="optimisation worker processes (default 2)")
    p.add_argument("--dose-grid-mm", type=float, default=5.0, help="dose grid resolution (mm, default 5)")
    p.add_argument("--store", default=None, help="folder for dose-influence data (default: a temporary folder)")
    p.add_argument("--spot-spacing-mm", type=float, default=5.0, help="lateral spot spacing (mm, default 5)")
    p.add_argument("--layer-spacing-mm", type=float, default=3.0, help="energy layer spacing (mm WET, default 3)")
    p.add_argument("--margin-mm", type=float, default=4.0, help="spot margin around the targets (mm, default 4)")
    p.add_argument("--exit-on-stdin-eof", action="store_true",
                   help="stop when standard input closes (a parent process that started the server has exited)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"phoenix-server: --port {args.port} outside [0, 65535]", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"phoenix-server: --workers {args.workers} must be ≥ 1", file=sys.stderr)
        return 2
    try:
        serve(args.host, args.port, args.workers, dose_grid_mm=args.dose_grid_mm, store_dir=args.store,
              spot_spacing_mm=args.spot_spacing_mm, layer_spacing_mm=args.layer_spacing_mm, margin_mm=args.margin_mm,
              watch_stdin=args.exit_on_stdin_eof)
    except OSError as error:
        print(f"phoenix-server: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0

