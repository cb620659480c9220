"""Validating off-policy evaluation on the simulator (issue 19; SPEC §5.5): the prostate environment
logged under a behaviour policy with full support, and the target policy run for real on the same cases.

``collect(out, seeds, behaviour=…)`` plans every case seed from its random initial TPPs (reset seed =
the case seed, so every policy starts from the same plan), ``draws`` times, under a behaviour policy:

* ``"previous"`` (default): the previous generation of the planner, the ACER seed the committed weights
  were fine-tuned from (``acer_prostate_seed0.pt``), sampling its π ε-soft
  (``policies.behaviour.EpsilonSoft``) — the logs a clinic running the last release would have;
* ``"rule-based"``: the rule-based planner with ε-greedy exploration (``EpsilonGreedy``).

One JSON log per episode (``episode_log``: the steps as ``plan_log.json`` holds them, μ(a|s) and the
state included). ``measure(out, seeds, …)`` runs the target (the committed ACER sampling its π,
``policies.behaviour.Sampling``) on the same cases with its own random stream and writes the same logs
under ``out/target``: their mean return is the value the estimate is judged against. ``report``
evaluates every estimator at several horizons T (the first T steps of the same runs) and both value
definitions (``ope.VALUES``).

Both run the closed loop (``loop.run_loop``) without the coverage floor (``coverage_floor=0``: a
rejection would make the executed behaviour differ from the logged μ) and stop at ψ = 9 as the
environment does. Niced, single-threaded, progress on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from rtautoplan.outputs import step_record

OPE_SEEDS = tuple(range(1000, 1050))  # held-out prostate phantoms (policies/acer_eval.py TEST_SEEDS)
PREVIOUS = "acer_prostate_seed0.pt"  # beside the committed ACER weights (``policies.acer.WEIGHTS``)


def episode_log(policy: str, case_seed: int, draw: int, loop) -> dict:
    """One logged episode: who acted, on which case, the initial score and every step."""
    return {"policy": policy, "case_seed": case_seed, "draw": draw, "init": "random",
            "initial score": float(loop.initial_score.total), "steps": [step_record(s) for s in loop.steps]}


def _draw_seed(case_seed: int, draw: int, stream: int) -> int:
    """The random stream of one episode: behaviour (0) and target (1) runs never share draws."""
    return int(np.random.SeedSequence([case_seed, draw, stream]).generate_state(1)[0])


def _run(out: Path, make_policy, name: str, seeds: Sequence[int], draws: int, horizon: int, stream: int,
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
                    policy = make_policy(env, _draw_seed(int(s), k, stream))
                    loop = run_loop(env, policy, horizon, seed=int(s), coverage_floor=0.0,
                                    options={"case_seed": int(s), "init": "random"})
                    path.write_text(json.dumps(episode_log(name, int(s), k, loop)))
                bar.advance(task)


def behaviour_policy(name: str, env, epsilon: float, seed: int):
    """The logging policy ``name`` (module docstring) on ``env``."""
    from rtautoplan.policies import acer
    from rtautoplan.policies.behaviour import EpsilonGreedy, EpsilonSoft
    from rtautoplan.policies.rule_based import RuleBased

    if name == "previous":
        return EpsilonSoft(acer.load(env, path=acer.WEIGHTS.with_name(PREVIOUS)), env, epsilon, seed)
    if name == "rule-based":
        return EpsilonGreedy(RuleBased(env), env, epsilon, seed)
    raise ValueError(f"unknown behaviour {name!r}: previous or rule-based")


def collect(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, draws: int = 4, epsilon: float = 0.1,
            horizon: int = 20, behaviour: str = "previous") -> None:
    """Behaviour logs (μ logged), ``draws`` episodes per case."""
    _run(Path(out), lambda env, seed: behaviour_policy(behaviour, env, epsilon, seed), "behaviour", seeds,
         draws, horizon, stream=0)


def measure(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, draws: int = 4, horizon: int = 20) -> None:
    """Target runs: the committed ACER sampling its π on the same cases (``out/target``)."""
    from rtautoplan.policies import acer
    from rtautoplan.policies.behaviour import Sampling

    _run(Path(out) / "target", lambda env, seed: Sampling(acer.load(env), seed), "acer", seeds, draws, horizon,
         stream=1)


def study(out: str | Path, seeds: Sequence[int] = OPE_SEEDS, behaviour_draws: int = 4, target_draws: int = 4,
          epsilon: float = 0.1, horizon: int = 20, behaviour: str = "previous") -> None:
    """``collect`` and ``measure`` case by case (an interrupted study resumes where it stopped)."""
    for s in seeds:
        collect(out, (s,), behaviour_draws, epsilon, horizon, behaviour)
        measure(out, (s,), target_draws, horizon)


def report(out: str | Path, horizons: Sequence[int] = (5, 10, 20), n_boot: int = 1000) -> list[dict]:
    """Every estimator of ACER's value and its measured value, per horizon T and value definition."""
    from rtautoplan.ope import TARGETS, VALUES, evaluate, measured, read_logs

    out = Path(out)
    n_actions, target = TARGETS["acer"]
    rows = []
    for value in VALUES:
        for horizon in horizons:
            ep = read_logs(out, n_actions, horizon, value)
            pi = target(ep)
            p_taken = np.take_along_axis(pi, ep.actions[..., None], axis=2)[..., 0]
            rho = (p_taken / ep.mu)[ep.valid]
            rows.append({"value": value, "horizon": horizon, **evaluate(ep, pi, n_actions, n_boot),
                         "measured": measured(out / "target", n_boot, horizon=horizon, value=value),
                         "median rho": round(float(np.median(rho)), 3),
                         "rho > 10": round(float(np.mean(rho > 10)), 4), "max rho": round(float(rho.max()), 2)})
    return rows


