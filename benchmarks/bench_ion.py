"""Ion engine benchmark (issue 4): proton (InHouseProton) and carbon (PHOENIX simulator) on sample_data/hn01.

    python benchmarks/bench_ion.py [--budget 120] [--parallel-iterations 400] [--no-results]

Problem: hn01 after ``apply_rules``, the seed-002 initial objectives ``objectives_for(case, rng 0)`` with
the SpinalCord Dmax limit clamped to 40 Gy(RBE) (as benchmarks/bench_engine.py and
tests/test_plan_hn01.py), limits read as RBE-weighted dose.

* **Proton** (``adapters.inhouse_proton.InHouseProton``, defaults: 3 equispaced coplanar fields, 5 mm
  spots, dose grid (1, 2, 2), minimum 3 MU per spot with re-optimisation): spot-influence matrix cold
  (empty cache) and loaded from the cache; ``optimize`` cold (uniform start, L-BFGS-B with the default
  stopping rule, then the minimum-MU rounds) and warm (after lowering the first adjustable OAR limit by
  20 %). Baseline in the same run: plain scipy ``minimize(method="L-BFGS-B")`` (no variable scaling,
  BLAS threads as they come, x ≥ 0, memory 10) on the *same* objective from the same start, timed
  until it reaches the objective value of our first solve (before the minimum-MU step), budget
  ``--budget`` s; the ratio is its time over ours.
* **Carbon** (``adapters.phoenix.PhoenixAdapter`` on ``PhoenixServer(workers=4)``, seed-003 default
  fields 45° and 315°, LQ RBE, 5 mm dose grid): ``prepare`` cold (the simulator builds the dose
  influence in ``create_plan``) and with its store warm, ``optimize`` cold and warm as above. DMEAN
  objectives are not in the PHOENIX catalogue: skipped (``unsupported="skip"``).
* **PHOENIX parallel speed-up**: 4 plans optimised one after another (submit, wait) against 4 more
  submitted at once, each a cold job of ``--parallel-iterations`` iterations with ``tolerance=0`` (equal
  work), after one warm-up job per worker.

Quality next to each time: D98 of every CTV level (full mask, CT grid, Gy(RBE)) and the SpinalCord Dmax.
It prints the tables and replaces the "## Ion engines" section of benchmarks/RESULTS.md (machine, date,
load average).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from rtautoplan.adapters.inhouse_proton import InHouseProton
from rtautoplan.adapters.phoenix import PhoenixAdapter
from rtautoplan.adapters.phoenix_api import PhoenixServer
from rtautoplan.optimize.lbfgs import solve_lbfgs

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere than the script's folder
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import plain_scipy_to  # noqa: E402  (after the path entry)
from cases import problem, quality, quality_cell, tighter_objectives  # noqa: E402
from common import machine, ratio, write_results  # noqa: E402


def bench_proton(case, objectives, tighter, budget) -> list[dict]:
    """InHouseProton: spot-influence matrix, cold and warm ``optimize``, first solve against plain scipy."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tps = InHouseProton(cache_dir=tmp)
        t = time.perf_counter()
        tps.prepare(case)
        t_dij = time.perf_counter() - t
        again = InHouseProton(cache_dir=tmp)
        t = time.perf_counter()
        again.prepare(case)
        t_load = time.perf_counter() - t
    dij = tps.dij
    out.append({"run": f"spot-influence matrix ({len(tps._beams)} fields, {dij.n_beamlets} spots, "
                       f"{dij.matrix.nnz / 1e6:.1f} M entries): cold / cache load", "s": f"{t_dij:.1f} / {t_load:.2f}",
                "detail": "", "quality": ""})
    x0 = tps._uniform_start()
    t = time.perf_counter()
    dose = tps.optimize(objectives)
    t_cold = time.perf_counter() - t
    run = tps.last_run
    out.append({"run": "optimize, cold (uniform start + minimum-MU rounds)", "s": f"{t_cold:.2f}",
                "detail": f"{run.iterations} it, {run.rounds} MU rounds, {run.removed} spots removed, "
                          f"f {run.value_unconstrained:.4g} → {run.value_final:.4g}",
                "quality": quality_cell(quality(case, dose.gy))})
    t = time.perf_counter()
    dose = tps.optimize(tighter)
    t_warm = time.perf_counter() - t
    run = tps.last_run
    out.append({"run": "optimize, warm (one OAR limit −20 %)", "s": f"{t_warm:.2f}",
                "detail": f"{run.iterations} it, {run.rounds} MU rounds, f {run.value_final:.4g}",
                "quality": quality_cell(quality(case, dose.gy))})
    usable = tuple(o for o in objectives if tps._rows_for(o.structure).size)
    f = tps.objective(usable)
    ours = solve_lbfgs(f, x0)
    f_plain = tps.objective(usable)
    f_plain.curvature_diagonal = None  # not used by scipy; keeps the comparison plain
    t_plain, evals = plain_scipy_to(f_plain, x0, ours.value, budget)
    speedup = ratio(t_plain, ours.time_s) if t_plain else ratio(None, ours.time_s, budget) + f" (not in {budget:g} s)"
    out.append({"run": "first solve only: ours (Jacobi, active and screened rows, 1 BLAS thread) vs plain scipy L-BFGS-B "
                       "to the same f", "s": f"{ours.time_s:.2f} vs {t_plain:.2f}" if t_plain else f"{ours.time_s:.2f} vs —",
                "detail": f"ours {ours.iterations} it, {ours.evaluations} evals ({1e3 * ours.time_s / ours.evaluations:.0f} "
                          f"ms each), f {ours.value:.4g}; scipy {evals} evals"
                          + (f" ({1e3 * t_plain / evals:.0f} ms each)" if t_plain else "") + f"; ratio {speedup}",
                "quality": ""})
    return out


