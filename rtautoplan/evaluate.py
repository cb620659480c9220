"""Held-out evaluation of a planner: ``rtautoplan evaluate --policy P --site S --cases N --seed K``.

Plans the phantom variants K, K+1, …, K+N−1 (held out: training uses seeds below 1000) from
initial parameters drawn by ``init`` ("random" by default, SPEC §1.12; "trivial" / "template"
where the environment has them), each in the closed loop of ``rtautoplan.loop`` with the safety
filter, and reports the seed-style table: score before and after (mean ± sd), the share reaching
the system's maximum, a histogram — printed, and written as CSV and PNG. Scores are those of the
optimised plans (before leaf sequencing), the quantity the seed papers report.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rtautoplan.loop import reached_best, run_loop
from rtautoplan.pipeline import make_env, make_policy, setup_for


@dataclass(frozen=True)
class CaseResult:
    case_seed: int
    before: float
    after: float
    best_step: int
    steps: int
    rejected: int
    reached_max: bool
    time_s: float
    higher_is_better: bool = True  # False for a loss (relative_loss): lower after is better


def evaluate(policy: str, site: str, cases: int, seed: int = 1000, modality: str = "photon", init: str = "random",
             max_steps: int | None = None, tps=None, adapter: str | None = None,
             progress: Callable[[CaseResult], None] | None = None, population: str = "v1") -> list[CaseResult]:
    """Plan ``cases`` held-out variants (seeds ``seed`` …) of phantom ``population`` with ``policy``;
    one CaseResult each."""
    setup = setup_for(site, modality, policy)
    seeds = list(range(seed, seed + cases))
    env = make_env(setup, tps=tps, adapter=adapter, max_steps=max_steps, case_seeds=seeds, population=population)
    planner = make_policy(policy, env, seed)
    results = []
    for i, case_seed in enumerate(seeds):
        start = time.perf_counter()
        loop = run_loop(env, planner, max_steps or setup.max_steps, seed=seed + i,
                        options={"case_seed": case_seed, "init": init})
        row = CaseResult(case_seed, float(loop.initial_score.total), float(loop.best_score.total), loop.best_step,
                         len({s.step for s in loop.steps}), sum(not s.accepted for s in loop.steps),
                         reached_best(loop.best_score), time.perf_counter() - start,
                         bool(getattr(loop.best_score, "higher_is_better", True)))
        results.append(row)
        if progress is not None:
            progress(row)
    return results


def summary(results: Sequence[CaseResult]) -> dict[str, float]:
    before = np.array([r.before for r in results])
    after = np.array([r.after for r in results])
    gain = (after - before) * np.array([1.0 if r.higher_is_better else -1.0 for r in results])
    return {"cases": len(results), "before_mean": float(before.mean()), "before_sd": float(before.std(ddof=1))
            if len(results) > 1 else 0.0, "after_mean": float(after.mean()),
            "after_sd": float(after.std(ddof=1)) if len(results) > 1 else 0.0,
            "reached_max_pct": 100.0 * float(np.mean([r.reached_max for r in results])),
            "improved_pct": 100.0 * float(np.mean(gain > 1e-9)),
            "worse": int(np.sum(gain < -1e-9)), "time_s_mean": float(np.mean([r.time_s for r in results]))}


def write_csv(results: Sequence[CaseResult], path: Path) -> Path:
    return write_rows([asdict(r) for r in results], path, list(asdict(results[0])))


def write_rows(rows: Sequence[dict], path: Path, fields: Sequence[str]) -> Path:
    """``rows`` as a CSV with columns ``fields`` (the folder made if needed); the evaluations' tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def histogram(results: Sequence[CaseResult], path: Path, title: str) -> Path:
    """Before/after score histograms on shared bins (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = [r.before for r in results]
    after = [r.after for r in results]
    bins = np.histogram_bin_edges(before + after, bins=min(20, max(5, len(results))))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(before, bins=bins, alpha=0.55, label="before (initial parameters)")
    ax.hist(after, bins=bins, alpha=0.55, label="after (best plan of the loop)")
    ax.set_xlabel("score")
    ax.set_ylabel("cases")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
