"""What runs in a pool worker process: one optimisation job of a plan.

A worker loads a plan geometry's files from the server's store (the dose influence matrices and
the ROI objective points, content-addressed) the first time a job uses them and keeps them
(``_WORKER_CACHE``, the last ``_WORKER_CACHE_SIZE`` geometries), so a job's message is small:
file names, the objective catalogue, the warm-start weights. Job progress and cancellation go
through the shared-memory slots (``multiprocessing.RawArray``) that ``init_worker`` receives when
the worker starts. ``init_worker`` and ``run_job`` stay at module top level: the pool refers to
them by name.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import threadpoolctl

from rtautoplan.adapters.phoenix_api import engine

_WORKER_CACHE_SIZE = 4
_SHARED: dict = {}
_WORKER_CACHE: dict = {}


def init_worker(progress, started, cancel, pid=None) -> None:
    # One BLAS thread per worker: the pool already runs one job per core, and a forked worker would
    # otherwise keep the parent's BLAS thread count and oversubscribe the CPUs (4 jobs on 2 cores
    # then run slower in parallel than one after another).
    threadpoolctl.threadpool_limits(1)
    _SHARED.update(progress=progress, started=started, cancel=cancel, pid=pid)


def _worker_data(influence_path: str, rois_path: str):
    key = (influence_path, rois_path)
    if key not in _WORKER_CACHE:
        try:
            influence = engine.Influence.load(Path(influence_path))
            with open(rois_path, "rb") as f:
                rois = pickle.load(f)
        except Exception as error:  # noqa: BLE001 - reported as the job's failure
            raise RuntimeError(f"dose engine data missing or corrupt ({Path(influence_path).name}): "
                               f"{type(error).__name__}: {error}") from None
        while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = (influence, rois, {})
    return _WORKER_CACHE[key]


def run_job(slot: int, job: dict) -> dict:
    """Optimise one plan in a worker; returns weights and the dose-grid products D·w, H·w."""
    progress, started, cancel = _SHARED.get("progress"), _SHARED.get("started"), _SHARED.get("cancel")
    if _SHARED.get("pid") is not None:
        _SHARED["pid"][slot] = os.getpid()
    if started is not None:
        started[slot] = 1
    if cancel is not None and cancel[slot]:
        raise engine.Cancelled()
    influence, rois, roi_cache = _worker_data(job["influence"], job["rois"])
    problem = engine.Problem(influence, rois, job["terms"], job["fractions"], job["rx_gy"], roi_cache)
    x0 = job["x0"]
    if x0 is None or len(x0) != influence.d.shape[1]:
        x0 = engine.initial_weights(influence, rois[job["target"]], job["fractions"], job["rx_gy"])

    def report(fraction):
        if progress is not None:
            progress[slot] = fraction

    out = engine.optimise(problem, x0, job["max_iterations"], job["tolerance"], report,
                          (lambda: bool(cancel[slot])) if cancel is not None else None)
    x = out["x"]
    out["dw"] = (influence.d @ x).astype(np.float32)
    out["hw"] = (influence.h @ x).astype(np.float32)
    out["term_values"] = problem.values(x)
    return out
