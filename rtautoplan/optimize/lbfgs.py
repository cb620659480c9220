"""L-BFGS-B fluence optimisation (seed 002, SPEC §2.9): memory m = 10, bounds x ≥ 0.

SPEC §2.9 leaves the line search, iteration cap and tolerance [NOT SPECIFIED]. Here: scipy's
L-BFGS-B (Byrd, Lu, Nocedal, Zhu 1995; Moré–Thuente-type line search) with

* **Jacobi variable scaling** (``scale="auto"``, when f offers ``curvature_diagonal()`` as
  :class:`~rtautoplan.optimize.objectives.PlanObjective` does): the solver works on y = x / s with
  s_j = 1/√H_jj, H_jj the Gauss–Newton curvature of beamlet j with every term active, so that
  L-BFGS's initial inverse Hessian γI sees columns of comparable scale (edge and centre beamlets
  differ by orders of magnitude). The bound stays y ≥ 0. On hn01 (7 beams, dose grid (1, 2, 2))
  it reaches 1.1 f* in 1 180 instead of > 2 000 iterations.
* **Stopping rule**: stop after iteration k ≥ K when the objective decreased by at most
  ``tol · max(f_k, f_scale)`` over the last K = ``window`` iterations,
  (f_{k−K} − f_k) ≤ tol · max(f_k, f_scale). Relative for f ≥ f_scale and absolute below (scipy's
  own ``ftol`` test uses the same max(|f|, 1) guard, per iteration): the plan objective is a mean
  squared dose violation in Gy² (weights ≈ 1), and a relative test on a near-zero optimum (a plan
  that nearly meets every limit: hn01's f* ≈ 0.005 Gy², i.e. 0.07 Gy RMS violation) would spend
  thousands of iterations on changes of hundredths of a Gy. Defaults K = 10, tol = 1e-3,
  f_scale = 1 (Gy²): on hn01 it stops after ≈ 190 iterations at f ≈ 3.6 f* (0.14 Gy RMS). Pass
  ``tol=1e-4`` for ≈ 1.6 f* (≈ 470 iterations), ``f_scale=0`` for a purely relative rule.
  ``max_iter`` is a safety cap only (``converged`` is False when it, not the rule, stopped).
* **One BLAS thread** while scipy's L-BFGS-B runs (``threadpoolctl``; the limit is process-wide
  for the duration of the solve). Its per-iteration linear algebra is on n-vectors and m × m
  matrices; a multi-threaded OpenBLAS spins up its threads for each of those tiny calls, which on
  2 cores shared with the threaded sparse products cost 3.7 ms per call (hn01 (1, 2, 2): 1.4–1.8 s
  of a 4.3–5.2 s solve) against 0.1 ms with one thread (docs/decisions.md, "Engine speed").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]
_THREADPOOLS: list[ThreadpoolController] = []  # created on first use (it inspects the loaded libraries)


def _one_blas_thread():
    """Context manager: BLAS limited to one thread (module docstring)."""
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


@dataclass(frozen=True, eq=False)
class Solution:
    """x: the solution (≥ 0); value: f(x); iterations: solver iterations; evaluations: calls of f;
    time_s: wall time; converged: a tolerance was met (not the iteration cap); message: why it stopped."""

    x: np.ndarray
    value: float
    iterations: int
    time_s: float
    converged: bool
    evaluations: int = 0
    message: str = ""


def jacobi_scale(f: Objective, n: int) -> np.ndarray | None:
    """s_j = 1/√H_jj from ``f.curvature_diagonal()`` (None when f has none). Beamlets that no
    objective row sees (H_jj = 0) get the scale of the median beamlet."""
    diag_fn = getattr(f, "curvature_diagonal", None)
    if diag_fn is None:
        return None
    diag = np.asarray(diag_fn(), float)
    if diag.shape != (n,) or not np.any(diag > 0):
        return None
    floor = 1e-6 * diag.max()
    diag = np.where(diag > floor, diag, np.median(diag[diag > floor]))
    return 1.0 / np.sqrt(diag)


class _Stop(StopIteration):
    pass


def solve_lbfgs(f: Objective, x0: np.ndarray, max_iter: int = 2000, memory: int = 10, tol: float = 1e-3,
                window: int = 10, f_scale: float = 1.0, scale="auto", gtol: float = 1e-10,
                lower: np.ndarray | None = None) -> Solution:
    """Minimise f over x ≥ lower (default 0) from x0 (warm start: pass the previous solution); module docstring.

    tol, window, f_scale: the stopping rule (module docstring); scipy's own per-iteration ``ftol`` is
    off (0), ``gtol`` (projected gradient, scaled variables) is passed through.
    scale: "auto" (Jacobi, when f provides it), None (no scaling) or an array s > 0 (x = s·y).
    lower: per-variable lower bounds ≥ 0 (e.g. a minimum MU on the spots kept on), in the units of x.
    """
    start = time.perf_counter()
    low = np.zeros(np.size(x0)) if lower is None else np.maximum(np.asarray(lower, float), 0.0)
    x0 = np.maximum(np.asarray(x0, float), low)
    s = jacobi_scale(f, x0.size) if isinstance(scale, str) and scale == "auto" else scale
    if isinstance(scale, str) and scale != "auto":
        raise ValueError(f"scale must be 'auto', None or an array, got {scale!r}")
    s = np.ones(x0.size) if s is None else np.asarray(s, float)
    count = [0]
    history: list[float] = []
    reason = [""]

    def fun(y):
        count[0] += 1
        value, grad = f(y * s)
        return float(value), np.asarray(grad, float) * s

    def callback(intermediate_result):
        history.append(float(intermediate_result.fun))
        k = len(history)
        if k > window:
            drop = history[-1 - window] - history[-1]
            if drop <= tol * max(abs(history[-1]), f_scale):
                reason[0] = (f"objective decreased by {drop:.3g} ≤ tol·max(f, f_scale) over the last {window} "
                             f"iterations")
                raise _Stop

    with _one_blas_thread():
        bounds = [(0.0, None)] * x0.size if lower is None else [(v, None) for v in low / s]
        res = minimize(fun, x0 / s, jac=True, method="L-BFGS-B", bounds=bounds, callback=callback,
                       options={"maxcor": memory, "maxiter": max_iter, "ftol": 0.0,
                                "gtol": gtol, "maxfun": 4 * max_iter})
    x = np.maximum(res.x * s, low)
    converged = bool(reason[0]) or res.status == 0
    return Solution(x, float(res.fun), int(res.nit), time.perf_counter() - start, converged, count[0],
                    reason[0] or str(res.message))
