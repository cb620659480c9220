"""Asynchronous optimisation jobs: the pool of worker processes, one slot per job in flight, the
job records and their outcomes.

Optimisations run in a ``ProcessPoolExecutor`` (fork on Linux) whose workers run
``worker.run_job``. Each job in flight holds a slot: its progress and its started and cancel flags
are entries of shared-memory arrays (``multiprocessing.RawArray``) that the workers receive when
they start, so a status query or a cancel never waits for a worker. The process id of the worker
running a job is kept the same way (``JobStatus.worker_pid``).

A worker process that dies (killed, out of memory, a crash in native code) breaks the executor:
the job it ran, and any other job in flight then, end FAILED with PHX-3005 and a message saying
so; the next submission starts a fresh pool. No job hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from rtautoplan.adapters.phoenix_api import engine, worker
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.records import JobStatus

N_SLOTS = 1024


@dataclass(eq=False)
class JobRecord:
    job_id: str
    plan_id: str
    slot: int
    future: object
    max_iterations: int
    state: str | None = None  # final state once finalised
    error: str | None = None
    error_code: str | None = None
    result: dict | None = None
    obj_ids: list = field(default_factory=list)
    traceback: str | None = None


class JobPool:
    """The worker processes and the jobs submitted to them.

    lock: the server's lock (a job's outcome and its plan change together under it).
    on_finish(job, result): records a finished job on its plan; called once per job, under the
    lock, with the worker's result if the job is DONE, else None.
    """

    def __init__(self, workers: int, lock, on_finish):
        self._lock, self._on_finish = lock, on_finish
        self._jobs: dict[str, JobRecord] = {}
        self._progress = mp.RawArray("d", N_SLOTS)
        self._started = mp.RawArray("b", N_SLOTS)
        self._cancel = mp.RawArray("b", N_SLOTS)
        self._pid = mp.RawArray("i", N_SLOTS)
        self._free_slots = list(range(N_SLOTS))
        self._workers = workers
        self._pool = self._new_pool()
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=mp.get_context(method),
                                   initializer=worker.init_worker,
                                   initargs=(self._progress, self._started, self._cancel, self._pid))

    def start(self) -> None:
        """Start the worker processes now (the pool otherwise forks them at the first job)."""
        for f in [self._pool.submit(os.getpid) for _ in range(self._workers)]:
            f.result()

    def reserve_slot(self) -> int:
        """A free slot, its progress and flags cleared (the caller holds the lock)."""
        if not self._free_slots:
            raise PhoenixError(E.SERVER_DOWN, f"more than {N_SLOTS} jobs in flight")
        slot = self._free_slots.pop()
        self._progress[slot], self._started[slot], self._cancel[slot], self._pid[slot] = 0.0, 0, 0, 0
        return slot

    def submit(self, job_id: str, plan_id: str, slot: int, payload: dict, max_iterations: int) -> JobRecord:
        """Queue ``worker.run_job(slot, payload)`` (the caller holds the lock; ``watch`` the job once
        it has released it and the plan records the job)."""
        if getattr(self._pool, "_broken", False):  # a worker died: the old pool refuses work
            self._restart()
        try:
            future = self._pool.submit(worker.run_job, slot, payload)
        except BrokenProcessPool:
            self._restart()
            future = self._pool.submit(worker.run_job, slot, payload)
        job = JobRecord(job_id, plan_id, slot, future, max_iterations, obj_ids=payload["obj_ids"])
        self._jobs[job_id] = job
        return job

    def _restart(self) -> None:
        old, self._pool = self._pool, self._new_pool()
        self.restarts += 1
        old.shutdown(wait=False, cancel_futures=True)

    def watch(self, job: JobRecord) -> None:
        """Finalise the job as soon as it ends (at once if it already has)."""
        job.future.add_done_callback(lambda _f, j=job: self._finalise(j))

    def _finalise(self, job: JobRecord) -> None:
        """Record the outcome of a finished job, hand it to ``on_finish`` and free its slot (runs once)."""
        with self._lock:
            if job.state is not None:
                return
            f = job.future
            result = None
            try:
                outcome = f.result()
            except (CancelledError, engine.Cancelled):
                job.state, job.error_code, job.error = "CANCELLED", E.CANCELLED, f"job {job.job_id} was cancelled"
            except BrokenProcessPool as error:
                pid = self._pid[job.slot]
                where = f"while it ran in worker process {pid}" if self._started[job.slot] else "before it started"
                job.state, job.error_code = "FAILED", E.WORKER_LOST
                job.error = (f"an optimisation worker process died {where} (killed, out of memory or crashed: "
                             f"{error}); the job did not finish and the plan keeps its previous result. The server "
                             f"starts a new worker pool: submit the job again")
            except Exception as error:  # noqa: BLE001 - any failure in the worker is the job's failure
                job.state, job.error_code = "FAILED", E.JOB_FAILED
                job.error = f"{type(error).__name__}: {error}"
                job.traceback = "".join(traceback.format_exception(error))
            else:
                job.state, job.result = "DONE", {k: outcome[k] for k in ("iterations", "value", "message", "seconds")}
                job.result["worker_pid"] = self._pid[job.slot] or None
                result = outcome
            self._on_finish(job, result)
            self._free_slots.append(job.slot)

    def job(self, job_id: str) -> JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_JOB, f"no job {job_id!r}") from None

    def status(self, job_id: str) -> JobStatus:
        job = self.job(job_id)
        if job.state is None and job.future.done():
            self._finalise(job)
        with self._lock:
            if job.state is None:
                state = "RUNNING" if self._started[job.slot] else "QUEUED"
                return JobStatus(job_id, job.plan_id, state, float(self._progress[job.slot]),
                                 worker_pid=self._pid[job.slot] or None)
            r = job.result or {}
            return JobStatus(job_id, job.plan_id, job.state, 1.0 if job.state == "DONE" else 0.0, job.error,
                             job.error_code, r.get("iterations"), r.get("value"), r.get("worker_pid"))

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        job = self.job(job_id)
        try:
            job.future.exception(timeout=timeout_s)
        except FutureTimeout:
            raise PhoenixError(E.TIMEOUT, f"job {job_id} not finished after {timeout_s:g} s "
                                          f"(state {self.status(job_id).state}); it keeps running") from None
        except CancelledError:
            pass
        status = self.status(job_id)
        if status.state in ("FAILED", "CANCELLED"):
            raise PhoenixError(status.error_code, f"job {job_id} (plan {job.plan_id}): {status.error}")
        return status

    def cancel(self, job_id: str) -> JobStatus:
        job = self.job(job_id)
        with self._lock:
            if job.state is None and not job.future.cancel():
                self._cancel[job.slot] = 1  # a running job stops at its next iteration
        if job.future.cancelled():
            self._finalise(job)
        return self.status(job_id)

    def cancel_running(self) -> None:
        """Set the cancel flag of every job not yet finalised (the caller holds the lock)."""
        for job in self._jobs.values():
            if job.state is None:
                self._cancel[job.slot] = 1

    def shutdown(self) -> None:
        """Stop the workers; queued jobs never run (call without holding the lock)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
