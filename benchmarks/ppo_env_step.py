"""Cost of one step of seed 002's environment: the PPO engine (``env_proton.PPO_ENGINE``) against the
proton setup's default engine (``InHouseProton()``: 3 beams, 5 mm spots, standard grid, 200 iterations),
same cases, same actions, measured in the same run; prints a Markdown table with the ratio.

    OMP_NUM_THREADS=1 RTAUTOPLAN_THREADS=1 nice -n 10 .venv/bin/python benchmarks/ppo_env_step.py --cases 1000 1001
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def measure(engine: dict | None, seeds, steps: int) -> dict:
    """Mean reset and step wall time (s), mean TPS time per step (optimise + score), spots, CTV D99/Rx."""
    from rtautoplan.adapters.inhouse_proton import InHouseProton
    from rtautoplan.policies.env_proton import ProtonHNEnv
    from rtautoplan.policies.ppo_eval import coverage

    env = ProtonHNEnv(InHouseProton(**(engine or {})), case_seeds=tuple(seeds))
    action = np.tile([0.2, -0.2], env.k).astype(np.float32)
    resets, walls, tps, d99 = [], [], [], []
    for seed in seeds:
        env.reset(seed=0, options={"case_seed": seed})  # the first reset builds (or loads) the dose matrix
        start = time.perf_counter()
        env.reset(seed=0, options={"case_seed": seed})
        resets.append(time.perf_counter() - start)
        for _ in range(steps):
            start = time.perf_counter()
            env.step(action)
            walls.append(time.perf_counter() - start)
            tps.append(env.last_step_s)
        d99 += [d / rx for rx, d, _ in coverage(env.last_dose.gy, env.case).values()]
    return {"reset": float(np.mean(resets)), "step": float(np.mean(walls)), "tps": float(np.mean(tps)),
            "spots": env.tps.dij.n_beamlets, "d99": float(np.min(d99))}


def main() -> None:
    from rtautoplan.policies.env_proton import PPO_ENGINE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[1000, 1001])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    rows = {"PPO engine": measure(PPO_ENGINE, args.cases, args.steps),
            "default engine": measure(None, args.cases, args.steps)}
    base = rows["default engine"]["step"]
    load = os.getloadavg()
    print(f"H&N phantom seeds {args.cases}, {args.steps} steps each, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("| engine | spots | reset (s) | step (s) | TPS part (s) | step / default | min CTV D99 / Rx after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['spots']} | {r['reset']:.2f} | {r['step']:.2f} | {r['tps']:.2f} | "
              f"{r['step'] / base:.3f} | {r['d99']:.3f} |")


if __name__ == "__main__":
    main()
