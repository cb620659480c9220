"""Seed 003's evaluation of the QMIX planner (SPEC §3.8) on held-out carbon H&N phantom variants.

Every case is planned by each planner in the closed loop (``rtautoplan.loop``: safety filter on, the best
plan of the T = 10 steps kept, seed 003's reported quantity) from the same initial plan, the Table A1
midpoint objectives (x₀ = 0) on the engine QMIX was trained on (the PHOENIX-like TPS, 100 optimiser
iterations per step), so only the planner differs. The rows:

* ``template``: that initial plan kept as it is (the do-nothing planner): the class-solution template a
  dosimetrist starts from, our stand-in for seed 003's manual plans (no human re-plans these phantoms);
* ``qmix`` (greedy), ``rule-based`` and ``random``, 10 steps each.

Per case and planner: φ (Table A2) before and after, the relative score φ / φmax, every CTV's D98 / Rx,
the maximum dose outside the targets / Rx_max (the gate's rule, ``rtautoplan.gate.hotspots``) and every
Table A2 OAR metric value of the kept plan. ``table`` is the §3.8 summary; ``oar_table`` compares each
planner's OAR metrics with the template's, case by case, with the paired Wilcoxon signed-rank test (seed
003 names no test: docs/decisions.md); ``trajectory`` is the Fig. 6 curve of one case.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Role
from rtautoplan.gate import OUTSIDE_MAX, gate_regions
from rtautoplan.scoring import table_a2
from rtautoplan.scoring.base import evaluation_mask

TEST_SEEDS = tuple(range(1000, 1010))
PLANNERS = {"qmix": 10, "rule-based": 10, "random": 10, "template": 0}  # planner → closed-loop steps
D98_FLOOR = 0.95  # every CTV D98 ≥ 95 % of its Rx (issue 18's target)
FIELDS = ("policy", "case_seed", "phi_before", "phi_after", "phi_max", "relative_before", "relative_after",
          "best_step", "time_s", "d98_rel", "outside_max_rel", "oar", "trajectory")


OAR_NAMES = frozenset(r.structure for r in table_a2.ROWS if r.structure != table_a2.CTV)


def make_env(seeds: Sequence[int]):
    """The carbon H&N environment on QMIX's engine (``pipeline``'s qmix setup), phantom ``seeds``."""
    from rtautoplan import pipeline

    return pipeline.make_env(pipeline.setup_for("hn", "carbon", "qmix"), case_seeds=tuple(seeds))


def _planner(policy: str, env, weights: Path | None):
    from rtautoplan.pipeline import make_policy
    from rtautoplan.policies import do_nothing, qmix

    if policy == "qmix":
        return qmix.load(env, path=weights) if weights is not None else make_policy("qmix", env, 0)
    if policy == "template":
        return do_nothing.DoNothing(env, 0)
    return make_policy(policy, env, 0)


def measures(case, dose_gy: np.ndarray) -> tuple[dict[str, float], float, dict[str, float]]:
    """(CTV name → D98 / Rx, max outside the targets / Rx_max, "OAR metric" → value) of a dose (Gy(RBE))."""
    ctvs = [(s, evaluation_mask(s)) for s in case.by_role(Role.CTV) if s.rx_gy]
    d98 = {s.name: dvh.d98(dose_gy, mask) / s.rx_gy for s, mask in ctvs if mask.any()}
    outside, _ = gate_regions(case)
    outside_max = float(np.asarray(dose_gy).ravel()[outside].max()) if outside.size else 0.0
    score = table_a2.score(dose_gy, case)
    oar = {c.name: c.value for c in score.criteria if c.max_score is not None and c.structure in OAR_NAMES}
    return d98, outside_max / case.prescription.rx_max, oar


def plan_cases(policy: str, seeds: Sequence[int] = TEST_SEEDS, env=None, weights: Path | None = None) -> list[dict]:
    """One row per case of ``policy`` planning ``seeds`` (QMIX from ``weights`` if given)."""
    from rtautoplan.loop import run_loop

    env = env if env is not None else make_env(seeds)
    planner = _planner(policy, env, weights)
    steps = PLANNERS.get(policy, 10)
    rows = []
    for case_seed in seeds:
        start = time.perf_counter()
        loop = run_loop(env, planner, steps, seed=int(case_seed), options={"case_seed": int(case_seed)})
        elapsed = time.perf_counter() - start
        phi_max = float(loop.initial_score.maximum)
        d98, outside, oar = measures(env.case, loop.best_dose.gy)
        trajectory = [float(loop.initial_score.total)] + [float(s.score) for s in loop.steps if s.accepted]
        rows.append({"policy": policy, "case_seed": int(case_seed), "phi_before": float(loop.initial_score.total),
                     "phi_after": float(loop.best_score.total), "phi_max": phi_max,
                     "relative_before": float(loop.initial_score.total) / phi_max,
                     "relative_after": float(loop.best_score.total) / phi_max, "best_step": loop.best_step,
                     "time_s": elapsed, "d98_rel": json.dumps(d98), "outside_max_rel": outside,
                     "oar": json.dumps(oar), "trajectory": json.dumps(trajectory)})
    return rows


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    from rtautoplan.evaluate import write_rows

    return write_rows(rows, path, FIELDS)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _by(rows: Sequence[dict], policy: str) -> dict[int, dict]:
    return {int(r["case_seed"]): r for r in rows if r["policy"] == policy}


def table(rows: Sequence[dict]) -> str:
    """The §3.8 summary: relative score before and after (mean ± sd), CTV D98 and hot spots, per planner."""
    lines = ["| planner | cases | relative score before | relative score after | improved | every CTV D98 ≥ 95 % Rx "
             "| min CTV D98 / Rx | max outside targets / Rx (max) | ≤ 107 % | s / case |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for policy in PLANNERS:
        mine = list(_by(rows, policy).values())
        if not mine:
            continue
        before = np.array([float(r["relative_before"]) for r in mine]) * 100
        after = np.array([float(r["relative_after"]) for r in mine]) * 100
        d98 = [min(json.loads(r["d98_rel"]).values()) for r in mine]
        outside = [float(r["outside_max_rel"]) for r in mine]
        lines.append(f"| {policy} | {len(mine)} | {before.mean():.2f} ± {before.std(ddof=1) if len(mine) > 1 else 0:.2f} % "
                     f"| {after.mean():.2f} ± {after.std(ddof=1) if len(mine) > 1 else 0:.2f} % "
                     f"| {int(np.sum(after > before + 1e-9))}/{len(mine)} "
                     f"| {sum(d >= D98_FLOOR for d in d98)}/{len(mine)} | {min(d98):.3f} "
                     f"| {max(outside):.3f} | {sum(o <= OUTSIDE_MAX + 1e-9 for o in outside)}/{len(mine)} "
                     f"| {np.mean([float(r['time_s']) for r in mine]):.0f} |")
    return "\n".join(lines)


def oar_table(rows: Sequence[dict], policy: str = "qmix", reference: str = "template") -> str:
    """Per Table A2 OAR metric: mean (policy − reference) over the shared cases and the paired Wilcoxon
    signed-rank p value (two-sided; '–' when every difference is zero)."""
    from scipy.stats import wilcoxon

    mine, ref = _by(rows, policy), _by(rows, reference)
    seeds = sorted(set(mine) & set(ref))
    if not seeds:
        return f"(no shared cases of {policy} and {reference})"
    metrics = sorted(set.intersection(*(set(json.loads(mine[s]["oar"])) for s in seeds)))
    lines = [f"| OAR metric | {reference} (mean) | {policy} (mean) | Δ mean | p (Wilcoxon, n = {len(seeds)}) |",
             "|---|---|---|---|---|"]
    for m in metrics:
        a = np.array([json.loads(mine[s]["oar"])[m] for s in seeds])
        b = np.array([json.loads(ref[s]["oar"])[m] for s in seeds])
        diff = a - b
        p = "–" if np.allclose(diff, 0) else f"{wilcoxon(a, b).pvalue:.3f}"
        lines.append(f"| {m} | {b.mean():.2f} | {a.mean():.2f} | {diff.mean():+.2f} | {p} |")
    return "\n".join(lines)


def trajectory(rows: Sequence[dict], case_seed: int, path: Path) -> Path:
    """Fig. 6: relative score along the accepted steps of one case, one line per planner, the template dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, row in ((p, _by(rows, p).get(case_seed)) for p in PLANNERS):
        if row is None:
            continue
        phi = np.array(json.loads(row["trajectory"])) / float(row["phi_max"]) * 100
        if policy == "template":
            ax.axhline(phi[0], ls="--", color="grey", label="template (initial plan)")
        else:
            ax.plot(range(len(phi)), phi, marker="o", label=f"{policy} (best {float(row['relative_after']) * 100:.1f} %)")
    ax.set_xlabel("accepted step")
    ax.set_ylabel("relative score φ / φmax (%)")
    ax.set_title(f"carbon H&N phantom {case_seed}: QMIX trajectory (seed 003 Fig. 6)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate(seeds: Sequence[int] = TEST_SEEDS, planners: Sequence[str] = tuple(PLANNERS), csv_path: Path | None = None,
             weights: Path | None = None, progress=print) -> list[dict]:
    """Plan ``seeds`` with every planner (one environment, cases prepared once); rows already in ``csv_path``
    are kept (resumable: a planner × case done before is not planned again)."""
    rows = read_csv(csv_path) if csv_path is not None and csv_path.exists() else []
    env = make_env(seeds)
    for policy in planners:
        done = set(_by(rows, policy))
        for case_seed in seeds:
            if case_seed in done:
                continue
            rows += plan_cases(policy, (case_seed,), env=env, weights=weights)
            if csv_path is not None:
                write_csv(rows, csv_path)
            r = rows[-1]
            progress(f"{policy} case {case_seed}: φ/φmax {float(r['relative_before']):.3f} → "
                     f"{float(r['relative_after']):.3f} ({float(r['time_s']):.0f} s)")
    return rows