def within_share(out: str | Path, value: str, horizon: int, n: int = 300, seed: int = 0) -> dict[str, float]:
    """How often WIS, DR and the behaviour's own mean return fall within ±10 % of the measured value when
    the cases are resampled with replacement (behaviour logs and target runs together, by case): how
    much of a single study's agreement is luck."""
    from rtautoplan.ope import TARGETS, _subset, estimates, read_logs, within

    out = Path(out)
    n_actions, target = TARGETS["acer"]
    ep, runs = read_logs(out, n_actions, horizon, value), read_logs(out / "target", horizon=horizon, value=value)
    pi = target(ep)
    logged, measured = np.array(ep.case_seeds), np.array(runs.case_seeds)
    cases = np.unique(logged)
    rng = np.random.default_rng(seed)
    hits = {"WIS": 0, "DR": 0, "behaviour mean": 0}
    for _ in range(n):
        pick = rng.choice(cases, cases.size)
        b = np.concatenate([np.flatnonzero(logged == c) for c in pick])
        truth = runs.returns[np.concatenate([np.flatnonzero(measured == c) for c in pick])].mean()
        e = estimates(_subset(ep, b), pi[b], n_actions)
        hits["WIS"] += within(e["WIS"], truth)
        hits["DR"] += within(e["DR"], truth)
        hits["behaviour mean"] += within(float(ep.returns[b].mean()), truth)
    return {k: round(v / n, 3) for k, v in hits.items()}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--behaviour", choices=["previous", "rule-based"], default="previous")
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=4, help="behaviour and target episodes per case")
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--cases", type=int, default=len(OPE_SEEDS))
    a = parser.parse_args()
    study(a.out, OPE_SEEDS[:a.cases], a.draws, a.draws, a.epsilon, a.horizon, a.behaviour)
    (a.out / "report.json").write_text(json.dumps(report(a.out), indent=1))
    (a.out / "within_share.json").write_text(json.dumps(
        [{"value": v, "horizon": t, **within_share(a.out, v, t)} for v in ("kept", "return") for t in (5, 10, 20)],
        indent=1))
