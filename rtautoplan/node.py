"""A DICOM node: C-STORE a CT series and its RTSTRUCT in, get RTPLAN, RTDOSE and RTSTRUCT back.

``Node(config)`` is a Verification and Storage SCP (all storage SOP classes, uncompressed transfer
syntaxes). Each instance is fsynced to ``WORKDIR/incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
before Success is returned. When the association is released, each study it touched is queued; one
worker thread plans the queue in order (``folder.plan_folder``) into ``WORKDIR/outbox/<study>/`` and
C-STOREs the DICOM outputs to ``config.dest`` if set. An aborted association's objects stay in
``incoming/`` unplanned until a released association of the same study plans them all.

Failures never stop the node: every handler is wrapped (an exception becomes a failure status and
a log line); a study that cannot be planned gets ``incoming/<study>/error.json`` (the one-line
message); a failed send leaves ``outbox/<study>/send_error.json``.

A plan that fails the clinical gate (``rtautoplan.gate``) is written to the outbox with its report
and log (``"acceptable": false``) and logged as an error; ``NodeConfig.send_unacceptable`` (CLI
``--send-unacceptable``, default off) decides whether it is C-STOREd on: by default it is held in
the outbox with ``outbox/<study>/held.json`` naming the reasons, so nothing that fails its goals
reaches the TPS unannounced.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import re
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from rtautoplan.folder import PlanOptions, plan_folder
from rtautoplan.errors import InputError

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
SEND_ERROR_FILE = "send_error.json"
HELD_FILE = "held.json"  # outbox/<study>/: a plan that fails the clinical gate, not sent
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # also what makes a UID safe as a file name
_SENT = ("rtstruct", "plan", "rtdose")  # the DICOM outputs; report and log stay in the outbox


class _BadDataset(Exception):
    """The dataset lacks what the node files it by (StudyInstanceUID, a valid SOPInstanceUID)."""


class _Undecodable(Exception):
    """The dataset could not be decoded."""


# exception → C-STORE failure status (PS3.4 B.2.3); anything else is 0xC211
_STORE_FAILURES = ((_BadDataset, 0xA900), (_Undecodable, 0xC210), (OSError, 0xA700))


@dataclass(frozen=True)
class Destination:
    """Where plans are sent: a storage SCP's host, port and AE title."""

    host: str
    port: int
    aet: str


