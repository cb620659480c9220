"""How high ψ can go on a prostate case, whoever plans it (issue 16): a bound and a search.

* ``geometric_floor(case)``: lower bounds (%) on the organ criteria that no plan of the prostate
  environment can beat. The environment scales every dose to PTV D95 = Rx (``env_prostate``), so
  ≥ 95 % of the PTV gets ≥ Rx and an organ's Vx% with x ≤ 100 holds at least its PTV overlap minus
  5 % of the PTV volume: V_x ≥ 100 · (|organ ∩ PTV| − 0.05 |PTV|) / |organ|. A criterion whose floor
  is at or above its threshold fails for every planner, on any engine.
* ``beam_search(env, case_seed)``: the best ψ a short beam search over the environment's own
  actions reaches within ``depth`` steps (an oracle with the planners' action set and engine, not a
  proof of the optimum). Nodes are TPPs; each keeps its ψ and, to rank ties of the binary ψ, the
  partial-credit ψ of a wide band (``TIE_BAND``); the ``width`` best new TPPs of a depth are
  expanded by every action that moves a TPP. Every plan is optimised from scratch (the ACER
  engine's cold start), so a TPP's score does not depend on the path to it and each is planned once.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass

import numpy as np

from rtautoplan.case import Case, Role
from rtautoplan.scoring import proknow9
from rtautoplan.scoring.base import primary

TIE_BAND = 1.0  # partial-credit band (× threshold) of the tie-break: credit until twice each threshold
D95_FRACTION = 0.05  # the PTV share allowed below Rx by the environment's D95 = Rx normalisation


@dataclass(frozen=True)
class Floor:
    """One organ criterion's geometric lower bound: ``floor`` (% of the organ) against ``threshold`` (%)."""

    name: str
    floor: float
    threshold: float

    @property
    def unreachable(self) -> bool:
        return bool(self.floor >= self.threshold)


def geometric_floor(case: Case) -> tuple[Floor, ...]:
    """The floors of the Vx% organ criteria with x ≤ 100 (module docstring) on ``case`` (prepared or not)."""
    ptv = primary(case, Role.PTV).mask.to_full()
    floors = []
    for row in proknow9.CRITERIA:
        if row.metric != "V" or row.x > 100.0:
            continue
        organ = case.structure(row.structure).mask.to_full()
        inside = float(np.count_nonzero(organ & ptv))
        floor = 100.0 * max(0.0, inside - D95_FRACTION * np.count_nonzero(ptv)) / np.count_nonzero(organ)
        floors.append(Floor(f"{row.structure} {row.label}", float(floor), row.threshold))
    return tuple(floors)


@dataclass(frozen=True)
class SearchResult:
    """The best plan a beam search found: ψ, its TPPs, the actions from the start, what still fails."""

    case_seed: int
    init: str
    start_psi: float
    best_psi: float
    best_tie: float
    actions: tuple[str, ...]
    parameters: dict
    failed: tuple[str, ...]
    plans: int
    wall_s: float


def _key(env) -> tuple[float, float]:
    psi = float(env.last_score.total)
    tie = float(proknow9.score(env.last_dose.gy, env.case, partial=True, band=TIE_BAND).total)
    return psi, tie


def beam_search(env, case_seed: int, init: str = "trivial", depth: int = 20, width: int = 3,
                max_plans: int | None = None, progress=None) -> SearchResult:
    """Beam search (module docstring) on ``env`` (a ``ProstateEnv`` holding ``case_seed``) from its
    ``init`` TPPs; stops at ψ = maximum, after ``depth`` steps, or after ``max_plans`` optimisations.
    ``progress(depth, best ψ, plans)`` is called after each depth."""
    start = time.perf_counter()
    env.reset(seed=int(case_seed), options={"case_seed": int(case_seed), "init": init})
    maximum = float(env.last_score.maximum)
    root = (_key(env), (), env.snapshot(), env.last_score)
    best, seen, plans = root, {tuple(env.parameters.values())}, 0
    beam = [root]
    for level in range(depth):
        children = []
        for _, path, snapshot, _ in beam:
            for a in range(int(env.action_space.n)):
                env.restore(snapshot)
                params = tuple(env.preview(a).values())
                if params in seen or (max_plans is not None and plans >= max_plans):
                    continue
                seen.add(params)
                env.step(a)
                plans += 1
                node = (_key(env), path + (env.describe_action(a),), env.snapshot(), env.last_score)
                children.append(node)
                if node[0] > best[0]:
                    best = node
            if best[0][0] >= maximum:
                break
        if progress is not None:
            progress(level + 1, best[0][0], plans)
        if best[0][0] >= maximum or not children:
            break
        beam = sorted(children, key=lambda n: n[0], reverse=True)[:width]
    env.restore(best[2])
    failed = tuple(c.name for c in best[3].criteria if c.passed is False)
    return SearchResult(int(case_seed), init, float(root[0][0]), best[0][0], best[0][1], best[1], dict(env.parameters),
                        failed, plans, time.perf_counter() - start)


CSV = Path(__file__).resolve().parents[1] / "docs" / "results" / "acer_oracle.csv"
FIELDS = ("case_seed", "init", "start_psi", "best_psi", "actions", "failed", "plans", "width", "max_plans",
          "rectum_floor_pct", "bladder_floor_pct", "unreachable", "wall_s")


def row(result: SearchResult, floors: tuple[Floor, ...], width: int, max_plans: int | None) -> dict:
    """One CSV row: the search's result, the V94.3% floors of both organs, the criteria no plan can pass."""
    floor = {f.name.split()[0]: f.floor for f in floors if f.name.endswith("V94.3%")}
    return {"case_seed": result.case_seed, "init": result.init, "start_psi": result.start_psi,
            "best_psi": result.best_psi, "actions": " ".join(result.actions), "failed": "; ".join(result.failed),
            "plans": result.plans, "width": width, "max_plans": "" if max_plans is None else max_plans,
            "rectum_floor_pct": round(floor["Rectum"], 2), "bladder_floor_pct": round(floor["Bladder"], 2),
            "unreachable": "; ".join(f.name for f in floors if f.unreachable), "wall_s": round(result.wall_s, 1)}


def main(argv=None) -> None:
    """``python -m rtautoplan.policies.oracle SEED … [--width 2] [--max-plans 120]``: search each prostate
    v2 case from its trivial TPPs on the ACER engine; rows appended to ``docs/results/acer_oracle.csv``."""
    import argparse
    import csv

    from rtautoplan.policies.acer import make_env

    parser = argparse.ArgumentParser(prog="python -m rtautoplan.policies.oracle", description=main.__doc__)
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--max-plans", type=int, default=120)
    parser.add_argument("--population", default="v2")
    parser.add_argument("--csv", type=Path, default=CSV)
    args = parser.parse_args(argv)
    env = make_env(args.seeds, (1, 2, 2), population=args.population)
    for seed in args.seeds:
        result = beam_search(env, seed, depth=args.depth, width=args.width, max_plans=args.max_plans,
                             progress=lambda d, p, n: print(f"seed {seed} depth {d}: best ψ {p:g}, {n} plans", flush=True))
        fresh = not args.csv.exists()
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            if fresh:
                writer.writeheader()
            writer.writerow(row(result, geometric_floor(env.case), args.width, args.max_plans))


if __name__ == "__main__":
    main()
