"""Helpers shared by the benchmark scripts: machine description, RESULTS.md sections, timing, formatting."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else ``platform.processor()``."""
    cpu = platform.processor() or "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    return cpu


def load_average() -> str:
    """The 1, 5 and 15 min load averages, e.g. ``"1.2 / 0.9 / 0.7"``."""
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def machine(**extra: str) -> dict[str, str]:
    """CPU count and model, Python, numpy and scipy versions, load average and date, plus ``extra``."""
    import scipy

    return {"nproc": str(os.cpu_count()), "cpu": cpu_name(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "load": load_average(),
            "date": _dt.date.today().isoformat(), **extra}


def write_results(text: str, path: Path = RESULTS) -> None:
    """Replace the section of RESULTS.md headed by the first line of ``text`` ("## …", up to the next
    "## "), or append it."""
    heading = text.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a RESULTS.md section starts with '## ', not {heading!r}")
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def best_of(fn, repeat: int, warmup: bool = False):
    """Run ``fn`` ``repeat`` times (after one untimed call if ``warmup``): (fastest seconds, last result)."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


class Trace:
    """Wraps f: records (seconds since start, value) of every evaluation; stops at a target."""

    def __init__(self, f, target=None, budget=None):
        self.f, self.target, self.budget = f, target, budget
        self.t, self.v = [], []
        self.start = time.perf_counter()

    def __call__(self, x):
        value, grad = self.f(x)
        self.t.append(time.perf_counter() - self.start)
        self.v.append(float(value))
        return value, grad

    def done(self):
        """The target is reached or the budget (seconds) spent."""
        if self.target is not None and self.v and min(self.v) <= self.target:
            return True
        return self.budget is not None and self.t and self.t[-1] > self.budget

    def time_to(self, target):
        """(seconds, evaluations) at the first evaluation with f ≤ target, or (None, all evaluations)."""
        hit = np.flatnonzero(np.asarray(self.v) <= target)
        return (float(self.t[hit[0]]), int(hit[0]) + 1) if hit.size else (None, len(self.v))


def fmt(t):
    """Seconds: "—" for None, 2 decimals below 100, none above."""
    return "—" if t is None else (f"{t:.2f}" if t < 100 else f"{t:.0f}")


def ratio(slow, fast, spent=None):
    """``slow / fast`` as "3.1×"; "> …×" from ``spent`` when the slow run did not finish (None)."""
    if fast is None:
        return "—"
    if slow is None:
        return f"> {spent / fast:.1f}×" if spent else "—"
    return f"{slow / fast:.1f}×"
