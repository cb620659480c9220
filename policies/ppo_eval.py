"""Seed 002's evaluation of the PPO planner (SPEC §2.13–§2.14) on held-out H&N phantom variants.

Every case is planned by each planner in the closed loop (``rtautoplan.loop``, safety filter on, best plan
kept) from the same initial plan: the env's reset with the same seed draws the same rule-11 OAR limits and
L-BFGS gives the initial-objective plan (the paper's Plan_LBFGS). All planners run on the engine PPO was
trained on (``env_proton.PPO_ENGINE``), so only the planner differs. Per case and planner: the eq. 9
score before and after, and for every CTV its D99 (Gy) and V99 (% of the CTV receiving ≥ 99 % of its Rx)
before and after; the mean OAR Dmean change. ``table`` is the §2.14 summary. ``weights`` plans PPO with
other weights than the committed default; ``coverage_guard`` runs every planner's loop with the safety
filter's CTV D99 guard (``rtautoplan.safety``).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rtautoplan.case import Role
from rtautoplan.dvh import d_percent, v_gy
from rtautoplan.scoring.base import evaluation_mask

TEST_SEEDS = tuple(range(1000, 1020))
PLANNERS = {"ppo": 4, "rule-based": 8, "random": 4}  # planner → closed-loop steps (PPO: T = 4; rule-based: its setup's)
FIELDS = ("policy", "case_seed", "before", "after", "steps", "time_s", "ctv", "rx_gy", "d99_before", "d99_after",
          "v99_before", "v99_after", "oar_dmean_change_gy")


def coverage(gy: np.ndarray, case) -> dict[str, tuple[float, float, float]]:
    """CTV name → (Rx Gy, D99 Gy, V99 %: share of the CTV receiving ≥ 0.99·Rx)."""
    out = {}
    for s in case.by_role(Role.CTV):
        mask = evaluation_mask(s)
        if mask.any():
            out[s.name] = (float(s.rx_gy), d_percent(gy, mask, 99.0), 100.0 * v_gy(gy, mask, 0.99 * s.rx_gy))
    return out


def oar_dmean_change(before: np.ndarray, after: np.ndarray, case) -> float:
    """Mean over the case's OARs of Dmean(after) − Dmean(before) (Gy)."""
    changes = [float(after[m].mean() - before[m].mean()) for m in
               (evaluation_mask(s) for s in case.by_role(Role.OAR)) if m.any()]
    return float(np.mean(changes)) if changes else 0.0


def plan_cases(policy: str, seeds: Sequence[int] = TEST_SEEDS, max_steps: int | None = None, env=None,
               weights: Path | None = None, coverage_guard: float | None = None) -> list[dict]:
    """Rows (one per case × CTV) of ``policy`` planning ``seeds`` on the PPO engine (PPO from ``weights``
    if given; the loop's CTV D99 guard at ``coverage_guard`` · Rx if given)."""
    from rtautoplan.loop import run_loop
    from rtautoplan.pipeline import make_policy
    from rtautoplan.policies import ppo

    env = env if env is not None else ppo.make_env(seeds)
    planner = ppo.load(path=weights) if policy == "ppo" and weights is not None else make_policy(policy, env, 0)
    steps = max_steps or PLANNERS.get(policy, 4)
    rows = []
    for case_seed in seeds:
        start = time.perf_counter()
        loop = run_loop(env, planner, steps, seed=int(case_seed), options={"case_seed": int(case_seed)},
                        coverage_guard=coverage_guard)
        elapsed = time.perf_counter() - start
        before, after = loop.initial_dose.gy, loop.best_dose.gy
        cov_before, cov_after = coverage(before, env.case), coverage(after, env.case)
        oar = oar_dmean_change(before, after, env.case)
        for ctv, (rx, d99_b, v99_b) in cov_before.items():
            rows.append({"policy": policy, "case_seed": int(case_seed), "before": float(loop.initial_score.total),
                         "after": float(loop.best_score.total), "steps": loop.best_step, "time_s": elapsed,
                         "ctv": ctv, "rx_gy": rx, "d99_before": d99_b, "d99_after": cov_after[ctv][1],
                         "v99_before": v99_b, "v99_after": cov_after[ctv][2], "oar_dmean_change_gy": oar})
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    from rtautoplan.evaluate import write_rows

    return write_rows(rows, path, FIELDS)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: (v if k in ("policy", "ctv") else float(v)) for k, v in r.items()} for r in csv.DictReader(handle)]


