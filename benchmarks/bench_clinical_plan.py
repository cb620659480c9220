"""Clinical-size H&N, issue 13 items 1–3: the memory of a Case with cropped masks, estimate_dose, and a full
closed-loop ``rtautoplan plan`` with its stage-by-stage profile.

    python benchmarks/bench_clinical_plan.py [--workdir DIR] [--skip-plan | --plan-only] [--write] [-- PLAN OPTIONS]

Every measurement runs in a fresh process, single-threaded (OMP/MKL/NUMBA threads 1), niced.
- Case memory: ``read_case`` + ``apply_rules`` of ``phantom hn --size clinical`` (512 × 512 × 180, 0.98 × 0.98 ×
  2 mm, 35 structures after the rules); what the masks hold (their arrays, counted once) against the same masks
  as full-grid bool arrays (one per distinct mask, as before issue 13, materialised in the same process), and the
  process's resident set.
- estimate_dose: the clinical case, and on a reduced case (every third voxel per axis) the previous all-offsets distance
  transform (kept here only as the baseline) against the current one, same run, results compared bit for bit.
- The plan: ``/usr/bin/time -v rtautoplan plan CASE -o OUT`` with the default options: wall time, CPU time (user
  + system), their ratio (the parallel share: 1 on one core, up to the engine's threads), peak RSS, loop steps,
  the clinical gate's verdict and the final score; the CPU of the main thread apart (what no other thread can take
  over: on idle cores the wall time is at least that, plus the other threads' CPU shared among the cores). The engine uses every core this process may use
  (``$RTAUTOPLAN_THREADS`` is left unset unless ``--threads N``); OMP/MKL/NUMBA stay at 1. With py-spy installed
  (``pip install py-spy``) and without ``--no-profile`` it runs under ``py-spy record`` (sampling from another
  process, 10 Hz) and the main thread's samples are summed per pipeline stage. The load average before and
  after is reported: on a shared machine a wall time is only meaningful beside it.
- ``--baseline COMMIT``: the same plan, first with the code of COMMIT (``git archive`` into the work folder, run
  with ``PYTHONPATH``), then with this tree, one after the other, and the ratios of the two (same machine, same
  load period).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from common import ROOT, load_average, machine, write_results

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "TORCH_NUM_THREADS": "1"}
HEADING = "## Clinical size: the closed-loop plan benchmark (issue 13, bench_clinical_plan.py)"

# Pipeline stages of the profile: (label, function names whose samples count for it); a main-thread sample
# counts for the first stage with one of its functions on the stack (a method matches by its name).
STAGES = (
    ("read_case (CT, RTSTRUCT → masks)", ("read_case",)),
    ("apply_rules (PTV, Gap, Ring, overlaps)", ("apply_rules",)),
    ("estimate_dose (rule-11 reference)", ("estimate_dose",)),
    ("dose influence (prepare)", ("prepare",)),
    ("deliverable plan (sequencing, segment weights, its score)", ("deliverable",)),
    ("optimisation (optimize)", ("optimize",)),
    ("scores and clinical gate", ("score", "structure_scores", "hotspots", "evaluate_goals")),
    ("outputs (DICOM, report)", ("write_result", "write_report", "write_outputs")),
)
WORKERS = "engine worker threads (row products, beside the main thread)"
DISPLAY = "progress display thread (rich)"

def previous_box_distance(mask: np.ndarray, spacing, limit_mm: float | None = None) -> np.ndarray:
    """The distance transform before this change (every offset up to the reach, over the whole box): baseline."""
    squared = np.where(mask, 0.0, np.inf)
    scratch = np.empty_like(squared)
    for axis, step in enumerate(spacing):
        reach = mask.shape[axis] - 1 if limit_mm is None else min(int(math.ceil(limit_mm / step + 0.5)),
                                                                    mask.shape[axis] - 1)
        moved = np.moveaxis(squared, axis, 0)
        best = moved.copy()
        shifted = np.moveaxis(scratch, axis, 0)
        for n in range(1, reach + 1):
            cost = ((n - 0.5) * step) ** 2
            np.minimum(best[n:], np.add(moved[:-n], cost, out=shifted[n:]), out=best[n:])
            np.minimum(best[:-n], np.add(moved[n:], cost, out=shifted[:-n]), out=best[:-n])
        squared = np.moveaxis(best, 0, axis)
    return np.sqrt(squared)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def child_memory(case_dir: Path) -> dict:
    from rtautoplan.dicom.read import read_case
    from rtautoplan.structures.rules import apply_rules

    tracemalloc.start()
    case = apply_rules(read_case(case_dir), "hn")
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    masks = {id(m): m for s in case.structures for m in (s.mask, s.planning_mask) if m is not None}
    crops = {id(m.crop): m.crop for m in masks.values()}
    tracemalloc.start()
    full = [m.to_full() for m in masks.values()]
    full_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del full
    return {"structures": len(case.structures), "masks": len(masks), "shape": case.grid.shape,
            "crop_mb": sum(c.nbytes for c in crops.values()) / 2**20, "full_mb": full_mb,
            "hu_mb": case.hu.nbytes / 2**20, "case_mb": held / 2**20, "peak_mb": peak / 2**20, "rss_mb": rss_mb()}


def child_estimate(case_dir: Path) -> dict:
    from rtautoplan.dicom.read import read_case
    from rtautoplan.structures import margins
    from rtautoplan.structures.objectives import estimate_dose
    from rtautoplan.structures.rules import apply_rules

    clinical = apply_rules(read_case(case_dir), "hn")
    margins._box_distance(np.ones((2, 2, 2), bool), (1.0, 1.0, 1.0))  # JIT load outside the timing
    t = time.perf_counter()
    estimate_dose(clinical)
    clinical_s = time.perf_counter() - t
    reduced = _reduced(clinical)
    del clinical
    t = time.perf_counter()
    now = estimate_dose(reduced)
    now_s = time.perf_counter() - t
    current = margins._box_distance
    margins._box_distance = previous_box_distance
    try:
        t = time.perf_counter()
        before = estimate_dose(reduced)
        before_s = time.perf_counter() - t
    finally:
        margins._box_distance = current
    return {"clinical_s": clinical_s, "reduced_shape": reduced.grid.shape, "reduced_s": now_s,
            "reduced_previous_s": before_s, "identical": bool(np.array_equal(now, before))}


REDUCE = 3  # the baseline's case: every third voxel of each axis (the previous transform costs voxels × reach)


def _reduced(case):
    """The case on every REDUCE-th voxel of each axis (spacing × REDUCE): the baseline's size."""
    from dataclasses import replace

    from rtautoplan.case import Grid

    g = case.grid
    grid = Grid(g.origin, tuple(REDUCE * s for s in g.spacing), tuple(-(-n // REDUCE) for n in g.shape), g.orientation)
    every = (slice(None, None, REDUCE),) * 3
    structures = tuple(replace(s, mask=s.mask.to_full()[every], planning_mask=None if s.planning_mask is None
                               else s.planning_mask.to_full()[every]) for s in case.structures)
    return replace(case, grid=grid, hu=case.hu[every], structures=structures)


# Printed by the plan's process at its end: CPU seconds of its main thread and of the others (/proc/self/task).
THREAD_CPU = ("import os, json, pathlib; t = os.sysconf('SC_CLK_TCK'); "
              "c = {int(p.name): sum(map(int, (p / 'stat').read_text().rsplit(')', 1)[1].split()[11:13])) / t "
              "for p in pathlib.Path('/proc/self/task').iterdir()}; "
              "print('THREAD_CPU', json.dumps({'main_s': c.pop(os.getpid()), 'others_s': sum(c.values())}), "
              "file=sys.stderr)")


def baseline_tree(commit: str, work: Path) -> Path:
    """The source tree of ``commit`` under ``work`` (``git archive``), importable with ``PYTHONPATH``: the
    subpackages kept at the repository root are linked into ``rtautoplan/`` as the installed mapping does."""
    tree = work / f"baseline-{commit}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        for sub in ("adapters", "policies", "structures"):
            (tree / "rtautoplan" / sub).symlink_to(tree / sub)
    return tree


def run_plan(case_dir: Path, out: Path, extra: list[str], profile_it: bool = True, source: Path | None = None,
             threads: int | None = None) -> dict:
    """``rtautoplan plan`` under /usr/bin/time -v (and py-spy when installed and ``profile_it``): wall s, CPU s,
    peak MB, stage seconds. ``source``: a source tree to run instead of the installed package."""
    cli = "import sys; from rtautoplan.cli import main; code = main(sys.argv[1:]); " + THREAD_CPU + "; sys.exit(code)"
    plan = [sys.executable, "-c", cli, "plan", str(case_dir), "-o", str(out), *extra]
    spy = shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy"))
                                     if Path(sys.executable).with_name("py-spy").exists() else None)
    spy = spy if profile_it else None
    profile = out.with_suffix(".pyspy.txt")
    command = [spy, "record", "-r", "10", "--format", "raw", "-o", str(profile), "--", *plan] if spy else plan
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **THREADS, "RTAUTOPLAN_CACHE": str(out.with_suffix(".dij-cache"))}  # no cache hit
    shutil.rmtree(env["RTAUTOPLAN_CACHE"], ignore_errors=True)
    env.pop("RTAUTOPLAN_THREADS", None)
    if threads:
        env["RTAUTOPLAN_THREADS"] = str(threads)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    load_before = load_average()
    done = subprocess.run(["/usr/bin/time", "-v", "nice", "-n", "10", *command], capture_output=True, text=True,
                          env=env, cwd=out.parent)  # not the repository: ``-c`` puts the working folder on sys.path
    load_after = load_average()
    if done.returncode:
        raise RuntimeError(f"rtautoplan plan failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr).group(1)
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024.0
    cpu = float(re.search(r"User time \(seconds\): (\S+)", done.stderr).group(1)) + float(
        re.search(r"System time \(seconds\): (\S+)", done.stderr).group(1))
    log = json.loads((out / "plan_log.json").read_text()) if (out / "plan_log.json").exists() else {}
    shutil.rmtree(env["RTAUTOPLAN_CACHE"], ignore_errors=True)
    threads_cpu = re.search(r"THREAD_CPU (\{.*\})", done.stderr)
    main_s = json.loads(threads_cpu.group(1))["main_s"] if threads_cpu else float("nan")
    return {"wall_s": seconds, "peak_mb": peak, "cpu_s": cpu, "load_before": load_before, "load_after": load_after,
            "main_cpu_s": main_s, "threads": threads or "all cores", "goals_met": sum(bool(g.get("met")) for g in log.get("goals", [])),
            "goals": len(log.get("goals", [])),
            "stages": stage_seconds(profile) if spy else None, "profiled": bool(spy), "steps": len(log.get("steps", [])),
            "acceptable": log.get("acceptable"), "final_score": log.get("final score"),
            "stdout": done.stdout[-1500:]}


def stage_seconds(profile: Path) -> dict[str, float]:
    """Seconds (samples / 10 Hz) per stage of STAGES from py-spy's raw output, main thread ("other": the rest);
    the engine's worker threads and the progress display apart, their idle waits left out."""
    out = {label: 0.0 for label, _ in STAGES} | {"other (main thread)": 0.0, WORKERS: 0.0, DISPLAY: 0.0}
    for line in profile.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        names = [frame.split(" (")[0] for frame in stack.split(";")]
        seconds = int(count) / 10.0
        if names[0].startswith("Thread._bootstrap"):
            if not (names[-1] == "_worker" or any(n.endswith(".wait") for n in names)):  # idle
                out[DISPLAY if any(n.endswith("_RefreshThread.run") for n in names) else WORKERS] += seconds
            continue
        label = next((label for label, funcs in STAGES
                      if any(n == f or n.endswith("." + f) for n in names for f in funcs)), "other (main thread)")
        out[label] += seconds
    return out


def spawn(what: str, case_dir: Path) -> dict:
    done = subprocess.run(["nice", "-n", "10", sys.executable, __file__, "--child", what, "--case", str(case_dir)],
                          capture_output=True, text=True, env={**os.environ, **THREADS}, cwd=Path(__file__).parent)
    if done.returncode:
        raise RuntimeError(f"child {what} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(memory: dict | None, estimate: dict | None, plan: dict | None, extra: list[str],
           baseline: dict | None = None, commit: str = "") -> str:
    lines = [HEADING, "", "`python benchmarks/bench_clinical_plan.py --write`, "
             + ", ".join(f"{k} {v}" for k, v in machine().items()) + ". Case: `rtautoplan phantom hn --size "
             "clinical` (512×512×180 voxels), OMP/MKL/NUMBA one thread, the engine on every core unless `--threads`, niced.", ""]
    if memory is not None and estimate is not None:
        lines += case_lines(memory, estimate)
    return "\n".join(lines + plan_lines(plan, extra, baseline, commit))


def case_lines(memory: dict, estimate: dict) -> list[str]:
    return [f"**Case memory** (read_case + apply_rules, {memory['structures']} structures, {memory['masks']} distinct "
             f"masks): the masks hold **{memory['crop_mb']:.0f} MB** on their bounding boxes; the same masks as full-grid "
             f"bool arrays (before) {memory['full_mb']:.0f} MB (**{memory['full_mb'] / memory['crop_mb']:.1f}×**). "
             f"The Case (traced allocations held: CT {memory['hu_mb']:.0f} MB + masks) {memory['case_mb']:.0f} MB, "
             f"target ≤ 512 MB; peak while reading and applying the rules {memory['peak_mb']:.0f} MB; process "
             f"resident set after {memory['rss_mb']:.0f} MB.", "",
             f"**estimate_dose**: clinical size {estimate['clinical_s']:.1f} s (was 314 s in \"Clinical size (issue 13)\", "
             f"a quieter machine). Same run, reduced case ({'×'.join(map(str, estimate['reduced_shape'][::-1]))}): "
             f"previous transform {estimate['reduced_previous_s']:.1f} s, now {estimate['reduced_s']:.1f} s "
             f"(**{estimate['reduced_previous_s'] / estimate['reduced_s']:.0f}×**), results "
             f"{'bitwise identical' if estimate['identical'] else 'DIFFERENT'}.", ""]


def plan_lines(plan: dict | None, extra: list[str], baseline: dict | None = None, commit: str = "") -> list[str]:
    if plan is None:
        return []
    options = " ".join(extra) or "default options"
    lines = [f"**Closed-loop photon plan** (`rtautoplan plan` of that case, {options}; engine threads: "
             f"{plan['threads']}; {plan['steps']} loop step attempts logged): wall **{plan['wall_s']:.0f} s**, CPU "
             f"{plan['cpu_s']:.0f} s (main thread {plan['main_cpu_s']:.0f} s, the engine's other threads "
             f"{plan['cpu_s'] - plan['main_cpu_s']:.0f} s), CPU / wall **{plan['cpu_s'] / plan['wall_s']:.2f}**, peak RSS "
             f"**{plan['peak_mb'] / 1024:.2f} GB** (targets ≤ 300 s, ≤ 6 GB on 2 cores); load average before "
             f"{plan['load_before']}, after {plan['load_after']}"
             + (" (under py-spy, 10 Hz sampling from another process)." if plan["profiled"] else ".")
             + f" The plan: clinical gate {'ACCEPTABLE' if plan['acceptable'] else 'NOT ACCEPTABLE'}, "
             f"{plan['goals_met']} of {plan['goals']} goals met, final score {plan['final_score']}."]
    if baseline is not None:
        lines += ["", f"| | baseline {commit} | this tree | ratio |", "| --- | ---: | ---: | ---: |"]
        for key, label in (("wall_s", "wall s"), ("cpu_s", "CPU s"), ("main_cpu_s", "CPU s of the main thread"),
                           ("peak_mb", "peak RSS MB")):
            lines.append(f"| {label} | {baseline[key]:.0f} | {plan[key]:.0f} | {baseline[key] / plan[key]:.2f}× |")
        lines.append(f"| CPU / wall | {baseline['cpu_s'] / baseline['wall_s']:.2f} | {plan['cpu_s'] / plan['wall_s']:.2f}"
                     " | |")
        lines.append(f"| gate, goals met, score | {'ACCEPTABLE' if baseline['acceptable'] else 'NOT ACCEPTABLE'}, "
                     f"{baseline['goals_met']}/{baseline['goals']}, {baseline['final_score']} | "
                     f"{'ACCEPTABLE' if plan['acceptable'] else 'NOT ACCEPTABLE'}, {plan['goals_met']}/{plan['goals']}, "
                     f"{plan['final_score']} | |")
    if plan["stages"]:
        main = sum(s for label, s in plan["stages"].items() if label not in (WORKERS, DISPLAY))
        before = (baseline or {}).get("stages") or {}
        lines += ["", "| stage | sampled s | share of the main thread |" + (" baseline s |" if before else ""),
                  "| --- | ---: | ---: |" + (" ---: |" if before else "")]
        lines += [f"| {label} | {s:.1f} | " + ("—" if label in (WORKERS, DISPLAY) else f"{100 * s / main:.0f} %") + " |"
                  + (f" {before.get(label, 0.0):.1f} |" if before else "")
                  for label, s in plan["stages"].items() if s or before.get(label)]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--case", type=Path, default=None, help="an existing clinical phantom folder (default: written)")
    p.add_argument("--skip-plan", action="store_true", help="only the case memory and estimate_dose")
    p.add_argument("--plan-only", action="store_true", help="only the closed-loop plan (no case memory, estimate_dose)")
    p.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    p.add_argument("--no-profile", action="store_true", help="run the plan without py-spy (no stage table)")
    p.add_argument("--threads", type=int, default=None, help="$RTAUTOPLAN_THREADS of the plan (default: all cores)")
    p.add_argument("--baseline", metavar="COMMIT", default=None,
                   help="also plan with the code of COMMIT first, and report the ratios")
    p.add_argument("--child", choices=["memory", "estimate"], help=argparse.SUPPRESS)
    p.add_argument("plan_options", nargs="*", help="options passed to rtautoplan plan (after --)")
    a = p.parse_args()
    if a.child:
        print(json.dumps({"memory": child_memory, "estimate": child_estimate}[a.child](a.case)))
        return
    work = (a.workdir or Path(tempfile.mkdtemp(prefix="bench_clinical_plan_"))).resolve()
    case_dir = (a.case or work / "case").resolve()
    if a.case is None:
        subprocess.run([str(Path(sys.executable).with_name("rtautoplan")), "phantom", "hn", "--size", "clinical",
                        "-o", str(case_dir)], check=True, env={**os.environ, **THREADS})
    memory = estimate = None
    if not a.plan_only:
        print("case memory …", flush=True)
        memory = spawn("memory", case_dir)
        print(json.dumps(memory), flush=True)
        print("estimate_dose …", flush=True)
        estimate = spawn("estimate", case_dir)
        print(json.dumps(estimate), flush=True)
    plan = baseline = None
    if not a.skip_plan and a.baseline:
        print(f"rtautoplan plan with {a.baseline} …", flush=True)
        baseline = run_plan(case_dir, work / "plan-baseline", a.plan_options, not a.no_profile,
                            baseline_tree(a.baseline, work), a.threads)
        print(json.dumps({k: v for k, v in baseline.items() if k != "stdout"}), flush=True)
    if not a.skip_plan:
        print("rtautoplan plan …", flush=True)
        plan = run_plan(case_dir, work / "plan", a.plan_options, not a.no_profile, None, a.threads)
        print(json.dumps({k: v for k, v in plan.items() if k != "stdout"}), flush=True)
    text = report(memory, estimate, plan, a.plan_options, baseline, a.baseline or "")
    print(text)
    if a.write:
        write_results(text)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
