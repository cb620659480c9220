"""Chaos test of the DICOM node: kill -9 it at random moments, restart it, count what was lost.

What: starts ``rtautoplan node`` as a subprocess (coarse plans, a short quiet period, plans sent
to an in-process storage SCP), sends ``--studies`` copies of sample_data/prostate01 (each a new
study; a sender thread re-sends a whole study until one association carrying it is released), and
``--kills`` times kills the node with SIGKILL, aiming at each phase in turn (transfer: an
association open; waiting: the quiet period; planning; sending, made longer by a receiver that
takes 0.3 s per object) and then waiting a random moment more, notes what the node was doing when
killed, and restarts it on the same port and workdir. At the end it lets the node finish and checks:

* every object the node acknowledged (Success) is in the journal and on disk, intact as
  journaled (SHA-256 of the stored file; 0 lost);
* every study ends ``sent`` with exactly one plan counted in the journal and exactly one distinct
  RTPLAN SOP Instance UID received (re-deliveries of the same UIDs after a kill while sending are
  allowed: at-least-once delivery of identical objects);
* no temporary output or staging folder is left and every outbox folder is a finished output.

Why: issue 14 ("silently lost" studies after kill -9 or SIGTERM). Run
``python benchmarks/chaos_node.py --kills 20`` (a few minutes on 2 cores); tests/test_node.py runs
a small N. Exit 0 when every check passes, 1 otherwise; a JSON summary is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, RTStructureSetStorage, Verification

from rtautoplan.folder import is_finished

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "prostate01"
HOST = "127.0.0.1"
NODE_AET = "CHAOS-NODE"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_studies(folder: Path, n: int) -> dict[str, list[Path]]:
    """``n`` copies of prostate01, each a new study (a new StudyInstanceUID)."""
    studies = {}
    for i in range(n):
        study, target = generate_uid(), folder / f"study{i}"
        target.mkdir(parents=True)
        for source in sorted(SAMPLE.glob("*.dcm")):
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID = study
            ds.save_as(target / source.name)
        studies[study] = sorted(target.iterdir())
    return studies


class Receiver:
    """An in-process storage SCP standing in for the TPS: records every object it is sent."""

    def __init__(self, delay_s: float = 0.3):
        self.delay_s = delay_s
        self.received: list[tuple[str, str, str]] = []  # (study, modality, SOP instance UID)
        self._lock = threading.Lock()
        ae = AE(ae_title="CHAOS-TPS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.port = _free_port()
        self._server = ae.start_server((HOST, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        time.sleep(self.delay_s)  # a TPS takes its time: the node spends a while in "sending"
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.StudyInstanceUID), str(ds.Modality), str(ds.SOPInstanceUID)))
        return 0x0000

    def stop(self):
        self._server.shutdown()


class Sender(threading.Thread):
    """Sends each study (whole) until an association carrying all of it was released; records every
    object acknowledged with Success, and whether an association is open (for the kill log)."""

    def __init__(self, studies: dict[str, list[Path]], port: int, pause: tuple[float, float], rng: random.Random):
        super().__init__(daemon=True)
        self.studies, self.port, self.pause, self.rng = studies, port, pause, rng
        self.acked: dict[tuple[str, str], str] = {}  # (study, sop) → sha256 of the file's dataset
        self.delivered: set[str] = set()
        self.in_transfer = threading.Event()
        self.attempts = Counter()

    def run(self):
        for study, paths in self.studies.items():
            while study not in self.delivered:
                self.attempts[study] += 1
                if self._send(study, paths):
                    self.delivered.add(study)
                else:
                    time.sleep(0.3)
            time.sleep(self.rng.uniform(*self.pause))

    def _send(self, study: str, paths: list[Path]) -> bool:
        ae = AE(ae_title="CHAOS-PACS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.add_requested_context(RTStructureSetStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate(HOST, self.port, ae_title=NODE_AET)
        if not assoc.is_established:
            return False
        self.in_transfer.set()
        try:
            for path in paths:
                ds = pydicom.dcmread(path)
                answer = assoc.send_c_store(ds)
                if getattr(answer, "Status", None) != 0x0000:
                    assoc.abort()
                    return False
                self.acked[(study, str(ds.SOPInstanceUID))] = str(ds.SOPInstanceUID)
            assoc.release()
            return not assoc.is_aborted
        finally:
            self.in_transfer.clear()


PHASES = ("transfer", "waiting", "planning", "sending")


def _phases(sender: "Sender", workdir: Path) -> set[str]:
    """What the node is doing now: an association open (transfer), and its studies' states."""
    states = {s for s, n in _states(workdir).items() if n and s in PHASES + ("queued",)}
    return states | ({"transfer"} if sender.in_transfer.is_set() else set())


def _states(workdir: Path) -> Counter:
    try:
        with sqlite3.connect(f"file:{workdir / 'journal.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return Counter(s for (s,) in db.execute("SELECT state FROM studies"))
    except sqlite3.Error:
        return Counter()


def _start_node(config: Path, log: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "RTAUTOPLAN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rtautoplan.cli", "node", "--config", str(config), "--dose-grid-factor", "2", "4",
               "4", "--max-steps", "1", "--site", "prostate", "--send-unacceptable"]
    with log.open("a") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=ROOT)


def _wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the node exited at start ({process.returncode})")
        ae = AE(ae_title="CHAOS-PROBE")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.connection_timeout = ae.network_timeout = 2
        assoc = ae.associate(HOST, port, ae_title=NODE_AET)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.1)
    raise RuntimeError("the node did not start listening")


