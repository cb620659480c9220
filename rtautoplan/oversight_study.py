"""Measuring conservative mode and the uncertainty flags on held-out prostate cases (issue 19 targets).

``run(out, seeds, k)`` plans every case seed from its random initial TPPs (reset seed = case seed) with
the trained ACER planner twice — as is, and in conservative mode (top K shared with the rule-based
planner) — its seed ensemble asked at every step, and writes one episode log per run
(``ope_study.episode_log`` plus the best ψ). ``summary(out)``: the share of cases at ψ = 9 in each mode,
level-1 violations, rejection rates, and how often a flagged (low-margin) step is one a greedy planner
would undo (its score does not improve) against the unflagged steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

SEEDS = tuple(range(1000, 1020))


def run(out: str | Path, seeds: Sequence[int] = SEEDS, ks: Sequence[int] = (3, 6), max_steps: int = 20,
        dose_grid_factor=(2, 4, 4)) -> None:
    from rich.progress import Progress

    from rtautoplan.loop import run_loop
    from rtautoplan.ope_study import episode_log
    from rtautoplan.oversight import Oversight
    from rtautoplan.policies import acer
    from rtautoplan.policies.acer import make_env
    from rtautoplan.policies.rule_based import RuleBased

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(seeds, dose_grid_factor, init="random", t_epi=max_steps)
    policy, members = acer.load(env), acer.ensemble(env)
    modes = {"acer": lambda: Oversight(ensemble=members),
             **{f"conservative{k}": (lambda k=k: Oversight(ensemble=members, reference=RuleBased(env),
                                                           conservative_k=k)) for k in ks}}
    with Progress() as bar:
        task = bar.add_task("acer / conservative", total=len(seeds) * len(modes))
        for s in seeds:
            for mode, watch in modes.items():
                path = out / f"{mode}_{s}.json"
                if not path.exists():
                    loop = run_loop(env, policy, max_steps, seed=int(s), oversight=watch(),
                                    options={"case_seed": int(s), "init": "random"})
                    log = episode_log(mode, int(s), 0, loop)
                    log["best score"] = float(loop.best_score.total)
                    path.write_text(json.dumps(log))
                bar.advance(task)


def summary(out: str | Path) -> dict:
    """Per mode: cases, share at ψ = 9, rejection rate, level-1 rejections; flagged-step relation."""
    from rtautoplan.safety import CONSERVATIVE, LEVEL1

    logs: dict[str, list[dict]] = {}
    for path in sorted(Path(out).glob("*.json")):
        log = json.loads(path.read_text())
        logs.setdefault(log["policy"], []).append(log)
    result = {}
    for mode, runs in logs.items():
        steps = [s for r in runs for s in r["steps"]]
        result[mode] = {"cases": len(runs), "at 9": float(np.mean([r["best score"] >= 9.0 - 1e-9 for r in runs])),
                        "mean best": float(np.mean([r["best score"] for r in runs])),
                        "attempts": len(steps), "conservative refusals": sum(s["rule"] == CONSERVATIVE for s in steps),
                        "level-1 rejections": sum(s["rule"] == LEVEL1 for s in steps)}
    undone, margins, flags = [], [], []
    for r in logs.get("acer", []):
        previous = r["initial score"]
        for s in (s for s in r["steps"] if s["accepted"]):
            undone.append(s["score"] <= previous + 1e-9)  # a greedy planner would undo it
            margins.append(s["uncertainty"].get("margin") or 0.0)
            flags.append(s["uncertainty"].get("flags", []))
            previous = s["score"]
    undone, margins = np.array(undone, bool), np.array(margins)
    relation = {"steps": int(undone.size), "not improving": float(undone.mean()) if undone.size else None,
                "mean margin, not improving": float(margins[undone].mean()) if undone.any() else None,
                "mean margin, improving": float(margins[~undone].mean()) if (~undone).any() else None}
    for flag in ("low margin", "ensemble disagrees"):
        hit = np.array([flag in f for f in flags], bool)
        relation[flag] = {"steps": int(hit.sum()),
                          "not improving when flagged": float(undone[hit].mean()) if hit.any() else None,
                          "not improving when not": float(undone[~hit].mean()) if (~hit).any() else None}
    result["flags vs greedy undo"] = relation
    return result


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/oversight_prostate")
    run(folder)
    print(json.dumps(summary(folder), indent=1))
