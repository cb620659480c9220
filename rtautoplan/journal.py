"""The node's journal: every study, every object received, and what became of them (SQLite).

What: ``WORKDIR/journal.sqlite`` with two tables. ``objects``: one row per SOP instance received
(study, series, SOP class, file, SHA-256 of its bytes, sender ``AET@host``, arrival time, and
whether it is *current*: part of what the study is planned with). ``studies``: one row per study
with its state, the reason of a failure, planning and sending attempts, the input hash of the
last plan and of the last successful send, and when the next send is due.

Why: the C-STORE handler writes the file (fsynced) and then the object's row (committed) before it
answers Success, so an acknowledged object is never lost; the node reads the states on start and
resumes every unfinished study (a kill -9 or a power cut loses nothing that was acknowledged).
WAL mode with ``synchronous=FULL`` and one short transaction per change keep the store handlers
and the planner from blocking each other for long, and a commit is on disk when it returns.

States: ``receiving`` (an association is storing, or was cut: planned once a re-sending association
is released), ``waiting`` (released; planned when no object has arrived for the quiet period),
``queued``, ``planning``, ``sending`` (planned; C-STORE to the destination pending, with retries),
and the final ``planned`` (no destination), ``sent``, ``held`` (fails the clinical gate, not sent)
and ``failed`` (``reason``; ``kind`` input or internal, or ``send``).

Which objects are current: the RTSTRUCT with the newest StructureSetDate/StructureSetTime (ties
and missing dates: the later arrival), and the CT series with the newest SeriesDate/SeriesTime
(ties and missing dates: the series whose first object arrived last); objects of other CT series
and older RTSTRUCTs are kept on disk but not planned with. A corrected RTSTRUCT or CT thus
replaces the old one and the study is planned again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
FINAL = ("planned", "sent", "held", "failed")
UNFINISHED = ("waiting", "queued", "planning", "sending")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    sop TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL, sop_class TEXT NOT NULL,
    sort_key TEXT NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    sender TEXT NOT NULL, received REAL NOT NULL, current INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (study, sop));
CREATE TABLE IF NOT EXISTS studies (
    study TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL, last_object REAL NOT NULL,
    plan_attempts INTEGER NOT NULL DEFAULT 0, plans INTEGER NOT NULL DEFAULT 0,
    send_attempts INTEGER NOT NULL DEFAULT 0, next_send REAL NOT NULL DEFAULT 0,
    planned_hash TEXT NOT NULL DEFAULT '', sent_hash TEXT NOT NULL DEFAULT '', acceptable INTEGER);
"""


@dataclass(frozen=True)
class StoredObject:
    """One received SOP instance, as journaled."""

    sop: str
    study: str
    series: str
    sop_class: str
    sort_key: str  # StructureSetDate+Time (RTSTRUCT) or SeriesDate+Time (CT), "" if absent
    file: str  # relative to the workdir
    sha256: str
    size: int
    sender: str
    received: float = 0.0
    current: bool = True


@dataclass(frozen=True)
class Study:
    """One study's row (module docstring for the states)."""

    study: str
    state: str
    reason: str
    kind: str
    created: float
    updated: float
    last_object: float
    plan_attempts: int
    plans: int
    send_attempts: int
    next_send: float
    planned_hash: str
    sent_hash: str
    acceptable: int | None


