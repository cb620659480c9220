"""pyRadPlan (matRad's Python port) side by side with our engine on pyRadPlan's own TG-119 phantom (issue 13).

    bash benchmarks/peer_env.sh              # once: .bench-venv with pyRadPlan and rtautoplan (no torch)
    .bench-venv/bin/python benchmarks/bench_pyradplan.py [--modalities photon proton] [--max-iter 1000]
                                                         [--no-results]

The phantom is ``pyRadPlan.load_tg119()`` (CT 167 × 167 × 129, 3 × 3 × 2.5 mm; OuterTarget, Core, BODY)
converted to our ``Case`` (same HU array, masks and grid; OuterTarget → PTV 50 Gy, Core → OAR, BODY →
External; planning masks with pyRadPlan's overlap priorities: target > Core > BODY). Both engines get
the same problem:

* beams: photons 9 equispaced coplanar fields (0°, 40°, …), 5 mm beamlets; protons 3 fields (0°, 120°,
  240°), 5 mm lateral spot spacing; the isocentre is pyRadPlan's (target centroid);
* dose grid 6 × 6 × 5 mm (x, y, z): ours = CT blocks (2, 2, 2), pyRadPlan ``dose_grid`` resolution;
* objectives: those TG-119 ships in pyRadPlan's structure set (squared deviation OuterTarget 50 Gy,
  weight 1000; squared overdose Core 25 Gy, 300; squared overdose BODY 30 Gy, 100); ours as UNIFORM
  and DMAX, the same functions (1/N Σ (d − D)² and 1/N Σ (d − D)₊²) on the same overlap-resolved masks;
* every engine default otherwise (pyRadPlan: SVD pencil beam with its dij sampling, Hong pencil beam;
  ours: ``dose_influence`` / ``spot_influence``), each start point its own (pyRadPlan x0 = 0; ours
  uniform fluence with mean PTV dose 50 Gy).

Every measurement runs in a fresh subprocess on one core (OMP/OpenBLAS/MKL threads 1,
RTAUTOPLAN_THREADS 1). Build: wall time of the dose-influence computation (pyRadPlan: ``generate_stf``
excluded, reported apart), entries, shape, bytes of the finished matrix, and the build's peak RSS
(VmHWM after resetting it through /proc/self/clear_refs once the inputs are loaded; the RSS before the
build is given too). Optimisation: each optimiser's own default stopping rule, and one common rule
applied to both through the solvers' iteration callbacks: stop at the first iteration k ≥ 10 with
f_{k−10} − f_k ≤ 1e-4 · f_k (relative objective decrease over 10 iterations), capped at ``--max-iter``.
Plan quality is computed by us on the CT grid (pyRadPlan's dose via ``compute_result_ct_grid``, ours
trilinear) with the original masks, raw and normalised to PTV D95 = 50 Gy (equal coverage).

Cross runs separate the optimiser from the dose engine: our ``solve_lbfgs`` on pyRadPlan's matrix
(rows of its overlap-resolved dose-grid masks) and pyRadPlan's IPOPT solver class on our plan objective.
The script prints the tables and ratios and replaces the section "pyRadPlan side by side (issue 13)"
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from common import machine, write_results  # noqa: E402

SECTION = "## pyRadPlan side by side (issue 13)"
RX_GY = 50.0
WINDOW, REL_TOL = 10, 1e-4
OBJECTIVES = (("PTV", "UNIFORM", 50.0, 1000.0), ("Core", "DMAX", 25.0, 300.0), ("BODY", "DMAX", 30.0, 100.0))
PRP_NAMES = {"PTV": "OuterTarget", "Core": "Core", "BODY": "BODY"}
SETUP = {"photon": {"angles": 9, "factor": (2, 2, 2)}, "proton": {"angles": 3, "factor": (2, 2, 2)}}
ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RTAUTOPLAN_THREADS": "1",
            "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}


# --- memory and the common stopping rule ---------------------------------------------------------


def _status(key: str) -> float:
    """VmRSS / VmHWM of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> float:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); the RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


