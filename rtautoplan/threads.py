"""How many threads the engine uses, and the thread pools it runs them on.

``engine_threads()`` is ``$RTAUTOPLAN_THREADS`` when set (training, the benchmarks and the Ray workers set 1
per process), else every CPU this process may use: a clinic's machine plans with all its cores. Threads help
only where the work releases the GIL (numba ``nogil`` kernels, large numpy / scipy array operations); every
parallel stage cuts its work so that the result does not depend on the number of threads unless its docstring
says otherwise.

Each kind of work has its own pool (``pool(n, name)``): a task of one pool may wait on another pool's tasks
(a beam of the dose influence whose depths are traced in slabs) without taking the threads it waits for.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[tuple[str, int], ThreadPoolExecutor] = {}


def engine_threads() -> int:
    """Threads of the engine: ``$RTAUTOPLAN_THREADS``, else the CPUs this process may use."""
    env = os.environ.get("RTAUTOPLAN_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pool(n: int, name: str = "spmv") -> ThreadPoolExecutor:
    """The process's pool of ``n`` threads for work of kind ``name`` (created on first use, then kept)."""
    key = (name, int(n))
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(int(n), thread_name_prefix=f"rtautoplan-{name}")
    return _POOLS[key]


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None, name: str = "stage") -> Iterator[R]:
    """``map(fn, items)`` on up to ``threads`` threads (default :func:`engine_threads`), yielded in order, with at
    most ``threads`` results computed ahead of the consumer (so memory holds about ``threads`` results, not
    all). One thread: a plain loop in the caller's thread."""
    n = engine_threads() if threads is None else max(1, int(threads))
    if n == 1:
        yield from map(fn, items)
        return
    executor, pending = pool(n, name), deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= n:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def slabs(n: int, threads: int | None = None) -> list[slice]:
    """``range(n)`` cut into about 4 slabs per thread (slices in order; one slab for one thread)."""
    t = engine_threads() if threads is None else max(1, int(threads))
    edges = sorted(set(int(e) for e in [i * n // (4 * t) for i in range(4 * t)] + [n])) if t > 1 else [0, n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def for_each(fn: Callable[[T], object], items: Iterable[T], threads: int | None = None, name: str = "stage") -> None:
    """``fn(item)`` for every item, on up to ``threads`` threads; returns when all are done (re-raising the first
    error). For work whose items write disjoint parts of one output."""
    for _ in ordered_map(fn, items, threads, name):
        pass