def first_level_only(case, objectives):
    """The objectives without the lower levels' targets and rings (structure names carrying their dose
    tag): the problem this benchmark was first measured on, when PHOENIX placed spots on the first
    target only (seed 003 plans one CTV, SPEC §3.1). Since issue 12 the adapter's spots cover every CTV."""
    tags = [f"{round(lv.dose_gy * 100):d}" for lv in case.prescription.levels[1:]]
    return tuple(o for o in objectives if not any(o.structure.endswith("_" + t) for t in tags))


def bench_carbon(case, objectives, tighter, parallel_iterations) -> list[dict]:
    """PHOENIX carbon: ``prepare`` cold and warm, cold and warm ``optimize``, the parallel speed-up."""
    out = []
    objectives, tighter = first_level_only(case, objectives), first_level_only(case, tighter)
    with tempfile.TemporaryDirectory() as store, PhoenixServer(workers=4, store_dir=store) as server:
        tps = PhoenixAdapter(server, unsupported="skip")
        t = time.perf_counter()
        tps.prepare(case)
        t_cold = time.perf_counter() - t
        info = tps.session.plan_info(tps.plan_id)
        t = time.perf_counter()
        PhoenixAdapter(server, unsupported="skip").prepare(case)
        t_again = time.perf_counter() - t
        out.append({"run": f"dose influence in create_plan ({len(info.fields)} fields, "
                           f"{sum(info.n_spots)} spots): cold / store warm", "s": f"{t_cold:.1f} / {t_again:.2f}",
                    "detail": "", "quality": ""})
        for label, objs in (("optimize, cold", objectives), ("optimize, warm (one OAR limit −20 %)", tighter)):
            t = time.perf_counter()
            dose = tps.optimize(objs)
            seconds = time.perf_counter() - t
            status = [o for o in tps.session.list_objectives(tps.plan_id)]
            out.append({"run": label, "s": f"{seconds:.2f}", "detail": f"{len(status)} catalogue objectives",
                        "quality": quality_cell(quality(case, dose.gy, levels=1))})
        out.append(parallel_speedup(server, case, objectives, parallel_iterations))
    return out


def _spin(n=3_000_000):
    total = 0
    for i in range(n):
        total += i * i