class CommonRule:
    """The common stopping rule on per-iteration objective values (module docstring), applied to the best
    value so far: an interior-point method's f may rise between iterations (it minimises the barrier
    function), and a rise must not count as "no progress". For L-BFGS-B (monotone) it is solve_lbfgs's rule."""

    def __init__(self):
        self.history: list[float] = []

    def done(self, value: float) -> bool:
        best = min(float(value), self.history[-1]) if self.history else float(value)
        self.history.append(best)
        if len(self.history) <= WINDOW:
            return False
        return self.history[-1 - WINDOW] - self.history[-1] <= REL_TOL * abs(self.history[-1])


def iterations_to(history, fraction):
    """First iteration (1-based) whose objective is within ``fraction`` of the last one."""
    h = np.asarray(history, float)
    if not h.size:
        return None
    hit = np.flatnonzero(h <= h[-1] * (1.0 + fraction))
    return int(hit[0]) + 1


# --- the phantom ---------------------------------------------------------------------------------


def prp_phantom():
    """pyRadPlan's TG-119 CT and structure set."""
    from pyRadPlan import load_tg119

    return load_tg119()


def export_case(path: Path) -> dict:
    """Write TG-119 (HU, masks, grid) as our arrays to ``path`` (.npz); pyRadPlan's isocentre and facts."""
    import SimpleITK as sitk
    from pyRadPlan import PhotonPlan, generate_stf

    ct, cst = prp_phantom()
    masks = {v.name: sitk.GetArrayFromImage(v.mask).astype(bool) for v in cst.vois}
    res = ct.resolution
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": [0.0], "couch_angles": [0.0], "bixel_width": 5.0}
    iso = np.asarray(generate_stf(ct, cst, pln).beams[0].iso_center, float)
    np.savez(path, hu=sitk.GetArrayFromImage(ct.cube_hu).astype(np.float32), origin=np.asarray(ct.origin, float),
             spacing=np.array([res["z"], res["y"], res["x"]], float), iso=iso,
             **{f"mask_{k}": v for k, v in masks.items()})
    return {"shape": list(masks["BODY"].shape), "spacing": [res["z"], res["y"], res["x"]], "iso": iso.tolist(),
            "voxels": {k: int(v.sum()) for k, v in masks.items()}}


def load_case(path: Path):
    """Our ``Case`` of the exported phantom and pyRadPlan's isocentre."""
    from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure

    z = np.load(path)
    ptv, core, body = z["mask_OuterTarget"], z["mask_Core"], z["mask_BODY"]
    grid = Grid(tuple(z["origin"]), tuple(z["spacing"]), tuple(int(n) for n in ptv.shape))
    structures = (
        Structure("PTV", ptv, Role.PTV, level=2, rx_gy=RX_GY),
        Structure("Core", core, Role.OAR, level=1, planning_mask=core & ~ptv),
        Structure("BODY", body, Role.EXTERNAL, planning_mask=body & ~ptv & ~core),
    )
    case = Case("TG119", grid, z["hu"], structures, Prescription((DoseLevel("PTV", RX_GY),), 30))
    return case, tuple(float(v) for v in z["iso"])


def beams(modality: str, iso):
    """The equispaced beam set of ``modality`` at ``iso``."""
    from rtautoplan.plan import Beam, Modality

    n = SETUP[modality]["angles"]
    mod = Modality.PHOTON if modality == "photon" else Modality.PROTON
    return tuple(Beam(f"G{360.0 * i / n:05.1f}", 360.0 * i / n, iso, modality=mod) for i in range(n))


# --- workers (each in a fresh subprocess) ----------------------------------------------------------


def ours_build(case, iso, modality):
    """Our dose influence / spot influence matrix."""
    from rtautoplan.physics.dij import dose_influence
    from rtautoplan.physics.ion_dij import spot_influence

    factor = SETUP[modality]["factor"]
    if modality == "photon":
        return dose_influence(case, beams(modality, iso), beamlet_mm=5.0, dose_grid_factor=factor)
    return spot_influence(case, beams(modality, iso), ion="proton", spot_spacing_mm=5.0, dose_grid_factor=factor)


def prp_plan(modality):
    """pyRadPlan plan object: the beam set and dose grid of ``SETUP``."""
    from pyRadPlan import IonPlan, PhotonPlan

    n = SETUP[modality]["angles"]
    pln = PhotonPlan(machine="Generic") if modality == "photon" else IonPlan(radiation_mode="protons",
                                                                             machine="Generic")
    pln.prop_stf = {"gantry_angles": np.linspace(0, 360, n, endpoint=False).tolist(), "couch_angles": [0.0] * n,
                    "bixel_width": 5.0}
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": 6.0, "y": 6.0, "z": 5.0}}}
    return pln


