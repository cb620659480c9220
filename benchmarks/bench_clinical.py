"""Clinical-size head and neck (issue 13): dose_to_grid against the previous implementation, and the
memory and time of every pipeline stage.

    python benchmarks/bench_clinical.py [--size clinical|reduced] [--workdir DIR] [--write]

The case is ``make_case("hn", 1, "clinical")`` (512 × 512 × 180, 0.98 × 0.98 × 2 mm; ``--size
reduced`` halves every axis, for a quick run). Every measurement runs in a fresh subprocess. Peak
memory is the process's peak resident set (VmHWM, /proc/self/status), reset before each stage by
writing 5 to /proc/self/clear_refs, so a stage's peak includes what earlier stages still hold
(column "held before"). The pipeline runs in two processes (phantom to objectives, then the
dose influence and the optimisation, with one engine thread: two threads add row blocks that
copy the used rows of the matrix), so the plan's peak does not carry the inputs' leftovers. A
child stops when its resident set exceeds ``--max-rss-mb`` (default 6000).
dose_to_grid is timed on a smooth dose on the default photon dose grid
(block (1, 2, 2)); "previous" is the implementation before issue 13 (dense float64 index meshgrids
and ``map_coordinates``), kept here only as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import machine, write_results

FACTOR = (1, 2, 2)  # InHousePhoton's default dose grid
MAX_RSS_MB = 6000.0  # a child stops (exit 3) above this resident set: the machine is shared


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set (MB) of this process now (VmRSS) or at its peak since the last reset (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux ≥ 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def watchdog(limit_mb: float) -> None:
    """Stop this process (exit 3) as soon as its resident set exceeds ``limit_mb``."""

    def watch():
        while True:
            if rss_mb() > limit_mb:
                print(f"stopped: resident set above {limit_mb:.0f} MB", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


class Stages:
    """Times and peak memory of consecutive stages of one process."""

    def __init__(self):
        self.rows = []

    def run(self, name: str, fn):
        held = rss_mb()
        reset_peak()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.rows.append({"stage": name, "s": seconds, "held_mb": held, "peak_mb": rss_mb("VmHWM"),
                          "after_mb": rss_mb()})
        print(json.dumps(self.rows[-1]), file=sys.stderr, flush=True)
        return result


def grid_for(size: str):
    from rtautoplan.phantom import phantom_grid
    from rtautoplan.case import Grid

    grid = phantom_grid("hn", "clinical")
    if size == "reduced":
        grid = Grid(grid.origin, tuple(2 * s for s in grid.spacing), tuple(n // 2 for n in grid.shape))
    return grid


def previous_dose_to_grid(dose, src, dst):
    """dose_to_grid before issue 13 (the baseline): dense float64 index meshgrids of the output grid."""
    from scipy import ndimage

    k, j, i = (np.arange(n, dtype=float) for n in dst.shape)
    kji = [np.asarray(v) for v in np.meshgrid(k, j, i, indexing="ij")]
    xyz = dst.index_to_patient(np.stack(kji, axis=-1))
    coords = np.moveaxis(src.patient_to_index(xyz), -1, 0)
    return ndimage.map_coordinates(np.asarray(dose, np.float64), coords, order=1, mode="nearest")


def smooth_dose(grid) -> np.ndarray:
    """A smooth float64 dose (Gy) on ``grid``: a 70 Gy Gaussian field around the head and neck."""
    x, y, z = grid.centres()
    return 70.0 * np.exp(-((x - 20.0) ** 2 + (y + 10.0) ** 2) / (2 * 40.0**2) - (z + 20.0) ** 2 / (2 * 60.0**2))


def child_interp(which: str, size: str, workdir: Path) -> dict:
    """Time and peak memory (above the inputs) of one dose_to_grid implementation; "new" also compares."""
    from rtautoplan.physics.dij import coarse_grid, dose_to_grid

    ct = grid_for(size)
    src = coarse_grid(ct, FACTOR)
    dose = smooth_dose(src)
    fn = previous_dose_to_grid if which == "previous" else dose_to_grid
    held = rss_mb()
    reset_peak()
    start = time.perf_counter()
    out = fn(dose, src, ct)
    first = time.perf_counter() - start
    peak = rss_mb("VmHWM") - held
    times = [first]
    if which == "new":
        for _ in range(2):
            start = time.perf_counter()
            out = fn(dose, src, ct)
            times.append(time.perf_counter() - start)
    reference = workdir / "previous_dose.npy"
    result = {"impl": which, "s": min(times), "peak_mb": peak, "out_dtype": str(out.dtype)}
    if which == "previous":
        np.save(reference, out.astype(np.float32))
    else:
        old = np.load(reference, mmap_mode="r")
        diff = np.abs(out - old)
        result["max_rel"] = float(diff.max() / np.abs(old).max())
        result["max_elementwise_rel"] = float((diff / np.maximum(np.abs(old), 1e-3)).max())
    return result


def child_inputs(size: str, workdir: Path) -> dict:
    """Phantom build and write, read_case, apply_rules, objectives_for (saved for ``child_plan``)."""
    from rtautoplan.dicom.read import read_case, write_case
    from rtautoplan.phantom import make_case
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    stages = Stages()
    made = stages.run("phantom build (make_case)", lambda: make_case("hn", 1, grid_for(size)))
    stages.run("write DICOM (write_case)", lambda: write_case(made, workdir / "case"))
    info = {"shape": made.grid.shape, "spacing": made.grid.spacing, "rois": len(made.structures)}
    del made
    case = stages.run("read_case", lambda: read_case(workdir / "case"))
    case = stages.run("apply_rules", lambda: apply_rules(case, "hn"))
    info["structures"] = len(case.structures)
    arrays = {id(a): a for s in case.structures for a in (s.mask, s.planning_mask) if a is not None}
    info["mask_mb"] = sum(a.nbytes for a in arrays.values()) / 2**20
    info["mask_arrays"] = len(arrays)
    objectives = stages.run("objectives (objectives_for)", lambda: objectives_for(case, np.random.default_rng(0)))
    (workdir / "objectives.pkl").write_bytes(pickle.dumps(objectives))
    return {"stages": stages.rows, "info": info}


def child_plan(workdir: Path, variant: str = "default") -> dict:
    """In a fresh process: read_case + apply_rules again, then the dose influence (InHousePhoton defaults:
    7 beams, 5 mm beamlets, dose grid (1, 2, 2)), one cold optimisation and one dose_of. Variant
    "no-screening": without the engine's DMAX-row screening (its row copy of the matrix)."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.optimize import objectives as engine

    engine.SCREEN_DMAX_ROWS = variant != "no-screening"
    from rtautoplan.dicom.read import read_case
    from rtautoplan.structures.rules import apply_rules

    stages = Stages()
    case = stages.run("read_case + apply_rules (fresh process)", lambda: apply_rules(read_case(workdir / "case"), "hn"))
    objectives = pickle.loads((workdir / "objectives.pkl").read_bytes())
    tps = InHousePhoton(cache_dir=workdir / "dij")
    stages.run("dose influence (prepare: 7 beams, grid 1 2 2)", lambda: tps.prepare(case))
    matrix = tps._dij.matrix
    info = {"rows": matrix.shape[0], "beamlets": matrix.shape[1], "nnz": int(matrix.nnz),
            "mb": (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 2**20}
    stages.run("one optimisation (optimize, cold)", lambda: tps.optimize(objectives))
    stages.run("dose_of (delivered dose on the CT grid)", lambda: tps.dose_of(tps.plan().weights))
    info["used_nnz"] = int(tps._f.view.nnz)
    return {"stages": stages.rows, "info": {"dij": info}}


def spawn(args: list[str], **env: str) -> dict:
    """Run this script as a child with ``args`` (and ``env``); its last stdout line is JSON. A child
    stopped by the watchdog gives the stages it finished and a last row "stopped"."""
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    sys.stderr.write(out.stderr)
    if out.returncode == 3:
        rows = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('{"stage"')]
        return {"stages": rows + [{"stage": "stopped", "s": float("nan"), "held_mb": rows[-1]["after_mb"],
                                   "peak_mb": float(args[args.index("--max-rss-mb") + 1]), "after_mb": float("nan")}],
                "info": {}, "stopped": True}
    if out.returncode:
        raise subprocess.CalledProcessError(out.returncode, args, out.stdout, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(size: str, interp: dict, pipeline: dict) -> str:
    old, new = interp["previous"], interp["new"]
    info = pipeline["info"]
    dij = info.get("dij")
    dij_text = (f"dose influence {dij['rows']} rows × {dij['beamlets']} beamlets, {dij['nnz'] / 1e6:.0f} M entries, "
                f"{dij['mb']:.0f} MB; the optimisation's used rows {dij['used_nnz'] / 1e6:.0f} M entries"
                if dij else "the plan did not finish")
    shape = "×".join(map(str, info["shape"][::-1]))
    lines = [
        "## Clinical size (issue 13)",
        "",
        f"`python benchmarks/bench_clinical.py{'' if size == 'clinical' else ' --size ' + size} --write`, "
        + ", ".join(f"{k} {v}" for k, v in machine().items()) + ".",
        "",
        f"Case: `make_case(\"hn\", 1, \"{size if size == 'clinical' else 'reduced'}\")`, {shape} voxels "
        f"(columns × rows × slices) of {' × '.join(f'{s:g}' for s in info['spacing'][::-1])} mm, {info['rois']} "
        f"input ROIs, {info['structures']} structures after `apply_rules`; their masks are {info['mask_arrays']} "
        f"full-grid bool arrays, {info['mask_mb']:.0f} MB.",
        "",
        f"**dose_to_grid** (dose grid (1, 2, 2) → CT grid): previous {old['s']:.2f} s, {old['peak_mb']:.0f} MB above "
        f"its inputs; now {new['s']:.2f} s, {new['peak_mb']:.0f} MB: **{old['s'] / new['s']:.0f}× faster, "
        f"{old['peak_mb'] / max(new['peak_mb'], 1):.0f}× less memory**; now float32 (was float64); largest "
        f"difference {new['max_rel']:.1e} of the maximum dose (elementwise ≤ {new['max_elementwise_rel']:.1e} "
        "relative).",
        "",
        f"**Pipeline by stage** (two processes: the inputs, then the plan, with one engine thread; {dij_text}):",
        "",
        "| stage | s | held before MB | peak MB | peak − held MB | held after MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in pipeline["stages"]:
        if row["stage"].startswith("stopped"):
            lines.append(f"| (next stage{row['stage'][7:]}: stopped by the watchdog above {row['peak_mb']:.0f} MB) "
                         f"| — | {row['held_mb']:.0f} | > {row['peak_mb']:.0f} | — | — |")
            continue
        lines.append(f"| {row['stage']} | {row['s']:.1f} | {row['held_mb']:.0f} | {row['peak_mb']:.0f} | "
                     f"{row['peak_mb'] - row['held_mb']:.0f} | {row['after_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["clinical", "reduced"], default="clinical")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    p.add_argument("--max-rss-mb", type=float, default=MAX_RSS_MB, help="stop a child above this resident set (MB)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        watchdog(args.max_rss_mb)
        kind, *rest = args.child
        result = (child_interp(rest[0], args.size, args.workdir) if kind == "interp" else
                  child_inputs(args.size, args.workdir) if kind == "inputs" else child_plan(args.workdir, *rest))
        print(json.dumps(result, default=str))
        return
    with tempfile.TemporaryDirectory(prefix="bench_clinical_", dir=args.workdir) as tmp:
        common = ["--size", args.size, "--workdir", tmp, "--max-rss-mb", str(args.max_rss_mb)]
        interp = {which: spawn([*common, "--child", "interp", which]) for which in ("previous", "new")}
        print(json.dumps(interp), file=sys.stderr, flush=True)
        inputs = spawn([*common, "--child", "inputs"])
        plan = spawn([*common, "--child", "plan"], RTAUTOPLAN_THREADS="1")
        if plan.get("stopped"):  # the engine's screened and active row copies: measure without screening
            again = spawn([*common, "--child", "plan", "no-screening"], RTAUTOPLAN_THREADS="1")
            plan["stages"] += [{**row, "stage": row["stage"] + ", no DMAX-row screening"} for row in again["stages"]]
            plan["info"] = again["info"]
        pipeline = {"stages": inputs["stages"] + plan["stages"], "info": {**inputs["info"], **plan["info"]}}
    text = report(args.size, interp, pipeline)
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
