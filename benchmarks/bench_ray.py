"""Batch on a local 2-worker Ray cluster against the serial batch, same cases, same run (issue 15).

    python benchmarks/bench_ray.py [--cases 8] [--workdir /tmp/bench_ray] [--write] [plan options]

Writes ``--cases`` H&N phantoms of hn01's size (seeds 1…N: hn01's grid, other anatomies), plans them with
the serial batch (``replan_folder``, this process, the engine's default threads), then with the Ray
runner on a local cluster of 2 CPUs (2 cases at once, 1 engine thread each), each with an empty
dose-influence cache of its own. Prints both wall times and the speed-up (target ≥ 1.8×), checks that
the two summaries agree, and measures the scheduling overhead: the local cluster's start, the round
trip of a no-op task declared like a case (1 CPU, the case's memory), and the batch's idle share
(2 × wall − Σ case seconds). Then extrapolates to 1 000 clinical-size cases on N worker nodes
(``cost_model``). ``--write`` replaces the "Ray batch (issue 15)" section of benchmarks/RESULTS.md.
Planning options (``--max-steps``, ``--dose-grid-factor``) shorten a run on a loaded machine; the
defaults are the product's.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from rtautoplan.batch import SUMMARY_FILE, replan_folder  # noqa: E402
from rtautoplan.cluster import RaySettings, ct_voxels, estimate_memory, ray_runner  # noqa: E402

WORKERS = 2
CLINICAL_VOXELS = 512 * 512 * 180
# One clinical-size H&N photon plan, s: the stages measured in benchmarks/RESULTS.md "Clinical size (issue 13)"
# (one engine thread): read_case + apply_rules 9.5, objectives_for 314 (599 under load), dose influence 74,
# 9 cold optimisations (initial + 8 steps) × 44, DICOM + report ≈ 30 (not measured at that size).
CLINICAL_CASE_S = 9.5 + 314 + 74 + 9 * 44 + 30


def _summary(out: Path) -> list[tuple]:
    with (out / SUMMARY_FILE).open() as f:
        return [(r["case"], r["status"], r["acceptable"], r["message"]) for r in csv.DictReader(f)]


def _noop(_):
    return os.getpid()


def scheduling_overhead(ray, memory: int, n: int = 40) -> float:
    """Seconds per task of ``n`` no-op tasks declared like a case, 2 workers, after a warm-up (dispatch, placement,
    return; no planning)."""
    task = ray.remote(_noop).options(num_cpus=1, memory=memory)
    ray.get([task.remote(k) for k in range(2 * WORKERS)])
    start = time.perf_counter()
    ray.get([task.remote(k) for k in range(n)])
    return (time.perf_counter() - start) * WORKERS / n


def cost_model(cases: int, nodes: int, cpus: int, memory_gb: float, case_s: float, overhead_s: float,
               start_s: float) -> float:
    """Wall seconds for ``cases`` cases on ``nodes`` workers of ``cpus`` CPUs and ``memory_gb`` each, one CPU
    and CLINICAL memory per case: waves of (nodes × cases per node), each (case_s + overhead_s), plus start."""
    per_node = max(1, min(cpus, int(memory_gb * 2**30 // _clinical_bytes())))
    return start_s + math.ceil(cases / (nodes * per_node)) * (case_s + overhead_s)


def _clinical_bytes() -> int:
    from rtautoplan.cluster import BASE_BYTES, BYTES_PER_CT_VOXEL

    return BASE_BYTES + BYTES_PER_CT_VOXEL * CLINICAL_VOXELS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_ray"))
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--dose-grid-factor", type=int, nargs=3, default=None)
    p.add_argument("--clinical-case-s", type=float, default=CLINICAL_CASE_S, help="one clinical-size plan, s")
    p.add_argument("--write", action="store_true")
    a = p.parse_args()
    from rtautoplan.phantom import write_phantom

    shutil.rmtree(a.workdir, ignore_errors=True)
    root = a.workdir / "cases"
    for seed in range(1, a.cases + 1):
        write_phantom("hn", seed, root / f"hn{seed:02d}")
    options = {"max_steps": a.max_steps}
    if a.dose_grid_factor:
        options["adapter_options"] = {"dose_grid_factor": tuple(a.dose_grid_factor)}
    voxels = ct_voxels(root / "hn01")
    load_before = os.getloadavg()

    os.environ["RTAUTOPLAN_CACHE"] = str(a.workdir / "cache_serial")
    start = time.perf_counter()
    serial = replan_folder(root, a.workdir / "serial", **options)
    serial_s = time.perf_counter() - start
    serial_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"serial: {serial_s:.1f} s for {a.cases} cases (peak RSS {serial_peak_mb:.0f} MB)", flush=True)

    import ray

    os.environ["RTAUTOPLAN_CACHE"] = str(a.workdir / "cache_ray")  # the workers inherit it: a cache of their own
    start = time.perf_counter()
    ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="warning", log_to_driver=False)
    start_s = time.perf_counter() - start
    start = time.perf_counter()
    on_ray = replan_folder(root, a.workdir / "ray", runner=ray_runner(RaySettings()), **options)
    ray_s = time.perf_counter() - start
    overhead_s = scheduling_overhead(ray, estimate_memory(root / "hn01"))
    ray.shutdown()
    load_after = os.getloadavg()

    same = _summary(a.workdir / "serial") == _summary(a.workdir / "ray")
    case_s = sum(r.seconds for r in on_ray)
    idle = 1 - case_s / (WORKERS * ray_s)
    speedup, with_start = serial_s / ray_s, serial_s / (ray_s + start_s)
    print(f"ray (local cluster, {WORKERS} workers): start {start_s:.1f} s, batch {ray_s:.1f} s; speed-up "
          f"{speedup:.2f}× ({with_start:.2f}× counting the cluster's start; target ≥ 1.8×)")
    print(f"summaries equal: {same}; Σ case seconds on the workers {case_s:.0f} s, idle share {idle:.0%}; "
          f"no-op task {overhead_s * 1000:.1f} ms; load {load_before} → {load_after}")
    per_case = [r.seconds for r in serial]
    slowdown = (case_s / len(on_ray)) / (sum(per_case) / len(per_case))
    print(f"a case on a worker took {slowdown:.2f}× its serial time (≈ 1 on a machine with 2 free cores; "
          "≈ 2 when the cores were already busy)")
    model = [(n, cost_model(1000, n, 16, 64, a.clinical_case_s, overhead_s, start_s)) for n in (1, 4, 16, 64)]
    per_node = max(1, min(16, int(64 * 2**30 // _clinical_bytes())))
    for n, t in model:
        print(f"1 000 clinical cases on {n:>2} nodes of 16 CPUs / 64 GB: {t / 3600:7.1f} h")

    opts = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None) or "defaults"
    m = machine()
    text = "\n".join([
        "## Ray batch (issue 15)",
        "",
        f"`python benchmarks/bench_ray.py --cases {a.cases}{' --max-steps ' + str(a.max_steps) if a.max_steps is not None else ''}"
        f"{' --dose-grid-factor ' + ' '.join(map(str, a.dose_grid_factor)) if a.dose_grid_factor else ''}"
        f"{' --write' if a.write else ''}`, "
        f"nproc {m['nproc']}, {m['cpu']}, python {m['python']}, ray {ray.__version__}, {m['date']}; "
        f"load average before {' / '.join(f'{v:.1f}' for v in load_before)}, after "
        f"{' / '.join(f'{v:.1f}' for v in load_after)} (a machine shared with other jobs: the ratio is what counts).",
        "",
        f"{a.cases} H&N phantoms of hn01's grid (seeds 1–{a.cases}, {voxels:,} CT voxels each), planning options: {opts}; "
        "serial = `replan_folder` in one process (the engine's default threads); Ray = the same through "
        f"`ray_runner` on a local cluster of {WORKERS} CPUs (2 cases at once, 1 engine thread each); "
        "each with its own empty dose-influence cache.",
        "",
        "| | wall s | speed-up |",
        "| --- | ---: | ---: |",
        f"| serial batch | {serial_s:.1f} | 1 |",
        f"| Ray, {WORKERS} workers (batch only) | {ray_s:.1f} | {speedup:.2f}× |",
        f"| Ray, {WORKERS} workers + starting the local cluster ({start_s:.1f} s) | {ray_s + start_s:.1f} | "
        f"{with_start:.2f}× |",
        "",
        f"Summaries equal (case, status, acceptable, message): {same}. Serial seconds per case: "
        f"{min(per_case):.0f}–{max(per_case):.0f}. Serial process peak RSS {serial_peak_mb:.0f} MB "
        f"(the estimate per case: {estimate_memory(root / 'hn01') / 2**20:.0f} MB). A case on a Ray worker took "
        f"{slowdown:.2f}× its serial time (≈ 1 when the machine has 2 free cores; ≈ 2 when they were busy already).",
        "",
        f"Scheduling overhead: local cluster start {start_s:.1f} s; a no-op task declared like a case "
        f"{overhead_s * 1000:.1f} ms per task at 2 workers; in the batch, the workers were idle "
        f"{idle:.0%} of 2 × wall (worker start and imports, the last wave, dispatch).",
        "",
        f"**1 000 clinical-size cases** (512 × 512 × 180; {_clinical_bytes() / 2**30:.1f} GB declared per case, "
        f"{a.clinical_case_s:.0f} s per plan on one CPU from the clinical-size stages in this file), nodes of 16 CPUs "
        f"and 64 GB ({per_node} cases at once per node: the memory bounds it before the CPUs), "
        f"T = start + ⌈1000 / (N × {per_node})⌉ × (t_case + overhead per task):",
        "",
        "| worker nodes N | hours |",
        "| ---: | ---: |",
        *[f"| {n} | {t / 3600:.1f} |" for n, t in model],
        "",
        "The overhead per task (ms) is negligible against a plan (minutes); what bounds a cohort is memory per "
        "node (cases at once) and the last, partly filled wave.",
    ])
    print(text)
    if a.write:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
