"""Baselines the engine is measured against: plain scipy L-BFGS-B and CVXPY + Clarabel."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
from scipy import sparse
from scipy.optimize import minimize

from rtautoplan.plan import ObjectiveKind

from common import Trace


def plain_objective(matrix, objectives, rows):
    """The obvious float64 objective: each term multiplies its own row block of D."""
    blocks = [sparse.csr_matrix(matrix[rows[o.structure]], dtype=np.float64) for o in objectives]

    def f(x):
        value, grad = 0.0, np.zeros(x.size)
        for o, block in zip(objectives, blocks):
            d = block @ x
            n = d.size
            if o.kind is ObjectiveKind.DMAX:
                r = np.maximum(d - o.dose_gy, 0.0)
                value += o.weight * (r @ r) / n
                grad += block.T @ (2.0 * o.weight / n * r)
            elif o.kind is ObjectiveKind.DMIN:
                r = np.minimum(d - o.dose_gy, 0.0)
                value += o.weight * (r @ r) / n
                grad += block.T @ (2.0 * o.weight / n * r)
            elif o.kind is ObjectiveKind.DMEAN:
                e = max(float(d.mean()) - o.dose_gy, 0.0)
                value += o.weight * e * e
                grad += block.T @ np.full(n, 2.0 * o.weight * e / n)
            elif o.kind is ObjectiveKind.UNIFORM:
                r = d - o.dose_gy
                value += o.weight * (r @ r) / n
                grad += block.T @ (2.0 * o.weight / n * r)
            else:
                raise ValueError(f"{o.kind} is not in the seed-002 convex QP")
        return value, grad

    return f


def scipy_lbfgsb(trace: Trace, x0) -> Trace:
    """Textbook ``minimize(method="L-BFGS-B")`` (x ≥ 0, memory 10, ftol = gtol = 0) on a Trace, until
    ``trace.done()``."""

    def callback(intermediate_result):
        if trace.done():
            raise StopIteration

    minimize(trace, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * x0.size, callback=callback,
             options={"maxcor": 10, "maxiter": 100_000, "maxfun": 100_000, "ftol": 0.0, "gtol": 0.0})
    return trace


def run_scipy(matrix, objectives, rows, x0, target, budget) -> Trace:
    """Plain scipy L-BFGS-B on ``plain_objective`` until f ≤ target or ``budget`` s: the trace."""
    return scipy_lbfgsb(Trace(plain_objective(matrix, objectives, rows), target=target, budget=budget), x0)


def plain_scipy_to(f, x0, target, budget):
    """Plain scipy L-BFGS-B on f from x0 until f ≤ target or ``budget`` s: (seconds or None, evaluations)."""
    trace = scipy_lbfgsb(Trace(f, target=target, budget=budget), x0)
    return trace.time_to(target)[0], len(trace.v)


def cvx_versions() -> str:
    """"cvxpy X, clarabel Y", or "cvxpy absent"."""
    try:
        import clarabel
        import cvxpy
    except ImportError:
        return "cvxpy absent"
    return f"cvxpy {cvxpy.__version__}, clarabel {getattr(clarabel, '__version__', '?')}"


def _cvxpy_worker(matrix, objectives, rows, queue):
    import cvxpy as cp

    start = time.perf_counter()
    x = cp.Variable(matrix.shape[1], nonneg=True)
    terms = []
    for o in objectives:
        block = sparse.csr_matrix(matrix[rows[o.structure]], dtype=np.float64)
        n = block.shape[0]
        if o.kind is ObjectiveKind.DMAX:
            terms.append(o.weight / n * cp.sum_squares(cp.pos(block @ x - o.dose_gy)))
        elif o.kind is ObjectiveKind.DMIN:
            terms.append(o.weight / n * cp.sum_squares(cp.pos(o.dose_gy - block @ x)))
        elif o.kind is ObjectiveKind.DMEAN:
            mean_row = np.asarray(block.mean(axis=0)).ravel()
            terms.append(o.weight * cp.square(cp.pos(mean_row @ x - o.dose_gy)))
        elif o.kind is ObjectiveKind.UNIFORM:
            terms.append(o.weight / n * cp.sum_squares(block @ x - o.dose_gy))
        else:
            raise ValueError(f"{o.kind} is not in the seed-002 convex QP")
    prob = cp.Problem(cp.Minimize(cp.sum(terms)))
    prob.solve(solver=cp.CLARABEL)
    queue.put({"x": np.asarray(x.value, float), "time": time.perf_counter() - start,
               "solve_time": float(prob.solver_stats.solve_time or np.nan), "status": prob.status,
               "cvxpy": cp.__version__})


def run_cvxpy(matrix, objectives, rows, budget):
    """CVXPY + Clarabel on the same convex QP in a forked process: its result dict, or None after ``budget`` s."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cvxpy_worker, args=(matrix, objectives, rows, queue))
    proc.start()
    try:
        out = queue.get(timeout=budget)
    except Exception:
        out = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return out