class Journal:
    """The journal of one workdir. Thread-safe: one connection, one lock, short transactions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- objects --------------------------------------------------------------------------

    def record_object(self, obj: StoredObject) -> bool:
        """Journal a received object and mark its study ``receiving``; recompute which objects are
        current. Returns False when the same object (same UID and bytes) was journaled before; a
        finished study then goes round again too, and the planner answers it from the journal
        (an unchanged input is neither planned nor sent again)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT sha256 FROM objects WHERE study = ? AND sop = ?", (obj.study, obj.sop)).fetchone()
            if row is not None and row[0] == obj.sha256:
                again = "state IN ('planned', 'sent', 'held', 'failed')"
                db.execute(f"UPDATE studies SET last_object = ?, state = CASE WHEN {again} THEN 'receiving' ELSE state "
                           f"END, plan_attempts = CASE WHEN {again} THEN 0 ELSE plan_attempts END WHERE study = ?",
                           (now, obj.study))
                return False
            db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                       (obj.sop, obj.study, obj.series, obj.sop_class, obj.sort_key, obj.file, obj.sha256,
                        obj.size, obj.sender, now))
            db.execute("INSERT INTO studies (study, state, created, updated, last_object) VALUES (?, 'receiving', "
                       "?, ?, ?) ON CONFLICT (study) DO UPDATE SET state = 'receiving', reason = '', kind = '', "
                       "updated = excluded.updated, last_object = excluded.last_object, plan_attempts = 0",
                       (obj.study, now, now, now))
            self._choose_current(db, obj.study)
            return True

    @staticmethod
    def _choose_current(db, study: str) -> None:
        rows = db.execute("SELECT sop, series, sop_class, sort_key, received FROM objects WHERE study = ?",
                          (study,)).fetchall()
        structs = [r for r in rows if r[2] == RTSTRUCT_CLASS]
        images = [r for r in rows if r[2] != RTSTRUCT_CLASS]
        current = set()
        if structs:
            current.add(max(structs, key=lambda r: (r[3], r[4]))[0])
        if images:
            series: dict[str, tuple[str, float]] = {}
            for _sop, uid, _cls, key, received in images:
                old = series.get(uid)
                series[uid] = (max(key, old[0]) if old else key, min(received, old[1]) if old else received)
            newest = max(series, key=lambda uid: series[uid])
            current.update(r[0] for r in images if r[1] == newest)
        for sop, *_ in rows:
            db.execute("UPDATE objects SET current = ? WHERE study = ? AND sop = ?", (int(sop in current), study, sop))

    def objects(self, study: str, current_only: bool = True) -> list[StoredObject]:
        with self._lock:
            rows = self._db.execute("SELECT sop, study, series, sop_class, sort_key, file, sha256, size, sender, "
                                    "received, current FROM objects WHERE study = ?"
                                    + (" AND current = 1" if current_only else "") + " ORDER BY sop",
                                    (study,)).fetchall()
        return [StoredObject(*r[:10], bool(r[10])) for r in rows]

    def study_totals(self, study: str) -> tuple[int, int]:
        """(objects, bytes) journaled for ``study`` (all, current or not)."""
        with self._lock:
            n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects WHERE study = ?",
                                       (study,)).fetchone()
        return int(n), int(size)

    def input_hash(self, study: str, salt: str) -> str:
        """SHA-256 of the current objects (UID and content) and ``salt`` (the plan options)."""
        h = hashlib.sha256(salt.encode())
        for obj in self.objects(study):
            h.update(f"|{obj.sop}:{obj.sha256}".encode())
        return h.hexdigest()

    # --- studies --------------------------------------------------------------------------

    def study(self, study: str) -> Study | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM studies WHERE study = ?", (study,)).fetchone()
        return Study(*row) if row else None

    def studies(self, *states: str) -> list[Study]:
        """Studies in ``states`` (all if none given), oldest update first."""
        query, args = "SELECT * FROM studies", ()
        if states:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = states
        with self._lock:
            return [Study(*r) for r in self._db.execute(query + " ORDER BY updated, study", args).fetchall()]

    def set_state(self, study: str, state: str, reason: str = "", kind: str = "", only_from: tuple = (),
                  count_plan: bool = False, **fields) -> bool:
        """Move ``study`` to ``state`` (setting ``fields`` too, and counting a finished plan with
        ``count_plan``, in the same transaction); with ``only_from``, only from one of those states (so
        a planner never overwrites what a new store changed). True if it moved."""
        sets = ", ".join(["state = ?", "reason = ?", "kind = ?", "updated = ?", *(f"{k} = ?" for k in fields),
                          *(["plans = plans + 1"] if count_plan else [])])
        args = [state, reason, kind, time.time(), *fields.values(), study]
        where = "study = ?"
        if only_from:
            where += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += list(only_from)
        with self._tx() as db:
            return db.execute(f"UPDATE studies SET {sets} WHERE {where}", args).rowcount == 1

    def bump(self, study: str, column: str) -> int:
        """Add one to a counter (``plan_attempts``, ``plans``, ``send_attempts``); returns the new value."""
        assert column in ("plan_attempts", "plans", "send_attempts")
        with self._tx() as db:
            db.execute(f"UPDATE studies SET {column} = {column} + 1 WHERE study = ?", (study,))
            return db.execute(f"SELECT {column} FROM studies WHERE study = ?", (study,)).fetchone()[0]

    def forget(self, study: str) -> None:
        """Remove a study and its objects from the journal (retention)."""
        with self._tx() as db:
            db.execute("DELETE FROM objects WHERE study = ?", (study,))
            db.execute("DELETE FROM studies WHERE study = ?", (study,))