def _cases(rows: Sequence[dict]) -> dict[float, dict]:
    """case_seed → its first row (the per-case fields) for one planner's rows."""
    out: dict[float, dict] = {}
    for r in rows:
        out.setdefault(r["case_seed"], r)
    return out


def table(rows: Sequence[dict]) -> str:
    """§2.14-style summary, one line per planner (the initial L-BFGS plan first): eq. 9 score mean ± sd,
    cases improved over the initial plan, mean CTV D99 / Rx and V99, CTVs with D99 ≥ 99 % Rx and V99 ≥
    97.5 %, mean OAR Dmean change, mean time per case."""
    header = ("| plan | cases | eq. 9 score (mean ± sd) | improved vs L-BFGS | CTV D99 / Rx (mean, min) | "
              "CTV V99 % (mean, min) | CTVs D99 ≥ 99 % Rx | CTVs V99 ≥ 97.5 % | OAR Dmean Δ (Gy) | s / case |")
    lines = [header, "|" + "---|" * 10]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    if not policies:
        return "\n".join(lines)

    def line(name, cases, scores, d99_rel, v99, oar, improved, seconds):
        return (f"| {name} | {len(cases)} | {np.mean(scores):.3f} ± {np.std(scores, ddof=1) if len(scores) > 1 else 0:.3f}"
                f" | {improved} | {np.mean(d99_rel):.3f}, {np.min(d99_rel):.3f} | {np.mean(v99):.2f}, {np.min(v99):.2f}"
                f" | {int(np.sum(d99_rel >= 0.99 - 5e-5))}/{len(d99_rel)} | {int(np.sum(v99 >= 97.5 - 5e-3))}/{len(v99)}"
                f" | {oar} | {seconds} |")

    first = [r for r in rows if r["policy"] == policies[0]]
    cases = _cases(first)
    lines.append(line("initial L-BFGS", cases, [c["before"] for c in cases.values()],
                      np.array([r["d99_before"] / r["rx_gy"] for r in first]), np.array([r["v99_before"] for r in first]),
                      "–", "–", "–"))
    for policy in policies:
        sel = [r for r in rows if r["policy"] == policy]
        cases = _cases(sel)
        improved = sum(c["after"] > c["before"] + 1e-9 for c in cases.values())
        lines.append(line(policy, cases, [c["after"] for c in cases.values()],
                          np.array([r["d99_after"] / r["rx_gy"] for r in sel]), np.array([r["v99_after"] for r in sel]),
                          f"{np.mean([c['oar_dmean_change_gy'] for c in cases.values()]):+.2f}",
                          f"{improved}/{len(cases)}", f"{np.mean([c['time_s'] for c in cases.values()]):.1f}"))
    return "\n".join(lines)


def head_to_head(rows: Sequence[dict], a: str = "ppo", b: str = "rule-based") -> str:
    """Per-case comparison of two planners' eq. 9 scores after planning."""
    ca, cb = _cases([r for r in rows if r["policy"] == a]), _cases([r for r in rows if r["policy"] == b])
    common = sorted(set(ca) & set(cb))
    if not common:
        return ""
    diff = np.array([ca[s]["after"] - cb[s]["after"] for s in common])
    return (f"{a} vs {b} on {len(common)} cases: eq. 9 score better on {int(np.sum(diff > 1e-9))}, worse on "
            f"{int(np.sum(diff < -1e-9))}; mean difference {diff.mean():+.3f} (sd {diff.std(ddof=1) if len(diff) > 1 else 0:.3f})")


def evaluate(seeds: Sequence[int] = TEST_SEEDS, planners: Sequence[str] = tuple(PLANNERS),
             csv_path: Path | None = None, progress=None, weights: Path | None = None,
             coverage_guard: float | None = None, site: str = "hn") -> list[dict]:
    """All ``planners`` on ``seeds`` of the ``site`` phantom (hn, or liver: seed 002 §2.15) in one environment
    (the same initial plans); rows, CSV if asked."""
    from rtautoplan.policies.ppo import make_env

    env, rows = make_env(seeds, site=site), []
    for policy in planners:
        rows += plan_cases(policy, seeds, env=env, weights=weights, coverage_guard=coverage_guard)
        if progress is not None:
            progress(policy)
    if csv_path is not None:
        write_csv(rows, csv_path)
    return rows
