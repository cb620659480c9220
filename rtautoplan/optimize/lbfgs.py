"""L-BFGS-B fluence optimisation (seed 002, SPEC §2.9): memory m = 10, bounds x ≥ 0.

SPEC §2.9 leaves the line search, iteration cap and tolerance [NOT SPECIFIED]: scipy's
L-BFGS-B (Byrd, Lu, Nocedal, Zhu 1995; Moré–Thuente-type line search), ``max_iter`` 200 and a
relative-decrease tolerance ``tol`` (scipy's ``ftol``: stop when
(f_k − f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) ≤ tol) plus a projected-gradient tolerance ``gtol``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


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


def solve_lbfgs(f: Objective, x0: np.ndarray, max_iter: int = 200, memory: int = 10, tol: float = 1e-7,
                gtol: float = 1e-10) -> Solution:
    """Minimise f over x ≥ 0 from x0 (warm start: pass the previous solution)."""
    start = time.perf_counter()
    x0 = np.maximum(np.asarray(x0, float), 0.0)
    count = [0]

    def fun(x):
        count[0] += 1
        value, grad = f(x)
        return float(value), np.asarray(grad, float)

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * x0.size,
                   options={"maxcor": memory, "maxiter": max_iter, "ftol": tol, "gtol": gtol, "maxfun": 4 * max_iter})
    x = np.maximum(res.x, 0.0)
    return Solution(x, float(res.fun), int(res.nit), time.perf_counter() - start, bool(res.status == 0),
                    count[0], str(res.message))
