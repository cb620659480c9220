"""Measuring conservative mode and the uncertainty flags on held-out cases (issue 19 targets).

``run(out, seeds, ks)`` plans every prostate case seed from its random initial TPPs (reset seed = case
seed) with the trained ACER planner — as is; in conservative mode with its other trained seed as the
reviewer, for every K of ``ks`` (``rtautoplan.oversight``); and, for comparison, with the rule-based
planner as the reviewer (the first design, K = 3) — its seed ensemble asked at every step, and writes
one episode log per run (``ope_study.episode_log`` plus the best ψ and the level-1 check of the kept
plan). ``run_hn(out, seeds, k)`` does the same on H&N phantoms, which have level-1 organs (spinal
cord, brainstem), with the SARSA planner: with the level-1 limits (the product), without them (what
the filter prevents), and in conservative mode. ``summary(out)``: per mode the share of cases at the
best score, level-1 rejections and violations, refusals, and how often a flagged (low-margin) step is
one a greedy planner would undo (its score does not improve) against the unflagged steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

SEEDS = tuple(range(1000, 1020))


def kept_plan_level1(case, limits, initial_gy, best_gy) -> list[str]:
    """The level-1 limits the kept plan breaks that the initial plan met, or breaks further (a planner's
    violation; ``safety.check_level1``'s rule applied to the whole run)."""
    from rtautoplan.goals import measure

    broken = []
    for goal in limits:
        before, after = measure(goal, initial_gy, case), measure(goal, best_gy, case)
        if not after.met and after.value > before.value + 1e-6:
            broken.append(f"{goal.roi} {goal.metric} {after.value:.2f} Gy (was {before.value:.2f} Gy) > {goal}")
    return broken


def _plan_all(out: Path, env, seeds, modes: dict, max_steps: int, site: str) -> None:
    """Every (case, mode) run not yet logged in ``out``: mode → (policy factory of the case seed, Oversight factory, level-1 on)."""
    from rich.progress import Progress

    from rtautoplan.goals import measure
    from rtautoplan.loop import run_loop
    from rtautoplan.ope_study import episode_log
    from rtautoplan.protocols import goals_for
    from rtautoplan.safety import level1_limits

    out.mkdir(parents=True, exist_ok=True)
    with Progress() as bar:
        task = bar.add_task(f"{site}: {', '.join(modes)}", total=len(seeds) * len(modes))
        for s in seeds:
            case = env.case_for(int(s))
            limits = level1_limits(case, goals_for(case, site))
            for mode, (policy, watch, guarded) in modes.items():
                path = out / f"{mode}_{s}.json"
                if not path.exists():
                    loop = run_loop(env, policy(int(s)), max_steps, seed=int(s), oversight=watch(),
                                    level1=limits if guarded else (), options={"case_seed": int(s)} |
                                    ({"init": "random"} if site == "prostate" else {}))
                    log = episode_log(mode, int(s), 0, loop)
                    log["best score"] = float(loop.best_score.total)
                    log["level-1 limits"] = [str(g) for g in limits]
                    log["level-1 broken by the kept plan"] = kept_plan_level1(env.case, limits, loop.initial_dose.gy,
                                                                             loop.best_dose.gy)
                    log["level-1 kept plan / limit"] = {str(g): round(measure(g, loop.best_dose.gy, env.case).value
                                                                      / g.upper, 4) for g in limits}
                    path.write_text(json.dumps(log))
                bar.advance(task)


def run(out: str | Path, seeds: Sequence[int] = SEEDS, ks: Sequence[int] = (1, 2, 3), max_steps: int = 20,
        dose_grid_factor=(2, 4, 4)) -> None:
    from rtautoplan.oversight import Oversight
    from rtautoplan.policies import acer
    from rtautoplan.policies.acer import make_env
    from rtautoplan.policies.rule_based import RuleBased

    env = make_env(seeds, dose_grid_factor, init="random", t_epi=max_steps)
    planner, members = acer.load(env), acer.ensemble(env)
    policy = lambda seed: planner  # noqa: E731 (deterministic: one object for every case)
    modes = {"acer": (policy, lambda: Oversight(ensemble=members), True),
             **{f"conservative{k}": (policy, (lambda k=k: Oversight(ensemble=members, conservative_k=k)), True)
                for k in ks},
             "rule-based reviewer3": (policy, lambda: Oversight(reference=RuleBased(env), conservative_k=3), True)}
    _plan_all(Path(out), env, seeds, modes, max_steps, "prostate")


def run_hn(out: str | Path, seeds: Sequence[int] = SEEDS[:10], k: int = 3, max_steps: int = 35) -> None:
    """SARSA (model 2, the H&N IMRT planner; no other trained seed, so the rule-based planner reviews) on
    held-out H&N phantoms from the template plan."""
    from rtautoplan.oversight import Oversight
    from rtautoplan.policies import sarsa
    from rtautoplan.policies.rule_based import RuleBased

    env = sarsa.make_env(2, seeds, max_steps=max_steps)
    planner = sarsa.load(env, model=2)
    policy = lambda seed: planner  # noqa: E731 (deterministic: one object for every case)
    modes = {"sarsa": (policy, Oversight, True), "sarsa without level-1 limits": (policy, Oversight, False),
             f"sarsa conservative{k}": (policy, (lambda: Oversight(reference=RuleBased(env), conservative_k=k)), True)}
    _plan_all(Path(out), env, seeds, modes, max_steps, "hn")


def run_proton_hn(out: str | Path, seeds: Sequence[int] = SEEDS, max_steps: int = 4) -> None:
    """The PPO planner and a random one on held-out proton H&N phantoms (their actions relax any OAR's
    objectives, the spinal cord's and brainstem's included), with and without the level-1 limits:
    what the level-1 rule catches. Continuous actions: no conservative mode."""
    from rtautoplan.oversight import Oversight
    from rtautoplan.pipeline import make_policy
    from rtautoplan.policies.ppo import make_env

    env = make_env(seeds, t_epi=max_steps)
    modes = {}
    for name in ("ppo", "random"):
        policy = lambda seed, name=name: make_policy(name, env, seed)  # noqa: E731 (paired draws per case)
        modes |= {name: (policy, Oversight, True), f"{name} without level-1 limits": (policy, Oversight, False)}
    _plan_all(Path(out), env, seeds, modes, max_steps, "hn")


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
                        "mean initial": float(np.mean([r["initial score"] for r in runs])),
                        "attempts": len(steps), "conservative refusals": sum(s["rule"] == CONSERVATIVE for s in steps),
                        "steps with a refusal": len({(r["case_seed"], s["step"]) for r in runs for s in r["steps"]
                                                     if s["rule"] == CONSERVATIVE}),
                        "loop steps": len({(r["case_seed"], s["step"]) for r in runs for s in r["steps"]}),
                        "level-1 rejections": sum(s["rule"] == LEVEL1 for s in steps),
                        "level-1 limits per case": float(np.mean([len(r.get("level-1 limits", ())) for r in runs])),
                        "kept plans breaking a level-1 limit": sum(bool(r.get("level-1 broken by the kept plan"))
                                                                   for r in runs),
                        "closest kept plan / level-1 limit": max((v for r in runs for v in
                                                                  r.get("level-1 kept plan / limit", {}).values()),
                                                                 default=None)}
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
    n = int(sys.argv[3]) if len(sys.argv) > 3 else len(SEEDS)
    if len(sys.argv) > 2 and sys.argv[2] == "hn":
        run_hn(folder, tuple(range(1000, 1000 + n)))
    elif len(sys.argv) > 2 and sys.argv[2] == "proton-hn":
        run_proton_hn(folder, tuple(range(1000, 1000 + n)))
    else:
        run(folder, tuple(range(1000, 1000 + n)))
    print(json.dumps(summary(folder), indent=1))