def matrix_facts(m) -> dict:
    """Shape, entries, bytes and layout of a scipy sparse matrix."""
    nbytes = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
    return {"shape": list(m.shape), "nnz": int(m.nnz), "bytes": int(nbytes), "format": m.format,
            "dtypes": f"{m.data.dtype}/{m.indices.dtype}"}


def worker_build(side, modality, case_path):
    """Build once; time, matrix facts, peak RSS."""
    if side == "ours":
        case, iso = load_case(case_path)
        base = reset_peak()
        t, c = time.perf_counter(), time.process_time()
        dij = ours_build(case, iso, modality)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": base, "peak_mb": _status("VmHWM"),
                **matrix_facts(dij.matrix),
                "beamlets": int(dij.n_beamlets)}
    from pyRadPlan import calc_dose_influence, generate_stf

    ct, cst = prp_phantom()
    pln = prp_plan(modality)
    t = time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    stf_s = time.perf_counter() - t
    base = reset_peak()
    t, c = time.perf_counter(), time.process_time()
    dij = calc_dose_influence(ct, cst, stf, pln)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    m = dij.physical_dose.flat[0]
    return {"seconds": seconds, "cpu_s": cpu, "stf_seconds": stf_s, "rss_before_mb": base, "peak_mb": _status("VmHWM"),
            **matrix_facts(m), "beamlets": int(dij.total_num_of_bixels)}


def our_objective(matrix, rows, threads=1):
    """Our plan objective of ``OBJECTIVES`` on ``matrix`` with structure rows ``rows``."""
    from rtautoplan.optimize.objectives import plan_objective
    from rtautoplan.plan import Objective, ObjectiveKind

    objs = [Objective(s, ObjectiveKind[k], d, w) for s, k, d, w in OBJECTIVES]
    return plan_objective(matrix, objs, rows, threads=threads)


def run_ours(f, x0, **rule):
    """solve_lbfgs with a per-evaluation value trace; its result as a dict."""
    from rtautoplan.optimize.lbfgs import solve_lbfgs

    values = []

    def traced(x):
        v, g = f(x)
        values.append(float(v))
        return v, g

    traced.curvature_diagonal = f.curvature_diagonal
    t, c = time.perf_counter(), time.process_time()
    sol = solve_lbfgs(traced, x0, **rule)
    seconds = time.perf_counter() - t
    return sol.x, {"seconds": seconds, "cpu_s": time.process_time() - c, "iterations": sol.iterations,
                   "evaluations": sol.evaluations,
                   "f": float(sol.value), "message": sol.message, "eval_ms": 1e3 * seconds / max(sol.evaluations, 1),
                   "to_1pct": iterations_to(_iteration_values(values), 0.01),
                   "to_10pct": iterations_to(_iteration_values(values), 0.10)}


def _iteration_values(values):
    """Running minimum of evaluation values: a monotone proxy of the per-iteration objective."""
    return np.minimum.accumulate(np.asarray(values, float)) if values else values


def worker_opt_ours(modality, case_path, out_npz, max_iter):
    """Our optimiser on our matrix: default rule, common rule; CT-grid doses to ``out_npz``."""
    from rtautoplan.physics.dij import dose_to_grid

    case, iso = load_case(case_path)
    dij = ours_build(case, iso, modality)
    rows = {s.name: dij.rows_of(s.voxels) for s in case.structures}
    t = time.perf_counter()
    f = our_objective(dij.matrix, rows)
    setup_s = time.perf_counter() - t
    ptv = rows["PTV"]
    x_unit = np.ones(dij.n_beamlets)
    x0 = x_unit * RX_GY / float(np.mean(dij.matrix[ptv] @ x_unit.astype(np.float32)))
    out, doses = {"setup_s": setup_s, "rows_used": int(f.view.shape[0]), "nnz_used": int(f.view.nnz)}, {}
    runs = {"default": {}, "common": {"tol": REL_TOL, "window": WINDOW, "f_scale": 0.0, "max_iter": max_iter}}
    for name, rule in runs.items():
        x, info = run_ours(f, x0, **rule)
        out[name] = info
        doses[name] = dose_to_grid(dij.dose_array(x), dij.dose_grid, case.grid).astype(np.float32)
    x, info = run_ours(f, np.zeros(dij.n_beamlets), **runs["common"])
    out["common_from_zero"] = info
    x, info = run_ours(f, x0, **runs["common"], scale=None)
    out["common_no_jacobi"] = info
    out["ipopt_on_ours"] = ipopt_on(f, x0, max_iter)
    np.savez_compressed(out_npz, **doses)
    return out


