"""Issue 3's targets table of the engine benchmark: time and plan quality of what the adapter runs."""

from __future__ import annotations

import contextlib
import time

import numpy as np

import rtautoplan.optimize.lbfgs as lbfgs_module
import rtautoplan.optimize.objectives as objectives_module
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import plan_objective
from rtautoplan.physics.dij import dij_cached, dose_to_grid

from cases import SIZES, quality, quality_cell, start_point
from common import best_of


def plan_quality(case, dij, x) -> dict:
    """``cases.quality`` of the dose of beamlet weights x interpolated onto the CT grid (as
    tests/test_plan_hn01.py)."""
    return quality(case, dose_to_grid(dij.dose_array(x), dij.dose_grid, case.grid))


@contextlib.contextmanager
def previous_engine():
    """The engine as it was before issue 3's speed work (same run, for a ratio): M x on every used row
    and Mᵀ g on all of them, OpenBLAS free to use all its threads inside L-BFGS-B, no cached curvature
    (the float32 curvature diagonal and the faster ``rows_of`` stay)."""
    saved = (objectives_module.ACTIVE_NNZ_FRACTION, objectives_module.SCREEN_DMAX_ROWS, lbfgs_module._one_blas_thread)
    objectives_module.ACTIVE_NNZ_FRACTION, objectives_module.SCREEN_DMAX_ROWS = 0.0, False
    lbfgs_module._one_blas_thread = contextlib.nullcontext
    try:
        yield
    finally:
        (objectives_module.ACTIVE_NNZ_FRACTION, objectives_module.SCREEN_DMAX_ROWS,
         lbfgs_module._one_blas_thread) = saved


def _row(label, seconds, sol, fstar, q):
    return {"label": label, "s": seconds, "it": sol.iterations if sol is not None else None,
            "gap": (sol.value - fstar) if sol is not None else None, "q": q}


def target_rows(name, case, objectives, tighter, beams, dij, rows, x0, fstar, fstar_warm, repeat):
    """Cold, warm and coarse-to-fine solves with the default stopping rule, each timed ``repeat``
    times (best shown), with f − f* and the DVH metrics of the solution."""
    out = []

    def fresh():
        return plan_objective(dij.matrix, objectives, rows)

    for label, ctx in (("cold, previous engine", previous_engine), ("cold, now", contextlib.nullcontext)):
        with ctx():
            t, sol = best_of(lambda: solve_lbfgs(fresh(), x0), repeat)
        out.append(_row(label + " (build + solve)", t, sol, fstar, plan_quality(case, dij, sol.x)))
    cold = solve_lbfgs(fresh(), x0)
    with previous_engine():
        t, sol = best_of(lambda: solve_lbfgs(plan_objective(dij.matrix, tighter, rows), cold.x), repeat)
    out.append(_row("warm, previous engine (rebuild + solve)", t, sol, fstar_warm, plan_quality(case, dij, sol.x)))
    f = fresh()
    f.curvature_diagonal()
    t, sol = best_of(lambda: solve_lbfgs(f.with_objectives(tighter), cold.x), repeat)
    out.append(_row("warm, now (with_objectives + solve)", t, sol, fstar_warm, plan_quality(case, dij, sol.x)))
    # coarse-to-fine: the (2, 4, 4) matrix of the same beams (same beamlets), its solution as x0
    coarse = dij_cached(case, beams, dose_grid_factor=SIZES["small"])
    assert all(np.array_equal(a, b) for a, b in zip(coarse.beamlets, dij.beamlets))
    c_rows = {o.structure: coarse.rows_of(case.structure(o.structure).voxels) for o in objectives}
    c_objs = tuple(o for o in objectives if c_rows[o.structure].size)

    def coarse_to_fine():
        xc = solve_lbfgs(plan_objective(coarse.matrix, c_objs, c_rows), start_point(case, coarse, c_rows)).x
        return xc, solve_lbfgs(fresh(), xc)

    t, (xc, sol) = best_of(coarse_to_fine, repeat)
    out.append(_row(f"coarse-to-fine (coarse solve + fine solve; f(x_coarse) − f* = "
                    f"{fresh()(xc)[0] - fstar:.3g})", t, sol, fstar, plan_quality(case, dij, sol.x)))
    out.append(_row("coarse solution alone (on the fine grid)", float("nan"), None, fstar, plan_quality(case, dij, xc)))
    # the adapter, end to end (rows, objective, solve, dose onto the CT grid)
    tps = InHousePhoton()
    tps.prepare(case, beams)
    t = time.perf_counter()
    tps.optimize(objectives)
    t_cold = time.perf_counter() - t
    ref = plan_objective(dij.matrix, objectives, rows)
    x_cold = np.concatenate(tps.plan().weights)
    out.append({"label": "InHousePhoton.optimize, cold", "s": t_cold, "it": None,
                "gap": float(ref(x_cold)[0]) - fstar, "q": plan_quality(case, dij, x_cold)})
    t = time.perf_counter()
    tps.optimize(tighter)
    t_warm = time.perf_counter() - t
    x_warm = np.concatenate(tps.plan().weights)
    out.append({"label": "InHousePhoton.optimize, warm (one OAR limit −20 %)", "s": t_warm, "it": None,
                "gap": float(ref.with_objectives(tighter)(x_warm)[0]) - fstar_warm, "q": plan_quality(case, dij, x_warm)})
    return out


def targets_md(name, size, rows_out):
    """The targets table (markdown lines) of one case and size."""
    lines = [f"**{name} / {size}**: the default stopping rule, best of the repeats; f − f* in Gy²; DVH metrics in Gy "
             "on the CT grid (full masks).", "",
             "| run | s | iterations | f − f* | D98 per CTV, cord Dmax |", "| --- | ---: | ---: | ---: | --- |"]
    for r in rows_out:
        it = "—" if r["it"] is None else str(r["it"])
        gap = "—" if r["gap"] is None else f"{r['gap']:.3g}"
        secs = "—" if not np.isfinite(r["s"]) else f"{r['s']:.2f}"
        lines.append(f"| {r['label']} | {secs} | {it} | {gap} | {quality_cell(r['q'])} |")
    return lines