@dataclass(frozen=True)
class NodeConfig:
    """aet/host/port: how the node is called (port 0: any free port, see ``Node.port``); workdir
    holds incoming/ and outbox/; dest: where plans go (None: outbox only); plan: PlanOptions;
    require_called_aet: reject associations not addressed to ``aet``. send_unacceptable: also send plans
    that fail the clinical gate (default: hold them in the outbox)."""

    aet: str = "RTAUTOPLAN"
    host: str = "0.0.0.0"
    port: int = 11112
    workdir: Path = Path("rtautoplan-node")
    dest: Destination | None = None
    plan: PlanOptions = field(default_factory=PlanOptions)
    require_called_aet: bool = True
    stop_timeout_s: float = 30.0
    send_unacceptable: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of a study: status "ok", "unacceptable" (planned, fails the clinical gate) or "error",
    the one-line message, outputs, sent or not."""

    study: str
    status: str
    message: str = ""
    files: dict = field(default_factory=dict)
    sent: bool = False


def _guarded(failure: int | None, what: str):
    """Wrap a handler: an exception becomes ``failure`` (or the matching store status) and a log line."""
    def wrap(handler):
        @functools.wraps(handler)
        def guarded(self, event):
            try:
                return handler(self, event)
            except Exception as error:  # service boundary: a failure status and a log line, never a dead server
                status = next((s for kind, s in _STORE_FAILURES if isinstance(error, kind)), failure)
                peer = event.assoc.requestor
                log.exception("%s from %s@%s failed; answered %s", what, peer.ae_title, peer.address,
                              status and f"0x{status:04X}")
                return status
        return guarded
    return wrap


class Node:
    """The DICOM node (module docstring): ``start()`` binds and returns the port, ``stop()`` is graceful."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.incoming = Path(config.workdir) / "incoming"
        self.outbox = Path(config.workdir) / "outbox"
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._received: dict[object, set[str]] = {}  # association → studies it stored into
        self._queued: set[str] = set()
        self._outcomes: dict[str, Outcome] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ae: AE | None = None
        self._server = None
        self._worker: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> int:
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._ae = ae = AE(ae_title=self.config.aet)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_called_aet = self.config.require_called_aet
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_ABORTED, self._on_closed),
                    (evt.EVT_CONN_CLOSE, self._on_closed)]
        self._worker = threading.Thread(target=self._work, name=f"{self.config.aet}-planner", daemon=True)
        self._worker.start()
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        return self.port

    def stop(self) -> None:
        """Stop accepting, give open associations ``stop_timeout_s`` to finish (then abort them),
        let the study being planned finish; queued studies stay in incoming/ (logged)."""
        if self._server is not None:
            self._server.shutdown()
            for assoc in self._ae.active_associations:
                assoc.join(self.config.stop_timeout_s)
                if assoc.is_alive():
                    assoc.abort()
            self._server = None
        if self._worker is not None:
            with contextlib.suppress(queue.Empty):  # drop what is queued; the worker may take one first
                while True:
                    self._queue.get_nowait()
            self._queue.put(None)
            self._worker.join(self.config.stop_timeout_s)
            if self._worker.is_alive():
                log.warning("the planner is still busy; it stops after this study")
            self._worker = None
        if left := sorted(self._queued):  # the worker has stopped: no other thread changes it
            log.warning("not planned (kept in %s; re-send to plan): %s", self.incoming, ", ".join(left))

    def wait_for(self, study: str, timeout_s: float) -> Outcome:
        """The outcome of ``study``'s latest planning, waiting up to ``timeout_s`` (TimeoutError)."""
        with self._done:
            if not self._done.wait_for(lambda: study in self._outcomes, timeout_s):
                raise TimeoutError(f"study {study} not planned within {timeout_s} s")
            return self._outcomes[study]

    @_guarded(0xC000, "C-ECHO")
    def _on_echo(self, event) -> int:
        return 0x0000

    @_guarded(0xC211, "C-STORE")
    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            study = str(ds.get("StudyInstanceUID", ""))
        except Exception as error:  # pydicom has no single decoding exception; mapped to 0xC210
            raise _Undecodable(f"{type(error).__name__}: {error}") from error
        sop = str(event.request.AffectedSOPInstanceUID)
        if not (_UID.fullmatch(study) and _UID.fullmatch(sop)):
            raise _BadDataset(f"StudyInstanceUID {study!r} / SOPInstanceUID {sop!r} is not a valid UID")
        folder = self.incoming / study
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{sop}.part"
        with part.open("wb") as f:
            f.write(event.encoded_dataset())
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, folder / f"{sop}.dcm")
        with self._lock:
            self._received.setdefault(event.assoc, set()).add(study)
        return 0x0000

    @_guarded(None, "release")
    def _on_released(self, event) -> None:
        with self._lock:
            studies = self._received.pop(event.assoc, set())
        for study in sorted(studies):
            self._enqueue(study)

    @_guarded(None, "close")
    def _on_closed(self, event) -> None:
        with self._lock:
            studies = self._received.pop(event.assoc, set())
        if studies:
            log.warning("association from %s ended without release: %s kept in incoming/, not planned",
                        event.assoc.requestor.ae_title, ", ".join(sorted(studies)))

    def _enqueue(self, study: str) -> None:
        with self._lock:
            if study in self._queued:
                return
            self._queued.add(study)
            self._outcomes.pop(study, None)
        log.info("study %s queued", study)
        self._queue.put(study)

    def _work(self) -> None:
        """The planner thread: one study at a time, in arrival order, until stop() sends None."""
        while (study := self._queue.get()) is not None:
            with self._lock:
                self._queued.discard(study)
            outcome = self._plan(study)
            with self._done:
                self._outcomes[study] = outcome
                self._done.notify_all()

    def _plan(self, study: str) -> Outcome:
        folder, out = self.incoming / study, self.outbox / study
        (folder / ERROR_FILE).unlink(missing_ok=True)
        try:
            planned = plan_folder(folder, out, self.config.plan)
        except Exception as error:  # worker boundary: one study's failure is its error.json; the node goes on
            internal = not isinstance(error, InputError)
            message = " ".join((f"{type(error).__name__}: {error}" if internal else str(error)).split())
            log.error("study %s not planned: %s", study, message, exc_info=internal)
            record = {"study": study, "kind": "internal" if internal else "input", "error": message}
            (folder / ERROR_FILE).write_text(json.dumps(record, indent=1))
            return Outcome(study, "error", message)
        s0, s1 = planned.result.initial_score, planned.result.score
        log.info("study %s planned: %s %.4g → %.4g in %.1f s", study, s1.system, s0.total, s1.total, planned.seconds)
        held = out / HELD_FILE
        held.unlink(missing_ok=True)
        if planned.acceptable:
            return Outcome(study, "ok", files=planned.files, sent=self._send(study, planned.files))
        reasons = list(planned.result.gate.reasons)
        message = "plan NOT ACCEPTABLE: " + "; ".join(reasons)
        log.error("study %s: %s", study, message)
        if self.config.send_unacceptable:
            return Outcome(study, "unacceptable", message, planned.files, self._send(study, planned.files))
        held.write_text(json.dumps({"study": study, "acceptable": False, "reasons": reasons,
                                    "held": "not sent: the plan fails the clinical gate (--send-unacceptable sends "
                                            "such plans)"}, indent=1))
        return Outcome(study, "unacceptable", message, planned.files, False)

    def _send(self, study: str, files: dict[str, Path]) -> bool:
        """C-STORE the DICOM outputs to the destination; a failure is logged and left as send_error.json."""
        dest, report = self.config.dest, self.outbox / study / SEND_ERROR_FILE
        report.unlink(missing_ok=True)
        if dest is None:
            return False
        try:
            failures = send_files([files[name] for name in _SENT if name in files], dest, self.config.aet)
        except Exception as error:  # worker boundary: a network fault must not stop the planner
            failures = [f"{type(error).__name__}: {error}"]
        if failures:
            log.error("study %s: sending to %s failed: %s", study, dest, "; ".join(failures))
            report.write_text(json.dumps({"study": study, "dest": vars(dest), "errors": failures}, indent=1))
            return False
        log.info("study %s sent to %s", study, dest)
        return True


def send_files(paths: list[Path], dest: Destination, aet: str) -> list[str]:
    """C-STORE ``paths`` in one association; returns what failed (empty: all stored)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=aet)
    for sop_class, syntax in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        return [f"association with {dest.aet}@{dest.host}:{dest.port} not established"]
    failures = []
    try:
        for path, ds in zip(paths, datasets):
            code = getattr(assoc.send_c_store(ds), "Status", None)  # an empty Dataset: no response
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                failures.append(f"{path.name}: " + ("no response" if code is None else f"status 0x{code:04X}"))
    finally:
        assoc.release()
    return failures


def serve_until_stopped(config: NodeConfig) -> None:
    """Run a node until SIGTERM or Ctrl-C, then stop it gracefully (``rtautoplan node``)."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    node = Node(config)
    try:
        log.warning("%s listening on %s:%d (incoming/, outbox/ in %s); Ctrl-C stops", config.aet, config.host,
                    node.start(), config.workdir)
        stopping.wait()
    except KeyboardInterrupt:
        log.warning("stopping")
    finally:
        node.stop()