def ipopt_on(f, x0, max_iter):
    """pyRadPlan's IPOPT solver class (its default options) on our plan objective, common rule."""
    from pyRadPlan.optimization.solvers._ipopt import OptimizerIpopt

    solver = OptimizerIpopt()
    solver.display = False
    solver.max_iter = max_iter
    cache = {}

    def both(x):
        key = x.tobytes()
        if cache.get("key") != key:
            cache["key"], cache["val"] = key, f(x)
        return cache["val"]

    solver.objective = lambda x: float(both(np.asarray(x))[0])
    solver.gradient = lambda x: both(np.asarray(x))[1]
    rule = CommonRule()
    original = solver._callback

    def callback(*args):
        if len(args) >= 3 and rule.done(args[2]):
            return False
        return original(*args)

    solver._callback = callback
    t, c = time.perf_counter(), time.process_time()
    x, info = solver.solve(np.asarray(x0, float))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "cpu_s": time.process_time() - c, "iterations": info["num_iter"],
            "f": float(f(np.asarray(x))[0]),
            "status": info["status"], "to_1pct": iterations_to(rule.history, 0.01),
            "to_10pct": iterations_to(rule.history, 0.10)}


def prp_solve(ct, cst, stf, dij, modality, solver, max_iter=None, common=False):
    """One pyRadPlan ``fluence_optimization``: (weights, facts)."""
    from pyRadPlan import fluence_optimization
    from pyRadPlan.optimization.solvers._ipopt import OptimizerIpopt
    from pyRadPlan.optimization.solvers._scipy_solver import OptimizerSciPy

    pln = prp_plan(modality)
    pln.prop_opt = {"solver": solver, "display": False, **({"max_iter": max_iter} if max_iter else {})}
    rule = CommonRule()
    patched = []
    if common:
        for cls in (OptimizerIpopt, OptimizerSciPy):
            original = cls._callback

            def callback(self, *args, _original=original, _cls=cls):
                if _cls is OptimizerIpopt and len(args) >= 3 and rule.done(args[2]):
                    return False
                if _cls is OptimizerSciPy and rule.done(getattr(args[0], "fun", np.nan)):
                    raise StopIteration("common rule")
                return _original(self, *args)

            cls._callback = callback
            patched.append((cls, original))
    info = {}
    try:
        t, c = time.perf_counter(), time.process_time()
        w = fluence_optimization(ct, cst, stf, dij, pln, opt_info=info)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        for cls, original in patched:
            cls._callback = original
    hist = info.get("obj_history", [])
    result = info.get("result_info", {})
    status, message = result.get("status"), str(result.get("message", ""))
    value = result.get("objective", result.get("fun", hist[-1] if hist else float("nan")))
    per_iter = rule.history if common else None
    return w, {"seconds": seconds, "cpu_s": cpu, "iterations": int(info.get("num_iter", -1)), "evaluations": len(hist),
               "f": float(value), "status": status, "message": message,
               "eval_ms": 1e3 * seconds / max(len(hist), 1),
               "to_1pct": iterations_to(per_iter, 0.01) if per_iter else None,
               "to_10pct": iterations_to(per_iter, 0.10) if per_iter else None}


def prp_rows(ct, cst, dij):
    """Dose-grid rows of the overlap-resolved structures, as pyRadPlan's problem builds them."""
    grid_ct = ct.resample_to_grid(dij.dose_grid)
    resolved = cst.apply_overlap_priorities().resample_on_new_ct(grid_ct)
    by_name = {v.name: np.asarray(v.indices_numpy, np.int64) for v in resolved.vois}
    return {ours: np.sort(by_name[theirs]) for ours, theirs in PRP_NAMES.items()}


