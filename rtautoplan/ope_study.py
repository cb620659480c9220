"""Validating off-policy evaluation on the simulator (issue 19; SPEC §5.5): the prostate environment
logged under a behaviour policy with full support, and the target policy run for real on the same cases.

``collect(out, seeds, …)`` plans every case seed from its random initial TPPs (reset seed = the case
seed, so every policy starts from the same plan), ``draws`` times, with the rule-based planner under
ε-exploration (``policies.behaviour.EpsilonGreedy``): one JSON log per episode (``episode_log``: the
steps as ``plan_log.json`` holds them, μ(a|s) and the state included). ``measure(out, seeds, …)`` runs
the target (ACER sampling its π, ``policies.behaviour.Sampling``) on the same cases and writes the same
logs under ``out/target``: their mean return is the value the estimate is judged against.

Both run the closed loop (``loop.run_loop``) without the coverage floor (``coverage_floor=0``: a
rejection would make the executed behaviour differ from the logged μ) and stop at ψ = 9 as the
environment does. Niced, single-threaded, progress on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rtautoplan.outputs import step_record

OPE_SEEDS = tuple(range(1000, 1050))  # held-out prostate phantoms (policies/acer_eval.py TEST_SEEDS)


def episode_log(policy: str, case_seed: int, draw: int, loop) -> dict:
    """One logged episode: who acted, on which case, the initial score and every step."""
    return {"policy": policy, "case_seed": case_seed, "draw": draw, "init": "random",
            "initial score": float(loop.initial_score.total), "steps": [step_record(s) for s in loop.steps]}


def _run(out: Path, make_policy, name: str, seeds: Sequence[int], draws: int, horizon: int,
         dose_grid_factor=(2, 4, 4)) -> None:
    from rich.progress import Progress

    from rtautoplan.loop import run_loop
    from rtautoplan.policies.acer import make_env

    env = make_env(seeds, dose_grid_factor, init="random", t_epi=horizon)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(transient=False) as bar:
        task = bar.add_task(name, total=len(seeds) * draws)
        for s in seeds:
            for k in range(draws):
                path = out / f"{name}_{s}_{k}.json"
                if not path.exists():
                    policy = make_policy(env, 7919 * s + k)
                    loop = run_loop(env, policy, horizon, seed=int(s), coverage_floor=0.0,
                                    options={"case_seed": int(s), "init": "random"})
                    path.write_text(json.dumps(episode_log(name, int(s), k, loop)))
                bar.advance(task)


def collect(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, draws: int = 4, epsilon: float = 0.5,
            horizon: int = 5) -> None:
    """Behaviour logs: the rule-based planner with ε-exploration (μ logged), ``draws`` episodes per case."""
    from rtautoplan.policies.behaviour import EpsilonGreedy
    from rtautoplan.policies.rule_based import RuleBased

    _run(Path(out), lambda env, seed: EpsilonGreedy(RuleBased(env), env, epsilon, seed), "behaviour", seeds,
         draws, horizon)


def measure(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, draws: int = 4, horizon: int = 5) -> None:
    """Target runs: ACER sampling its π on the same cases (``out/target``)."""
    from rtautoplan.policies import acer
    from rtautoplan.policies.behaviour import Sampling

    _run(Path(out) / "target", lambda env, seed: Sampling(acer.load(env), seed), "acer", seeds, draws, horizon)


def study(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, behaviour_draws: int = 2, target_draws: int = 1,
          epsilon: float = 0.5, horizon: int = 5) -> None:
    """``collect`` and ``measure`` case by case (an interrupted study resumes where it stopped)."""
    for s in seeds:
        collect(out, (s,), behaviour_draws, epsilon, horizon)
        measure(out, (s,), target_draws, horizon)


if __name__ == "__main__":
    import sys

    study(Path(sys.argv[1] if len(sys.argv) > 1 else "out/ope_prostate"))
