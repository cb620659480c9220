"""Issue 17 item 5: ``rtautoplan plan sample_data/hn01 --modality proton`` with the default planner (PPO on its
engine, CTV D99 guard) against ``--policy rule-based`` (the previous default: the proton setup's engine, 8 steps),
measured in the same run, and the part of each that is the dose-influence matrix. Each plan starts from an empty
dose-influence cache (``$RTAUTOPLAN_CACHE`` a fresh folder: a new patient), and is then planned again with the
cache it filled (a re-plan of the same patient).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_proton_default.py [--case DIR] [--write]

Each plan runs as the command in a fresh process (wall time of the whole command, the CLI's own total, the gate
verdict and score from plan_log.json); the dose influence of each setup's engine is timed in another fresh
process (``tps.prepare`` on the case after the structure rules, no cache). Single-threaded; the load average is
reported beside the times (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, load_average, machine, write_results

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "TORCH_NUM_THREADS": "1"}
HEADING = "## Proton H&N default: PPO against rule-based on hn01 (issue 17, s4-ppo)"
PLANNERS = {"ppo (default)": [], "rule-based": ["--policy", "rule-based"]}
DIJ_SNIPPET = """
import sys, time
from rtautoplan.dicom.read import read_case
from rtautoplan.pipeline import prepare
planning = prepare(read_case(sys.argv[1]), "hn", "proton", policy=sys.argv[2])
start = time.perf_counter()
planning.env.tps.prepare(planning.planned)
print(time.perf_counter() - start, planning.env.tps.dij.n_beamlets)
"""


def rtautoplan() -> str:
    return str(Path(sys.executable).with_name("rtautoplan"))


def plan(case: Path, extra: list[str], out: Path, cache: Path) -> dict:
    """Wall time of the command (dose-influence cache ``cache``), the CLI's total, its gate verdict, score, steps."""
    start = time.perf_counter()
    run = subprocess.run([rtautoplan(), "plan", str(case), "--modality", "proton", "-o", str(out), *extra],
                         capture_output=True, text=True, env={**os.environ, **THREADS, "RTAUTOPLAN_CACHE": str(cache)})
    wall = time.perf_counter() - start
    if run.returncode not in (0, 3):
        raise SystemExit(f"plan {extra} failed ({run.returncode}): {run.stderr[-2000:]}")
    log = json.loads((out / "plan_log.json").read_text())
    total = re.search(r"steps, ([0-9.]+) s\)", run.stdout)
    return {"wall": wall, "cli": float(total.group(1)) if total else float("nan"), "acceptable": log["acceptable"],
            "log": log}


def dose_influence(case: Path, policy: str, cache: Path) -> tuple[float, int]:
    run = subprocess.run([sys.executable, "-c", DIJ_SNIPPET, str(case), policy], capture_output=True, text=True,
                         env={**os.environ, **THREADS, "RTAUTOPLAN_CACHE": str(cache)}, check=True)
    seconds, spots = run.stdout.split()[-2:]
    return float(seconds), int(spots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", type=Path, default=ROOT / "sample_data" / "hn01")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in PLANNERS.items():
            key = name.split()[0]
            cold = plan(args.case, extra, Path(tmp) / key / "cold", Path(tmp) / key / "cache")
            warm = plan(args.case, extra, Path(tmp) / key / "warm", Path(tmp) / key / "cache")
            dij, spots = dose_influence(args.case, key, Path(tmp) / key / "dij-cache")
            rows.append((name, cold, warm, dij, spots, cold["log"]))
            print(f"{name}: {cold['wall']:.1f} s wall (cached dose influence: {warm['wall']:.1f} s), dose influence "
                  f"{dij:.1f} s ({spots} spots)", flush=True)
    ppo, rule = rows[0][1]["wall"], rows[1][1]["wall"]
    lines = [HEADING, "", f"`python benchmarks/bench_proton_default.py` ({args.case.name}; "
             f"{', '.join(f'{k} {v}' for k, v in machine().items())}; load before {load_before}, after {load_average()})."
             " Wall = the whole `rtautoplan plan … --modality proton` command in a fresh process, from an empty "
             "dose-influence cache (new patient) and again with it filled (re-plan); dose influence = `tps.prepare` of "
             "the setup's engine in another fresh process, empty cache.", "",
             "| planner | wall, new patient (s) | wall, re-plan (s) | dose influence (s) | spots | gate | "
             "score (initial → final) | best step |", "|---|---|---|---|---|---|---|---|"]
    for name, cold, warm, dij, spots, log in rows:
        lines.append(f"| {name} | {cold['wall']:.1f} | {warm['wall']:.1f} | {dij:.1f} | {spots} | "
                     f"{'ACCEPTABLE' if cold['acceptable'] else 'not acceptable'} | "
                     f"{log['initial score']:.3f} → {log['final score']:.3f} | {log['best step']} |")
    lines += ["", f"Ratio rule-based / PPO wall time: {rule / ppo:.2f} (new patient), "
              f"{rows[1][2]['wall'] / rows[0][2]['wall']:.2f} (re-plan)."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