def worker_opt_prp(modality, case_path, out_npz, max_iter):
    """pyRadPlan's optimiser on its matrix: IPOPT default, IPOPT common rule, scipy L-BFGS-B default;
    our solve_lbfgs on its matrix; CT-grid doses to ``out_npz``."""
    import SimpleITK as sitk
    from pyRadPlan import calc_dose_influence, generate_stf

    ct, cst = prp_phantom()
    pln = prp_plan(modality)
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    out, doses = {}, {}
    runs = {"default": ("ipopt", None, False), "common": ("ipopt", max_iter, True),
            "scipy_default": ("scipy", None, False)}
    for name, (solver, cap, common) in runs.items():
        w, info = prp_solve(ct, cst, stf, dij, modality, solver, cap, common)
        out[name] = info
        doses[name] = sitk.GetArrayFromImage(dij.compute_result_ct_grid(w)["physical_dose"]).astype(np.float32)
    rows = prp_rows(ct, cst, dij)
    matrix = dij.physical_dose.flat[0].tocsr()
    matrix.indices = matrix.indices.astype(np.int32)
    matrix.indptr = matrix.indptr.astype(np.int64)
    f = our_objective(matrix, rows)
    x, info = run_ours(f, np.zeros(matrix.shape[1]), tol=REL_TOL, window=WINDOW, f_scale=0.0, max_iter=max_iter)
    out["ours_on_prp"] = info
    out["ours_on_prp"]["f_scipy_x"] = float(f(np.asarray(w))[0])
    np.savez_compressed(out_npz, **doses)
    return out


def worker(args) -> dict:
    """Dispatch one worker run (``--worker``)."""
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    case_path, tmp = Path(args.case), Path(args.tmp)
    if args.worker == "build":
        return worker_build(args.side, args.modality, case_path)
    out_npz = tmp / f"dose_{args.side}_{args.modality}.npz"
    if args.side == "ours":
        return worker_opt_ours(args.modality, case_path, out_npz, args.max_iter)
    return worker_opt_prp(args.modality, case_path, out_npz, args.max_iter)


