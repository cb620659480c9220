"""ADMM for min f(x) s.t. x ≥ 0 (seed 000's solver, SPEC §1.3: splitting, ρ and stopping [NOT SPECIFIED]).

Splitting (scaled form, Boyd et al., Found. Trends Mach. Learn. 3:1, 2011, §3.1, §5):

    min f(x) + I₊(z)  s.t.  x − z = 0,          I₊ = indicator of z ≥ 0

    x ← argmin_x f(x) + ρ/2·‖x − z + u‖²     (inexact: ``inner`` unconstrained L-BFGS iterations,
                                               warm-started at the previous x)
    z ← max(0, x + u)                          (projection)
    u ← u + x − z

Residuals r = ‖x − z‖ (primal), s = ρ‖z − z_prev‖ (dual); stop when r ≤ ε_pri and s ≤ ε_dual with
ε_pri = √n·abs_tol + rel_tol·max(‖x‖, ‖z‖), ε_dual = √n·abs_tol + rel_tol·ρ‖u‖. ρ adapts by residual
balancing (Boyd §3.4.1): ×2 when r > 10 s, ÷2 when s > 10 r, rescaling u = y/ρ to keep the dual y.
The initial ρ (when not given) is a curvature estimate of f along a random direction,
‖∇f(x₀ + δ) − ∇f(x₀)‖ / ‖δ‖, so the proximal term is on the scale of f's Hessian.
The returned x is z (feasible, x ≥ 0); its value is f(z).
Warm start: pass ``state`` = ``ADMMSolution.state`` of a previous solve (x, z, u, ρ).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from rtautoplan.optimize.lbfgs import Objective, Solution


@dataclass(frozen=True, eq=False)
class ADMMState:
    x: np.ndarray
    z: np.ndarray
    u: np.ndarray
    rho: float


@dataclass(frozen=True, eq=False)
class ADMMSolution(Solution):
    state: ADMMState | None = None
    primal_residual: float = np.nan
    dual_residual: float = np.nan


def _initial_rho(f: Objective, x0: np.ndarray, rng: np.random.Generator) -> float:
    scale = max(float(np.linalg.norm(x0)), 1.0) * 1e-3
    delta = rng.standard_normal(x0.size)
    delta *= scale / np.linalg.norm(delta)
    g0 = f(x0)[1]
    g1 = f(x0 + delta)[1]
    return max(float(np.linalg.norm(g1 - g0) / np.linalg.norm(delta)), 1e-12)


def solve_admm(f: Objective, x0: np.ndarray | None = None, state: ADMMState | None = None, rho: float | None = None,
               max_iter: int = 200, inner: int = 10, memory: int = 10, abs_tol: float = 1e-6, rel_tol: float = 1e-4,
               adapt: bool = True, seed: int = 0) -> ADMMSolution:
    """Minimise f over x ≥ 0 by ADMM (module docstring). Start from ``state`` if given, else x0."""
    start = time.perf_counter()
    count = [0]

    def fun(v):
        count[0] += 1
        return f(v)

    if state is not None:
        x, z, u = (np.array(a, float) for a in (state.x, state.z, state.u))
        rho = state.rho if rho is None else rho
    elif x0 is not None:
        x = np.maximum(np.asarray(x0, float), 0.0)
        z, u = x.copy(), np.zeros_like(x)
    else:
        raise ValueError("give x0 or a previous state")
    if rho is None:
        rho = _initial_rho(fun, z, np.random.default_rng(seed))
    n = x.size
    r_norm = s_norm = np.inf
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        v = z - u

        def aug(w, v=v, rho=rho):
            value, grad = fun(w)
            diff = w - v
            return float(value) + 0.5 * rho * float(diff @ diff), np.asarray(grad, float) + rho * diff

        x = minimize(aug, x, jac=True, method="L-BFGS-B",
                     options={"maxcor": memory, "maxiter": inner, "ftol": 0.0, "gtol": 0.0}).x
        z_prev = z
        z = np.maximum(x + u, 0.0)
        u = u + x - z
        r_norm = float(np.linalg.norm(x - z))
        s_norm = float(rho * np.linalg.norm(z - z_prev))
        eps_pri = np.sqrt(n) * abs_tol + rel_tol * max(np.linalg.norm(x), np.linalg.norm(z))
        eps_dual = np.sqrt(n) * abs_tol + rel_tol * rho * np.linalg.norm(u)
        if r_norm <= eps_pri and s_norm <= eps_dual:
            converged = True
            break
        if adapt and r_norm > 10.0 * s_norm:
            rho, u = rho * 2.0, u / 2.0
        elif adapt and s_norm > 10.0 * r_norm:
            rho, u = rho / 2.0, u * 2.0
    value = float(fun(z)[0])
    return ADMMSolution(z, value, it, time.perf_counter() - start, converged, count[0],
                        "converged" if converged else "iteration cap", ADMMState(x, z, u, rho), r_norm, s_norm)