def free_parallelism() -> float:
    """Control: speed-up of 2 forked pure-Python processes over 1 right now (≈ 2 on an idle 2-core
    machine; what the other load leaves for any parallel speed-up)."""
    ctx = multiprocessing.get_context("fork")
    times = []
    for n in (1, 2):
        start = time.perf_counter()
        procs = [ctx.Process(target=_spin) for _ in range(n)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        times.append(time.perf_counter() - start)
    return 2.0 * times[0] / times[1]


def parallel_speedup(server, case, objectives, iterations, attempts_max: int = 3) -> dict:
    """4 cold jobs one after another vs 4 more at once (equal work: ``tolerance=0``), after 4 warm-up
    jobs submitted together (every worker forked and has loaded the dose data). Up to ``attempts_max``
    attempts (fresh plans each) while the control says the other load leaves less than 1.6× of
    parallelism; the attempt with the best control is reported."""

    def plans(n):
        out = []
        for _ in range(n):
            a = PhoenixAdapter(server, unsupported="skip")
            a.prepare(case)
            for roi, typ, params in a._wanted(objectives):
                a.session.add_objective(a.plan_id, roi, typ, **params)
            out.append(a)
        return out

    def run(group, at_once):
        start = time.perf_counter()
        if at_once:
            jobs = [(a, a.session.submit_optimization(a.plan_id, max_iterations=iterations, tolerance=0)) for a in group]
            for a, job in jobs:
                a.session.wait(job, timeout_s=900)
        else:
            for a in group:
                a.session.wait(a.session.submit_optimization(a.plan_id, max_iterations=iterations, tolerance=0),
                               timeout_s=900)
        return time.perf_counter() - start

    run(plans(4), True)
    attempts = []
    for _ in range(attempts_max):  # the machine is shared: keep the attempt the other load disturbed least
        group = plans(8)
        before = free_parallelism()
        serial = run(group[:4], False)
        parallel = run(group[4:], True)
        after = free_parallelism()
        attempts.append((min(before, after), serial, parallel, before, after))
        if min(before, after) >= 1.6:
            break
    _, serial, parallel, before, after = max(attempts)
    return {"run": f"PHOENIX: 4 cold jobs × {iterations} iterations, serial vs submitted at once (4 workers)",
            "s": f"{serial:.1f} vs {parallel:.1f}", "detail": f"speed-up {serial / parallel:.2f}× on {server.workers} "
            f"workers; control (2 pure-Python processes vs 1, before / after): {before:.2f}× / {after:.2f}× "
            f"(best of {len(attempts)} attempts by the control)", "quality": ""}


def markdown(proton, carbon, m, change, args) -> str:
    lines = ["## Ion engines", "",
             f"`python benchmarks/bench_ion.py`, {m['date']}. Machine: {m['nproc']} × {m['cpu']}; load average at "
             f"the end {m['load']}; Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}.", "",
             "sample_data/hn01, seed-002 initial objectives (rng 0, cord Dmax limit 40 Gy(RBE)); warm = after "
             f"lowering one OAR limit by 20 % ({change} Gy(RBE)). Quality in Gy(RBE): D98 of each CTV level (full "
             "mask, CT grid), SpinalCord Dmax. Plain scipy = `minimize(method=\"L-BFGS-B\")` on the same objective and "
             f"start, without our scaling, stopped at our objective value (budget {args.budget:g} s).", ""]
    for title, rows in (("Proton, InHouseProton (3 fields, 5 mm spots, dose grid (1, 2, 2), 3 MU minimum)", proton),
                        ("Carbon, PHOENIX simulator (45°/315°, LQ RBE, 5 mm dose grid; spots on CTV_7000 only, as seed 003: "
                         "the objectives of the 60 and 54 Gy levels and DMEAN objectives left out)",
                         carbon)):
        lines += [f"**{title}**", "", "| run | s | detail | quality |", "| --- | ---: | --- | --- |"]
        lines += [f"| {r['run']} | {r['s']} | {r['detail']} | {r['quality']} |" for r in rows]
        lines.append("")
    return "\n".join(lines + [NOTES, ""])


NOTES = """Reading the numbers. Protons run on the photon engine's optimiser code (`plan_objective`, `solve_lbfgs`),
so they inherit issue 3's speed work (active-row Mᵀ g, screened DMAX rows, one BLAS thread in L-BFGS-B, the
plan objective re-used when only limits or weights change); the plain scipy ratio measures that code against
the textbook call on the same objective function (our evaluation: the difference is the solver call, Jacobi
scaling and BLAS threads; the evaluations column shows how much is per evaluation). A proton `optimize` is one L-BFGS-B solve plus up to 5 minimum-MU
rounds (each a warm solve on the spots left): the rounds are most of its time, and a warm re-optimisation
runs them again because every `optimize` starts from the full spot set (spots removed under one set of
objectives may come back under another; adapters/inhouse_proton.py). Carbon runs on the PHOENIX simulator's
own engine (LQ RBE-weighted dose and gradient, L-BFGS-B in worker processes, one BLAS thread each): its
spots cover CTV_7000 only (seed 003 plans one CTV), so only that CTV's D98 is shown, and the seed-002 photon
objectives used here (Ring limit 0.93·Rx next to the PTV, Table A1 normalisation by Rx²) are not a tuned
carbon plan: quality is as measured, not a target. The parallel speed-up is bounded by the 2 cores (4 workers
share them; the control column says how much of that the other load left free at the time). Open peers (matRad's Python port, OpenTPS) are not installed here; the review compares them on
the same machine. Timings are wall-clock on a shared machine (load average above)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="wall-time cap (s) of the plain scipy run")
    parser.add_argument("--parallel-iterations", type=int, default=400)
    parser.add_argument("--skip", nargs="*", default=[], choices=["proton", "carbon"])
    parser.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    logging.getLogger("rtautoplan.adapters.phoenix").setLevel(logging.ERROR)  # "DMEAN skipped", once per plan
    case, objectives, _ = problem("hn01", (1, 2, 2))
    tighter, change = tighter_objectives(case, objectives)
    proton = [] if "proton" in args.skip else bench_proton(case, objectives, tighter, args.budget)
    for r in proton:
        print(f"proton | {r['run']} | {r['s']} | {r['detail']} | {r['quality']}", flush=True)
    carbon = [] if "carbon" in args.skip else bench_carbon(case, objectives, tighter, args.parallel_iterations)
    for r in carbon:
        print(f"carbon | {r['run']} | {r['s']} | {r['detail']} | {r['quality']}", flush=True)
    text = markdown(proton, carbon, machine(), change, args)
    print(text)
    if not args.no_results:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