def spawn(kind, side, modality, case_path, tmp, max_iter) -> dict:
    """Run one worker in a fresh interpreter on one core; its JSON result."""
    env = {**os.environ, **ONE_CORE}
    cmd = [sys.executable, __file__, "--worker", kind, "--side", side, "--modality", modality, "--case", str(case_path),
           "--tmp", str(tmp), "--max-iter", str(max_iter)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker {kind} {side} {modality} failed:\n{proc.stderr[-3000:]}")
    print(f"  {kind:5s} {side:4s} {modality}: {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(lines[-1][7:])


# --- report --------------------------------------------------------------------------------------


def quality(dose, masks) -> dict:
    """TG-119 metrics (Gy) on the CT grid: PTV D95, D2, D10, Dmean; Core D10, Dmean; BODY Dmean."""
    from rtautoplan.dvh import d2, d95, d_percent, dmean

    ptv, core, body = masks["OuterTarget"], masks["Core"], masks["BODY"]
    return {"PTV D95": d95(dose, ptv), "PTV D2": d2(dose, ptv), "PTV D10": d_percent(dose, ptv, 10.0),
            "PTV Dmean": dmean(dose, ptv), "Core D10": d_percent(dose, core, 10.0), "Core Dmean": dmean(dose, core),
            "BODY Dmean": dmean(dose, body)}


def qcell(q: dict, normalise: bool) -> str:
    """Quality as text; normalised to PTV D95 = Rx (all metrics scale with the dose)."""
    s = RX_GY / q["PTV D95"] if normalise else 1.0
    return ", ".join(f"{k} {v * s:.1f}" for k, v in q.items() if not (normalise and k == "PTV D95"))


def fmt_ratio(ours, theirs):
    """theirs / ours as "3.2×" (how many times ours is faster / smaller)."""
    if not ours or not theirs:
        return "—"
    return f"{theirs / ours:.1f}×"


def secs(a) -> str:
    """Wall and CPU seconds of a result as "7.2 (CPU 4.5)"."""
    return f"{a['seconds']:.1f} (CPU {a['cpu_s']:.1f})"


NOTES = """Reading the numbers. Both sides solve the same problem: the objectives TG-119 ships in pyRadPlan
(squared deviation OuterTarget 50 Gy ×1000, squared overdose Core 25 Gy ×300 and BODY 30 Gy ×100, voxel
means, overlap-resolved masks), the same beams at the same isocentre, the same dose-grid spacing. Evaluating
our objective code on pyRadPlan's matrix at pyRadPlan's scipy solution gives pyRadPlan's own final f to 6
digits, so the two objectives are the same function. What differs is the dose engine (ours: two-Gaussian
pencil beam with a 50 mm cutoff, rows = dose voxels in BODY; pyRadPlan: SVD pencil beam, rows = every
dose-grid voxel, CSC with int64 indices; its `enable_dij_sampling` is on by default but `_sample_dij` is not
implemented in 0.5.0, so nothing is sampled) and so f* (f is not comparable across engines; it is across
optimisers on one matrix: the cross runs). The machine was shared (load average above, 2 cores), so wall
times are inflated by up to 2×; CPU seconds of the one-thread process are the steadier number and the ratios
use them. Iterations: L-BFGS-B iterations of ours and of scipy, IPOPT iterations (one evaluation each, plus
its own limited-memory quasi-Newton linear algebra) of pyRadPlan's default. "to 10 % / 1 %": first
iteration (ours: evaluation) whose best f is within 10 % / 1 % of the run's final f. Quality on the CT
grid with the original masks, by our DVH code for both; the normalised column scales each plan to PTV
D95 = 50 Gy (equal coverage; every D metric scales with the dose). Peak RSS: VmHWM of the worker after
resetting it when the inputs were loaded, i.e. the build's own peak over the loaded case (its RSS before the
build in brackets; pyRadPlan's includes its imports and CT/structure objects).
"""


def section(results, machine_info, versions, command) -> str:
    """The RESULTS.md section."""
    lines = [SECTION, "", f"`{command}`, {machine_info['date']}. Machine: {machine_info['nproc']} × "
             f"{machine_info['cpu']}, one core per measurement (threads 1), load average at the end "
             f"{machine_info['load']}; Python {machine_info['python']}, numpy {machine_info['numpy']}, scipy "
             f"{machine_info['scipy']}, " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Environment: "
             "`bash benchmarks/peer_env.sh` (pinned, benchmark only).", ""]
    for modality, r in results.items():
        lines += modality_md(modality, r)
    return "\n".join(lines + [NOTES])


def modality_md(modality, r) -> list[str]:
    """Tables of one modality."""
    bo, bp, oo, op = r["build_ours"], r["build_prp"], r["opt_ours"], r["opt_prp"]
    n = SETUP[modality]["angles"]
    title = (f"**{modality}: TG-119, {n} equispaced fields, 5 mm {'beamlets' if modality == 'photon' else 'spots'}, "
             f"dose grid 6 × 6 × 5 mm**")
    out = [title, "", "| | ours | pyRadPlan | pyRadPlan / ours (CPU s) |", "| --- | ---: | ---: | ---: |"]
    out.append(f"| dose influence build, s | {secs(bo)} | {secs(bp)} (+ stf {bp['stf_seconds']:.1f}) "
               f"| {fmt_ratio(bo['cpu_s'], bp['cpu_s'])} |")
    out.append(f"| beamlets / spots | {bo['beamlets']} | {bp['beamlets']} | |")
    out.append(f"| matrix rows × columns | {bo['shape'][0]} × {bo['shape'][1]} | "
               f"{bp['shape'][0]} × {bp['shape'][1]} | |")
    out.append(f"| non-zeros (M) | {bo['nnz'] / 1e6:.1f} | {bp['nnz'] / 1e6:.1f} | {fmt_ratio(bo['nnz'], bp['nnz'])} |")
    out.append(f"| matrix bytes (MB), layout | {bo['bytes'] / 2**20:.0f}, {bo['format']} {bo['dtypes']} | "
               f"{bp['bytes'] / 2**20:.0f}, {bp['format']} {bp['dtypes']} | {fmt_ratio(bo['bytes'], bp['bytes'])} |")
    out.append(f"| build peak RSS, MB (RSS before the build) | {bo['peak_mb']:.0f} ({bo['rss_before_mb']:.0f}) | "
               f"{bp['peak_mb']:.0f} ({bp['rss_before_mb']:.0f}) | {fmt_ratio(bo['peak_mb'], bp['peak_mb'])} |")
    for name, label in (("common", "optimisation, common rule"), ("default", "optimisation, own default rule")):
        a, b = oo[name], op[name]
        out.append(f"| {label}: s (iterations) | {secs(a)} ({a['iterations']}) | {secs(b)} ({b['iterations']}) | "
                   f"{fmt_ratio(a['cpu_s'], b['cpu_s'])} |")
    a, b = oo["common"], op["common"]
    out.append(f"| CPU ms per iteration | {1e3 * a['cpu_s'] / a['iterations']:.1f} | "
               f"{1e3 * b['cpu_s'] / b['iterations']:.1f} | "
               f"{fmt_ratio(a['cpu_s'] / a['iterations'], b['cpu_s'] / b['iterations'])} |")
    out += ["", "| plan | f at stop | quality (Gy, CT grid, raw) | normalised to PTV D95 = 50 Gy |",
            "| --- | ---: | --- | --- |"]
    for label, side, name in (("ours, common rule", oo, "common"), ("ours, default rule (solve_lbfgs)", oo, "default"),
                              ("pyRadPlan IPOPT, common rule", op, "common"),
                              ("pyRadPlan IPOPT, default (500 it cap)", op, "default"),
                              ("pyRadPlan scipy L-BFGS-B, default", op, "scipy_default")):
        q = side["quality"][name]
        out.append(f"| {label} | {side[name]['f']:.4g} | {qcell(q, False)} | {qcell(q, True)} |")
    out += ["", "Optimiser runs (common rule unless said):", "",
            "| run | s | iterations | to 10 % / 1 % | f | stop |", "| --- | ---: | ---: | --- | ---: | --- |"]
    rows = (("ours: L-BFGS-B + Jacobi, our matrix, uniform start", oo["common"]),
            ("ours, from x = 0", oo["common_from_zero"]), ("ours without Jacobi scaling", oo["common_no_jacobi"]),
            ("pyRadPlan's IPOPT class (its options) on our objective, uniform start", oo["ipopt_on_ours"]),
            ("pyRadPlan: IPOPT on its matrix, x = 0", op["common"]),
            ("pyRadPlan: scipy L-BFGS-B default (ftol = gtol = 1e-5, 500 it) on its matrix", op["scipy_default"]),
            ("ours: L-BFGS-B + Jacobi on pyRadPlan's matrix, x = 0", op["ours_on_prp"]))
    for label, a in rows:
        stop = a.get("message") or f"IPOPT status {a.get('status')}"
        stop = {"IPOPT status 5": "common rule (IPOPT user stop)", "IPOPT status -1": "max_iter"}.get(stop, stop)
        stop = "common rule" if stop.startswith("objective decreased") else stop
        reach = f"{a.get('to_10pct') or '—'} / {a.get('to_1pct') or '—'}"
        out.append(f"| {label} | {secs(a)} | {a['iterations']} | {reach} | {a['f']:.4g} | {stop[:60]} |")
    out.append("")
    return out


def versions() -> dict:
    """Versions of the peer and its solver."""
    from importlib.metadata import version

    return {name: version(name) for name in ("pyRadPlan", "ipyopt", "SimpleITK", "rtautoplan")}


def main(argv=None):
    """Run every measurement and write the section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modalities", nargs="+", default=["photon", "proton"], choices=sorted(SETUP))
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--worker", choices=["build", "opt"])
    ap.add_argument("--side", choices=["ours", "prp"])
    ap.add_argument("--modality", choices=sorted(SETUP))
    ap.add_argument("--case")
    ap.add_argument("--tmp")
    args = ap.parse_args(argv)
    os.environ.update(ONE_CORE)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        case_path = Path(tmp) / "tg119.npz"
        facts = export_case(case_path)
        print(f"TG-119: {facts}", flush=True)
        masks = {k[5:]: v for k, v in np.load(case_path).items() if k.startswith("mask_")}
        for modality in args.modalities:
            r = {f"{kind}_{side}": spawn(kind, side, modality, case_path, tmp, args.max_iter)
                 for kind in ("build", "opt") for side in ("ours", "prp")}
            for side in ("ours", "prp"):
                doses = np.load(Path(tmp) / f"dose_{side}_{modality}.npz")
                r[f"opt_{side}"]["quality"] = {k: quality(doses[k], masks) for k in doses.files}
            results[modality] = r
            print(json.dumps(r, indent=1, default=str), flush=True)
    command = ".bench-venv/bin/python benchmarks/bench_pyradplan.py " + " ".join(argv or sys.argv[1:])
    text = section(results, machine(), versions(), command.strip())
    print(text)
    if not args.no_results:
        write_results(text)


if __name__ == "__main__":
    main()