def run(kills: int, studies: int, folder: Path, seed: int = 0, max_delay_s: float = 10.0,
        finish_timeout_s: float = 900.0) -> dict:
    """The chaos run (module docstring); returns the summary (``summary["ok"]``: every check passed)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    workdir, cache, log = folder / "node", folder / "dij", folder / "node.log"
    sent = make_studies(folder / "studies", studies)
    receiver = Receiver()
    port = _free_port()
    config = folder / "node.json"
    config.write_text(json.dumps({"aet": NODE_AET, "host": HOST, "port": port, "workdir": str(workdir),
                                  "quiet_s": 3, "dest": {"host": HOST, "port": receiver.port, "aet": "CHAOS-TPS"},
                                  "access": {"calling_aets": ["CHAOS-PACS", "CHAOS-PROBE"], "hosts": [HOST]},
                                  "limits": {"min_free_mb": 64}, "send": {"attempts": 20, "backoff_s": 0.5},
                                  # the crash-loop guard would (rightly) give up on a study killed in planning
                                  # 3 times in a row; these kills are ours, not the study's
                                  "max_plan_attempts": kills + 3}))
    node = _start_node(config, log, cache)
    _wait_listening(port, node)
    sender = Sender(sent, port, (0.5, 4.0), rng)
    sender.start()
    phases = Counter()
    start = time.monotonic()
    try:
        for i in range(kills):
            target = PHASES[i % len(PHASES)]  # aim at each phase in turn, then wait a random moment more
            aim_end = time.monotonic() + 3 * max_delay_s
            while time.monotonic() < aim_end and target not in _phases(sender, workdir):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3 if target in ("waiting", "sending") else max_delay_s / 4))
            phases["+".join(sorted(_phases(sender, workdir))) or "idle"] += 1
            node.send_signal(signal.SIGKILL)
            node.wait()
            node = _start_node(config, log, cache)
            _wait_listening(port, node)
        sender.join(finish_timeout_s)
        end = time.monotonic() + finish_timeout_s
        while time.monotonic() < end:
            states = _states(workdir)
            if sum(states.values()) >= studies and set(states) <= {"sent", "held", "failed", "planned"}:
                break
            time.sleep(0.5)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
        receiver.stop()
    return _check(sent, sender, receiver, workdir, phases, kills, time.monotonic() - start)


def _check(sent, sender: Sender, receiver: Receiver, workdir: Path, phases: Counter, kills: int, seconds: float) -> dict:
    with sqlite3.connect(f"file:{workdir / 'journal.sqlite'}?mode=ro", uri=True) as db:
        objects = {(study, sop): (file, sha) for study, sop, file, sha in
                   db.execute("SELECT study, sop, file, sha256 FROM objects")}
        rows = {r[0]: r for r in db.execute("SELECT study, state, reason, plans FROM studies")}
    lost = []
    for key in sender.acked:
        if key not in objects:
            lost.append(key)
            continue
        data = (workdir / objects[key][0]).read_bytes() if (workdir / objects[key][0]).is_file() else b""
        if hashlib.sha256(data).hexdigest() != objects[key][1] or pydicom.dcmread(workdir / objects[key][0]).SOPInstanceUID != key[1]:
            lost.append(key)
    plan_uids = defaultdict(set)
    deliveries = Counter()
    for study, modality, sop in receiver.received:
        deliveries[(study, modality)] += 1
        if modality == "RTPLAN":
            plan_uids[study].add(sop)
    per_study = {s: {"state": rows[s][1] if s in rows else "missing", "plans": rows[s][3] if s in rows else 0,
                     "distinct_rtplan_uids": len(plan_uids[s]), "rtplan_deliveries": deliveries[(s, "RTPLAN")],
                     "send_attempts_by_sender": sender.attempts[s], "reason": rows[s][2] if s in rows else ""}
                 for s in sent}
    leftovers = [p.name for p in (workdir / "outbox").iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in (workdir / "staging").iterdir()] if (workdir / "staging").exists() else []
    unfinished = [p.name for p in (workdir / "outbox").iterdir()
                  if not p.name.startswith(".") and not is_finished(p)]
    ok = (not lost and not leftovers and not unfinished and len(sender.acked) == sum(len(p) for p in sent.values())
          and all(v["state"] == "sent" and v["plans"] == 1 and v["distinct_rtplan_uids"] == 1
                  for v in per_study.values()))
    return {"ok": ok, "kills": kills, "kills_by_phase": dict(phases), "studies": len(sent),
            "objects_acknowledged": len(sender.acked), "objects_lost": len(lost),
            "studies_sent_once": sum(v["state"] == "sent" and v["plans"] == 1 and v["distinct_rtplan_uids"] == 1
                                     for v in per_study.values()),
            "rtplan_redeliveries": sum(v["rtplan_deliveries"] - 1 for v in per_study.values() if v["rtplan_deliveries"]),
            "leftover_temp_folders": leftovers, "unfinished_outputs": unfinished, "seconds": round(seconds, 1),
            "per_study": per_study}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--studies", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay-s", type=float, default=10.0, help="kills come after 0.2 … this many seconds")
    p.add_argument("--folder", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chaos-node-") as tmp:
        summary = run(args.kills, args.studies, args.folder or Path(tmp), args.seed, args.max_delay_s)
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
