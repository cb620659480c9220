"""PHOENIX server benchmark (issue 18): several clients optimising in parallel on the server's worker pool.

    nice -n 10 python benchmarks/bench_phoenix_server.py [--workers 2] [--clients 2] [--jobs 3]
                                                         [--iterations 150] [--rounds 2] [--no-results]

The TPS runs as its own process (``rtautoplan phoenix-server --port 0 --workers W``, started here);
each client is a thread with its own HTTP session and its own plan of ``sample_data/hn01`` (as the
carbon environment prepares it: every CTV level, the 1 mm crop, the Gap NTOs; Table A1's objectives at
their midpoints). A client's job: set one OAR limit, submit ``--iterations`` iterations with
``tolerance=0`` (equal work per job), wait (long-poll), fetch the RBE-weighted dose over the wire.

* **serial**: the clients one after another, each running its ``--jobs`` jobs;
* **parallel**: every client at once, the same jobs.

The speed-up is serial / parallel time per optimiser iteration, best of ``--rounds`` pairs, after one
warm-up job per client (workers load the dose influence once). Control in the same run: 2 forked
pure-Python processes against 1 (2.0× on two idle cores): what the machine could give two processes
right then. The load average is printed and written. The section "## PHOENIX server (issue 18)" of
benchmarks/RESULTS.md is replaced.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import numpy as np

from rtautoplan.adapters.phoenix import spot_targets
from rtautoplan.adapters.phoenix_api.client import LocalServerProcess
from rtautoplan.dicom.read import read_case
from rtautoplan.policies import env_carbon as C

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

HN01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"


def _spin(n: int = 4_000_000) -> None:
    s = 0
    for i in range(n):
        s += i * i


def control() -> float:
    """Speed-up of 2 forked pure-Python processes over 1."""
    ctx = multiprocessing.get_context("fork")
    times = []
    for n in (1, 2):
        t = time.perf_counter()
        procs = [ctx.Process(target=_spin) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        times.append(time.perf_counter() - t)
    return 2.0 * times[0] / times[1]


class Client:
    """One HTTP session and one plan of ``case`` with Table A1's objectives."""

    def __init__(self, server, case, name: str):
        self.s = server.connect(name)
        uid = self.s.import_patient(case)
        self.plan = self.s.create_plan(uid, name, prescription_gy=case.prescription.rx_max,
                                       fractions=case.prescription.fractions, target_roi=spot_targets(case))
        self.limits = []
        for o in C.objectives(np.zeros(len(C.PARAMETERS), int), case):
            typ = {"DMAX": "Max", "DMIN": "Min", "UNIFORM": "Uniform", "DVH_MIN": "DVHmin"}[o.kind.name]
            params = ({"Dose": o.dose_gy, "Volume": 100 * o.volume, "weight": o.weight} if typ == "DVHmin"
                      else {"obj_value": o.dose_gy, "weight": o.weight})
            obj = self.s.add_objective(self.plan, o.structure, typ, **params)
            if o.adjustable:
                self.limits.append((obj, o.dose_gy))
        self.rng = np.random.default_rng(abs(hash(name)) % 2**32)
        self.iterations = 0

    def job(self, iterations: int) -> None:
        obj, dose = self.limits[self.rng.integers(len(self.limits))]
        self.s.set_objective_parameter(obj, "obj_value", dose * self.rng.uniform(0.8, 1.2))
        status = self.s.wait(self.s.submit_optimization(self.plan, iterations, tolerance=0), timeout_s=3600)
        self.iterations += status.iterations
        self.s.get_dose(self.plan)

    def run(self, jobs: int, iterations: int) -> None:
        for _ in range(jobs):
            self.job(iterations)


def timed(clients, jobs: int, iterations: int, parallel: bool) -> tuple[float, int]:
    """(wall seconds, optimiser iterations) of every client's jobs, one client after another or all at once."""
    for c in clients:
        c.iterations = 0
    t = time.perf_counter()
    if parallel:
        threads = [threading.Thread(target=c.run, args=(jobs, iterations)) for c in clients]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        for c in clients:
            c.run(jobs, iterations)
    return time.perf_counter() - t, sum(c.iterations for c in clients)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=3, help="jobs per client per timing")
    ap.add_argument("--iterations", type=int, default=150, help="optimiser iterations per job (tolerance 0)")
    ap.add_argument("--rounds", type=int, default=2, help="serial/parallel pairs; the best of each is kept")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    env = C.CarbonHNEnv(lambda: None, case=read_case(HN01))
    case = env._cases.get(None)
    info = machine()
    controls = [control()]
    t0 = time.perf_counter()
    with LocalServerProcess(workers=args.workers) as server:
        start_s = time.perf_counter() - t0
        clients = [Client(server, case, f"client{i}") for i in range(args.clients)]
        timed(clients, 1, 5, parallel=True)  # warm-up: every worker loads the dose influence
        serial, parallel = [], []
        for r in range(args.rounds):
            serial.append(timed(clients, args.jobs, args.iterations, parallel=False))
            parallel.append(timed(clients, args.jobs, args.iterations, parallel=True))
            print(f"round {r + 1}: serial {serial[-1][0]:.1f} s ({serial[-1][1]} it), "
                  f"parallel {parallel[-1][0]:.1f} s ({parallel[-1][1]} it)", flush=True)
        spots = sum(server.connect("info").plan_info(clients[0].plan).n_spots)
    controls.append(control())
    per_it_serial = min(t / n for t, n in serial)
    per_it_parallel = min(t / n for t, n in parallel)
    speedup = per_it_serial / per_it_parallel
    load = info["load"] + " → " + machine()["load"]
    lines = [
        "## PHOENIX server (issue 18)",
        "",
        f"`nice -n 10 python benchmarks/bench_phoenix_server.py --workers {args.workers} --clients {args.clients} "
        f"--jobs {args.jobs} --iterations {args.iterations} --rounds {args.rounds}` on {info['nproc']} × "
        f"{info['cpu']}, {info['date']}, load average (1/5/15 min) {load}. The TPS is its own process "
        f"(`rtautoplan phoenix-server`, {args.workers} worker processes, started in {start_s:.1f} s); "
        f"each client an HTTP session with its own plan of hn01 (3 CTV levels, {spots} spots, Table A1's "
        f"objectives at their midpoints); a job sets one OAR limit, runs {args.iterations} L-BFGS-B "
        f"iterations (tolerance 0), waits and fetches the RBE-weighted dose over the wire.",
        "",
        "| | wall s (each round) | ms per iteration (best) |",
        "|---|---|---|",
        f"| serial: {args.clients} clients one after another, {args.jobs} jobs each | "
        f"{', '.join(f'{t:.1f}' for t, _ in serial)} | {1000 * per_it_serial:.1f} |",
        f"| parallel: {args.clients} clients at once | {', '.join(f'{t:.1f}' for t, _ in parallel)} | "
        f"{1000 * per_it_parallel:.1f} |",
        f"| **speed-up** (per round: {', '.join(f'{(ts / ns) / (tp / np_):.2f}×' for (ts, ns), (tp, np_) in zip(serial, parallel))}) "
        f"| | **{speedup:.2f}×** |",
        f"| control: 2 pure-Python processes vs 1 (before / after) | | {controls[0]:.2f}× / {controls[1]:.2f}× |",
        "",
        "The speed-up cannot exceed what the machine gives two processes at that moment (the control); on "
        "an idle 2-core machine the control is 2.0×.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        write_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
