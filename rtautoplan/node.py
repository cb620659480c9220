"""A DICOM node a clinic can leave running: C-STORE a CT series and its RTSTRUCT in, get RTPLAN,
RTDOSE and RTSTRUCT back; durable, idempotent, closed to strangers.

``Node(config)`` is a Verification and Storage SCP. Each C-STORE is checked (``intake.check``: the
dataset decodes fully, its UIDs are valid and agree with the request, its SOP class is CT Image or
RT Structure Set; otherwise a failure status with an ErrorComment and nothing is stored), then
limited (objects and bytes per study, a free-disk floor: 0xA700), written to
``WORKDIR/incoming/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (fsynced) and journaled
(``journal.Journal``: committed) before Success is answered. Who may connect: ``access.Access``
(calling AE titles, addresses) and TLS (``access.Tls``); one log line per association (peer, AE
titles, objects stored and refused, how it ended).

When an association ends, its studies wait for the quiet period (``quiet_s`` without a new object),
then one worker thread plans them in order: the study's *current* objects (the newest RTSTRUCT and
CT series, see ``journal``) are linked into ``WORKDIR/staging/<study>/`` and planned
(``folder.plan_folder``) into ``WORKDIR/outbox/<study>/``, written whole and renamed into place. The
result UIDs derive from the input hash (the current objects' UIDs and bytes, and the plan options),
so an unchanged study sent again is neither planned nor sent again (``replan_unchanged`` to force),
and a re-plan after a crash gives the same UIDs. The DICOM outputs are C-STOREd to ``config.dest``,
retried with doubling waits up to ``send_attempts``, then the study fails with reason "send".

Durability: on start the node removes partial outputs and staging folders and resumes every
unfinished study from the journal: a study being received or waiting is planned after the quiet
period, a queued one is planned, one whose planning was interrupted is planned again (an output
already renamed into place for the same input is adopted, not planned twice; after
``max_plan_attempts`` interruptions the study fails), one being sent is sent. ``kill -9`` at any
moment loses no acknowledged object and plans every study once.

A study that cannot be planned gets ``incoming/<study>/error.json`` (the one-line message); a send
that finally failed leaves ``outbox/<study>/send_error.json``. A plan that fails the clinical gate
(``rtautoplan.gate``) is written to the outbox with its report and log; unless
``send_unacceptable`` it is held there with ``outbox/<study>/held.json`` naming the reasons, so
nothing that fails its goals reaches the TPS unannounced. Finished studies older than
``retention_days`` are removed from incoming/, outbox/ and the journal.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from rtautoplan import intake
from rtautoplan.access import GuardedAE
from rtautoplan.errors import InputError
from rtautoplan.folder import clean_stale, fsync_path, options_fingerprint, plan_folder, read_marker
from rtautoplan.journal import FINAL, Journal, StoredObject
from rtautoplan.outputs import LOG_FILE
from rtautoplan.node_config import Destination, NodeConfig

__all__ = ["Destination", "Node", "NodeConfig", "Outcome", "send_files", "serve_until_stopped"]

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
SEND_ERROR_FILE = "send_error.json"
HELD_FILE = "held.json"  # outbox/<study>/: a plan that fails the clinical gate, not sent
JOURNAL_FILE = "journal.sqlite"
_SEND_ORDER = ("RS", "RP", "RD")  # the DICOM outputs by file-name prefix; report and log stay in the outbox
_SWEEP_EVERY_S = 3600.0


@dataclass(frozen=True)
class Outcome:
    """What became of a study: status "ok", "unacceptable" (planned, fails the clinical gate) or "error",
    the one-line message, outputs, sent or not; unchanged: an unchanged re-send, not planned again."""

    study: str
    status: str
    message: str = ""
    files: dict = field(default_factory=dict)
    sent: bool = False
    unchanged: bool = False


@dataclass
class _Association:
    """What one association did, for its log line and for the quiet period."""

    peer: str
    studies: set = field(default_factory=set)
    stored: int = 0
    refused: int = 0


def _guarded(failure: int | None, what: str):
    """Wrap a handler: an exception becomes ``failure`` (0xA700 for OSError: disk) and a log line."""
    def wrap(handler):
        @functools.wraps(handler)
        def guarded(self, event):
            try:
                return handler(self, event)
            except Exception as error:  # service boundary: a failure status and a log line, never a dead server
                status = intake.OUT_OF_RESOURCES if isinstance(error, OSError) and failure else failure
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
        self.workdir = Path(config.workdir).absolute()
        self.incoming, self.outbox, self.staging = (self.workdir / d for d in ("incoming", "outbox", "staging"))
        self.journal: Journal | None = None
        self._salt = options_fingerprint(config.plan)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._assocs: dict[object, _Association] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._pending: dict[str, tuple] = {}  # study being sent → its outcome but for "sent"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ae: AE | None = None
        self._server = None
        self._worker: threading.Thread | None = None
        self._lockfile = None
        self._last_sweep = 0.0

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> int:
        for folder in (self.incoming, self.outbox, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.workdir / "node.lock", "w")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise InputError(f"workdir {self.workdir}", "is in use by another running node",
                             "Stop the other node or give this one a workdir of its own") from None
        self.journal = Journal(self.workdir / JOURNAL_FILE)
        self._resume()
        self._ae = ae = GuardedAE(ae_title=self.config.aet)
        ae.access = self.config.access
        ae.supported_contexts = AllStoragePresentationContexts  # others are refused per object: 0x0122
        ae.add_supported_context(Verification)
        ae.require_called_aet = self.config.require_called_aet
        ae.require_calling_aet = list(self.config.access.calling_aets)
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_ended), (evt.EVT_ABORTED, self._on_ended),
                    (evt.EVT_CONN_CLOSE, self._on_ended)]
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name=f"{self.config.aet}-planner", daemon=True)
        self._worker.start()
        ssl_context = self.config.tls.server_context() if self.config.tls else None
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers,
                                       ssl_context=ssl_context)
        if not self.config.access.calling_aets and not self.config.access.hosts:
            log.warning("no allow-list: any calling AE title and address may store (see --config, [access])")
        return self.port

    def stop(self) -> None:
        """Stop accepting, give open associations ``stop_timeout_s`` to finish (then abort them), let
        the study being planned finish; queued studies stay in the journal and resume on the next start."""
        if self._server is not None:
            self._server.shutdown()
            for assoc in self._ae.active_associations:
                assoc.join(self.config.stop_timeout_s)
                if assoc.is_alive():
                    assoc.abort()
            self._server = None
        if self._worker is not None:
            self._stopping.set()
            self._wake.set()
            self._worker.join(self.config.stop_timeout_s)
            if self._worker.is_alive():
                log.warning("the planner is still busy; it stops after this study")
            self._worker = None
        if self.journal is not None:
            if left := self.journal.studies("waiting", "queued", "planning", "sending"):
                log.warning("not finished (resumed on the next start): %s", ", ".join(s.study for s in left))
            if self._worker is None:
                self.journal.close()
                self.journal = None
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def wait_for(self, study: str, timeout_s: float) -> Outcome:
        """The outcome of ``study``'s latest planning, waiting up to ``timeout_s`` (TimeoutError)."""
        with self._done:
            if not self._done.wait_for(lambda: study in self._outcomes, timeout_s):
                raise TimeoutError(f"study {study} not planned within {timeout_s} s")
            return self._outcomes[study]

    def _resume(self) -> None:
        """Make the workdir consistent after a crash and requeue what was unfinished (module docstring)."""
        clean_stale(self.outbox, everything=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        for part in self.incoming.glob("*/.*.part"):
            part.unlink(missing_ok=True)
        journal, now = self.journal, time.time()
        for s in journal.studies("receiving", "waiting"):
            journal.set_state(s.study, "waiting", last_object=now)
            log.warning("study %s: resumed; planned after the quiet period", s.study)
        for s in journal.studies("planning"):
            if s.plan_attempts >= self.config.max_plan_attempts:
                self._fail(s.study, "internal", f"planning was interrupted {s.plan_attempts} times (a crash or the "
                           "node killed while planning); re-send the study to try again")
            else:
                journal.set_state(s.study, "queued")
                log.warning("study %s: planning was interrupted; planned again", s.study)
        for s in journal.studies("sending"):
            journal.set_state(s.study, "sending", next_send=0.0)
        self._sweep()

    # --- DICOM handlers -------------------------------------------------------------------

    def _record(self, event) -> _Association:
        with self._lock:
            if event.assoc not in self._assocs:
                r = event.assoc.requestor
                self._assocs[event.assoc] = _Association(f"{r.ae_title}@{r.address}:{r.port}")
            return self._assocs[event.assoc]

    @_guarded(None, "accept")
    def _on_accepted(self, event) -> None:
        self._record(event)

    @_guarded(None, "reject")
    def _on_rejected(self, event) -> None:
        r = event.assoc.requestor
        log.warning("association from %s@%s:%s to %s rejected (calling or called AE title not allowed)",
                    r.ae_title, r.address, r.port, event.assoc.acceptor.ae_title)

    @_guarded(0xC000, "C-ECHO")
    def _on_echo(self, event) -> int:
        return 0x0000

    @_guarded(0xC211, "C-STORE")
    def _on_store(self, event):
        record = self._record(event)
        try:
            accepted = intake.check(event)
            self._check_limits(accepted)
        except intake.Refused as refused:
            record.refused += 1
            log.warning("C-STORE from %s refused: 0x%04X %s", record.peer, refused.status, refused.comment)
            return refused.response()
        folder = self.incoming / accepted.study
        path = folder / f"{accepted.sop}.dcm"
        if not path.resolve().is_relative_to(self.incoming.resolve()):  # validated UIDs: cannot happen
            raise intake.Refused(intake.MISMATCH, "UID would name a path outside the workdir")
        digest = hashlib.sha256(accepted.data).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{accepted.sop}.{threading.get_ident()}.part"
        try:
            with part.open("wb") as f:
                f.write(accepted.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, path)
            fsync_path(folder)
        finally:
            part.unlink(missing_ok=True)
        with self._lock:
            record.studies.add(accepted.study)
            self._outcomes.pop(accepted.study, None)
        self.journal.record_object(StoredObject(accepted.sop, accepted.study, accepted.series, accepted.sop_class,
                                                accepted.sort_key, path.relative_to(self.workdir).as_posix(), digest,
                                                len(accepted.data), record.peer))
        record.stored += 1
        return 0x0000

    def _check_limits(self, accepted: intake.Accepted) -> None:
        size = len(accepted.data)
        if shutil.disk_usage(self.workdir).free - size < self.config.min_free_bytes:
            raise intake.Refused(intake.OUT_OF_RESOURCES, "disk nearly full: the node refuses new objects")
        n, total = self.journal.study_totals(accepted.study)
        if n + 1 > self.config.max_objects_per_study or total + size > self.config.max_bytes_per_study:
            raise intake.Refused(intake.OUT_OF_RESOURCES, "study exceeds the node's object or size limit")

    @_guarded(None, "association end")
    def _on_ended(self, event) -> None:
        with self._lock:
            record = self._assocs.pop(event.assoc, None)
        if record is None:  # logged already (released, then the connection closed)
            return
        how = {evt.EVT_RELEASED: "released", evt.EVT_ABORTED: "aborted"}.get(event.event, "connection closed")
        log.info("association %s → %s: %d stored, %d refused, studies [%s]; %s", record.peer,
                 event.assoc.acceptor.ae_title, record.stored, record.refused, ", ".join(sorted(record.studies)), how)
        for study in sorted(record.studies):
            self.journal.set_state(study, "waiting", only_from=("receiving",))
        self._wake.set()

    # --- the worker -----------------------------------------------------------------------

    def _work(self) -> None:
        """The planner thread: sends due, then the oldest queued study, one at a time, until stop()."""
        while not self._stopping.is_set():
            try:
                busy = self._step()
                if time.time() - self._last_sweep > _SWEEP_EVERY_S:
                    self._sweep()
            except Exception:  # worker boundary: log, go on; the journal keeps the state
                log.exception("planner step failed")
                busy = False
            if not busy:
                self._wake.wait(0.1)
                self._wake.clear()

    def _step(self) -> bool:
        journal, now = self.journal, time.time()
        with self._lock:
            active = set().union(*(a.studies for a in self._assocs.values()))
        for s in journal.studies("waiting"):
            if now - s.last_object >= self.config.quiet_s and s.study not in active:
                if journal.set_state(s.study, "queued", only_from=("waiting",)):
                    log.info("study %s queued", s.study)
        for s in journal.studies("sending"):
            if s.next_send <= now:
                self._send(s.study)
                return True
        queued = journal.studies("queued")
        if queued:
            self._plan(queued[0].study)
            return True
        return False

    def _plan(self, study: str) -> None:
        journal = self.journal
        if not journal.set_state(study, "planning", only_from=("queued",)):
            return
        journal.bump(study, "plan_attempts")
        h = journal.input_hash(study, self._salt)
        row, out = journal.study(study), self.outbox / study
        marker = read_marker(out)
        if marker.get("input_hash") == h and not (self.config.replan_unchanged and row.planned_hash == h):
            unchanged = row.planned_hash == h
            if not unchanged:  # a crash after the output was renamed into place: adopt it
                journal.set_state(study, "planning", only_from=("planning",), count_plan=True, planned_hash=h,
                                  acceptable=int(bool(marker.get("acceptable"))))
            log.info("study %s: %s", study, "unchanged since its last plan; not planned again" if unchanged else
                     "its finished output was kept (the node stopped before recording it)")
            self._after_plan(study, h, bool(marker.get("acceptable")), {}, unchanged=unchanged)
            return
        (self.incoming / study / ERROR_FILE).unlink(missing_ok=True)
        staging = self.staging / study
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            for obj in journal.objects(study):
                source, target = self.workdir / obj.file, staging / Path(obj.file).name
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
            planned = plan_folder(staging, out, self.config.plan, uid_seed=h, marker={"input_hash": h, "study": study})
        except Exception as error:  # worker boundary: one study's failure is its error.json; the node goes on
            internal = not isinstance(error, InputError)
            message = " ".join((f"{type(error).__name__}: {error}" if internal else str(error)).split())
            log.error("study %s not planned: %s", study, message, exc_info=internal)
            record = {"study": study, "kind": "internal" if internal else "input", "error": message}
            (self.incoming / study).mkdir(parents=True, exist_ok=True)
            (self.incoming / study / ERROR_FILE).write_text(json.dumps(record, indent=1))
            self._fail(study, record["kind"], message, only_from=("planning",))
            return
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not journal.set_state(study, "planning", only_from=("planning",), count_plan=True, planned_hash=h,
                                 acceptable=int(planned.acceptable)):
            log.info("study %s: new objects arrived while it was planned; planned again", study)
        s0, s1 = planned.result.initial_score, planned.result.score
        log.info("study %s planned: %s %.4g → %.4g in %.1f s", study, s1.system, s0.total, s1.total, planned.seconds)
        reasons = list(planned.result.gate.reasons) if planned.result.gate is not None else []
        self._after_plan(study, h, planned.acceptable, planned.files, reasons=reasons)

    def _after_plan(self, study: str, h: str, acceptable: bool, files: dict, unchanged: bool = False,
                    reasons: list | None = None) -> None:
        """Hold, keep or send a planned study (the state it moves to from ``planning``)."""
        journal, row = self.journal, self.journal.study(study)
        out = self.outbox / study
        if reasons is None:
            try:
                reasons = list(json.loads((out / LOG_FILE).read_text()).get("reasons", []))
            except (OSError, ValueError):
                reasons = []
        status = "ok" if acceptable else "unacceptable"
        message = "" if acceptable else "plan NOT ACCEPTABLE: " + "; ".join(reasons)
        if not acceptable:
            log.error("study %s: %s", study, message)
        if not acceptable and not self.config.send_unacceptable:
            _write_json(out / HELD_FILE, {"study": study, "acceptable": False, "reasons": reasons,
                                          "held": "not sent: the plan fails the clinical gate (--send-unacceptable "
                                                  "sends such plans)"})
            if journal.set_state(study, "held", message, only_from=("planning",)):
                self._finish(Outcome(study, status, message, files, False, unchanged))
        elif self.config.dest is None:
            if journal.set_state(study, "planned", message, only_from=("planning",)):
                self._finish(Outcome(study, status, message, files, False, unchanged))
        elif unchanged and row.sent_hash == h and not self.config.replan_unchanged:
            if journal.set_state(study, "sent", message, only_from=("planning",)):
                self._finish(Outcome(study, status, message or "unchanged: not sent again", files, True, True))
        elif journal.set_state(study, "sending", message, only_from=("planning",), send_attempts=0, next_send=0.0):
            with self._lock:
                self._pending[study] = (status, message, files, unchanged)

    def _send(self, study: str) -> None:
        """One attempt at C-STOREing ``study``'s outputs; retried later with a doubling wait, failed after
        ``send_attempts``."""
        journal, dest, out = self.journal, self.config.dest, self.outbox / study
        row = journal.study(study)
        attempt = journal.bump(study, "send_attempts")
        paths = sorted((p for p in out.glob("*.dcm") if p.name[:2] in _SEND_ORDER),
                       key=lambda p: _SEND_ORDER.index(p.name[:2]))
        try:
            failures = send_files(paths, dest, self.config.aet, self.config.tls) if paths else ["no DICOM outputs"]
        except Exception as error:  # worker boundary: a network fault must not stop the planner
            failures = [f"{type(error).__name__}: {error}"]
        with self._lock:
            status, message, files, unchanged = self._pending.get(
                study, ("ok" if row.acceptable else "unacceptable", row.reason, {}, False))
        if not failures:
            (out / SEND_ERROR_FILE).unlink(missing_ok=True)
            if journal.set_state(study, "sent", message, only_from=("sending",), sent_hash=row.planned_hash):
                log.info("study %s sent to %s (attempt %d)", study, dest, attempt)
                self._finish(Outcome(study, status, message, files, True, unchanged))
            return
        text = "; ".join(failures)
        if attempt < self.config.send_attempts:
            wait = self.config.send_backoff_s * 2 ** (attempt - 1)
            log.warning("study %s: sending to %s failed (attempt %d of %d, again in %.0f s): %s", study, dest,
                        attempt, self.config.send_attempts, wait, text)
            journal.set_state(study, "sending", row.reason, only_from=("sending",), next_send=time.time() + wait)
            return
        log.error("study %s: sending to %s failed %d times, given up: %s", study, dest, attempt, text)
        _write_json(out / SEND_ERROR_FILE, {"study": study, "dest": vars(dest), "errors": failures,
                                            "attempts": attempt})
        self._fail(study, "send", f"sending failed {attempt} times: {text}", only_from=("sending",))
        self._finish(Outcome(study, status, message or text, files, False, unchanged))

    def _fail(self, study: str, kind: str, message: str, only_from: tuple = ()) -> None:
        if self.journal.set_state(study, "failed", message, kind, only_from=only_from) and kind != "send":
            self._finish(Outcome(study, "error", message))

    def _finish(self, outcome: Outcome) -> None:
        with self._done:
            self._pending.pop(outcome.study, None)
            self._outcomes[outcome.study] = outcome
            self._done.notify_all()

    def _sweep(self) -> None:
        """Retention: remove finished studies older than ``retention_days`` (files and journal rows)."""
        self._last_sweep = time.time()
        if self.config.retention_days <= 0:
            return
        cutoff = time.time() - self.config.retention_days * 86400
        for s in self.journal.studies(*FINAL):
            if s.updated < cutoff:
                shutil.rmtree(self.incoming / s.study, ignore_errors=True)
                shutil.rmtree(self.outbox / s.study, ignore_errors=True)
                self.journal.forget(s.study)
                log.info("study %s removed (finished %.0f days ago; retention %g days)", s.study,
                         (time.time() - s.updated) / 86400, self.config.retention_days)


def _write_json(path: Path, record: dict) -> None:
    """A status file beside the outputs, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def send_files(paths: list[Path], dest: Destination, aet: str, tls=None) -> list[str]:
    """C-STORE ``paths`` in one association (over TLS when ``dest.tls``, with ``tls``'s certificates);
    returns what failed (empty: all stored)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 30
    for sop_class, syntax in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(sop_class, [syntax])
    tls_args = None
    if dest.tls:
        if tls is None:
            return [f"{dest.aet}@{dest.host}:{dest.port} wants TLS but the node has no [tls] configuration"]
        tls_args = (tls.client_context(), dest.host)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet, tls_args=tls_args)
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
        log.warning("%s listening on %s:%d%s (journal, incoming/, outbox/ in %s); Ctrl-C stops", config.aet,
                    config.host, node.start(), " with TLS" if config.tls else "", config.workdir)
        stopping.wait()
    except KeyboardInterrupt:
        log.warning("stopping")
    finally:
        node.stop()
