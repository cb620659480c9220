"""ADMM for fluence-map optimisation, split on dose (seed 000's solver, SPEC §1.3: splitting, ρ
and stopping are [NOT SPECIFIED] there; the choices below are rtautoplan's).

Problem
-------
A :class:`~rtautoplan.optimize.objectives.PlanObjective` f(x) = Σ_m w_m·P_m(A_m x), x ≥ 0, where
A_m is the row block of the dose-influence matrix of objective m's structure (N_m voxels) and P_m
is one penalty of ``objectives.PENALTIES`` (a voxel mean, so it carries a 1/N_m).

Splitting (scaled form; Boyd et al., Found. Trends Mach. Learn. 3:1, 2011, §3.1, §5)
--------------------------------------------------------------------------------------
One dose copy per objective, z_m = A_m x (objectives on the same structure get separate copies,
overlapping structures share nothing), and one beamlet copy w = x that carries the bound:

    min  Σ_m w_m·P_m(z_m) + I₊(w)   s.t.   A_m x = z_m  (weight c_m = 2/N_m),   x = w  (weight σ)

Each constraint row is weighted (c_m, σ) so that all blocks are on the scale of their penalty's
curvature (2w_m/N_m per voxel for a weight-1 quadratic); the weights are fixed per problem
and ρ multiplies all of them. With u the scaled duals, one iteration is

    x ← (G + σI)⁻¹ [Σ_m c_m A_mᵀ(z_m − u_m) + σ(w − u_w)],      G = Σ_m c_m A_mᵀA_m   (dense, n²)
    x̂_m = α A_m x + (1 − α) z_m,   x̂_w = α x + (1 − α) w       (over-relaxation, α = 1.6; §3.4.3)
    z_m ← prox_m(x̂_m + u_m),   w ← max(0, x̂_w + u_w)
    u_m ← u_m + x̂_m − z_m,      u_w ← u_w + x̂_w − w

x-update: the unconstrained least-squares step of the second splitting x = w (the bound lives in
w), solved exactly with the Cholesky factor of G + σI (LAPACK potrs, ~3 ms at n = 2 328).
Because ρ scales every block alike it cancels from this step, so the factor is computed once
per problem (matrix and objective rows) and never when ρ changes; weights and dose limits enter only the prox steps. G is
computed from dense row chunks (float64 BLAS), ≈ 3 s and 43 MB for 19 k rows × 2 328 beamlets;
its factor, Aᵀ (CSR) and the stacked indices form an :class:`ADMMWorkspace` that the
returned state carries, so warm-started re-solves of the same problem (new weights or limits) skip it.
σ = ``sigma_rel`` · trace(G)/n (default 0.1). Per iteration: one A x and one Aᵀ[y₁ y₂] (sparse,
float32 data, ~20 ms each on hn01), one Cholesky solve (dense, n²), O(Σ N_m) for the prox steps.

Prox steps
----------
Closed form, one per penalty kind, with the DVH_MIN set H frozen between refreshes (below):
``prox`` module docstring.

ρ and stopping
--------------
Residuals (row-weighted, B = the stacked constraint matrix, ζ = (z, w)):
r² = Σ c_m‖A_m x − z_m‖² + σ‖x − w‖²,  s = ρ‖Σ c_m A_mᵀ(z_m − z_m⁻) + σ(w − w⁻)‖.
The x-update's right-hand side and these need Σ c Aᵀz and Σ c Aᵀu; both come from one product of
Aᵀ with a two-column block per iteration (updating Aᵀu incrementally through G x drifts: the
float32 A x and the float64 G disagree by ~1e-7, which is not small next to the near-zero
duals of a nearly feasible plan). Stop when r ≤ ε_pri and s ≤ ε_dual (Boyd §3.3.1),
ε_pri = √p·abs_tol + rel_tol·max(‖Bx‖, ‖ζ‖), p = Σ N_m + n,
ε_dual = √n·abs_tol + rel_tol·ρ·max(‖Σ c A_mᵀu_m‖, σ‖u_w‖). (Boyd's ‖ρBᵀu‖ is useless here: x
has no objective of its own, so Bᵀy → 0 at the optimum; its two parts, dose and bound, are each
nonzero and cancel.)

Residual balancing (Boyd §3.4.1, μ = 10, τ = 2, at most every ``adapt_every`` iterations, u ← u/τ
or u·τ so that y = ρu is kept) compares r with ‖B(ζ − ζ⁻)‖ (how far the split variables moved;
ρ and Bᵀ dropped, so both sides are in the same units). The textbook form (r vs s, or OSQP's
normalised r/max(‖Bx‖, ‖ζ‖) vs s/‖ρBᵀu‖) drove ρ → 0 and diverged on hn01, where the optimal
duals are tiny. Initial ρ = ``RHO0`` (0.03) × the mean objective weight, i.e. θ ≈ 0.97, close to
projecting onto each limit: on hn01 (seed-002 objectives, nearly feasible) ρ = 1 × mean weight
needs > 300 iterations for what 0.03 reaches in ~100, and balancing with μ = 10 does not
move ρ from either; on the small random test problems 0.03 costs ~2× the iterations of the best
fixed ρ (≈ 0.3), which balancing recovers. Give ``rho`` for other problem families.

The DVH_MIN sets H are frozen between refreshes (every ``select_every`` iterations, from the
current dose A x): each stretch is ADMM on a convex majoriser (MM). Taking H at each prox input
instead (the exact prox) makes ADMM cycle on the small test problem. Convergence is declared
only if H is unchanged at the final dose.

Measured (sample_data/hn01, 7 beams, dose grid (1, 2, 2): 19 077 used rows × 2 328 beamlets,
15.5 M nonzeros, 37 seed-002 objectives; 2-core VM shared with other jobs, times ±30 %):
workspace 3.4 s; ADMM defaults: 103 iterations, ~7–13 s, f = 0.0117; L-BFGS-B (``solve_lbfgs``
defaults): 188 iterations, ~9 s, f = 0.0183; optimum (L-BFGS-B, tol 1e-13): 0.00525 in 1 770
iterations, 75 s (ADMM rel_tol 1e-5: 0.00609, 1 051 iterations, 75 s). After lowering the
SpinalCord limit by 20 %: ADMM warm 44 iterations, 3.1 s, f = 0.0111 (cold 103, 7.2 s, 0.0121);
L-BFGS-B warm 41 iterations, 2.3 s, f = 0.0196.

Warm start: ``state`` = ``ADMMSolution.state`` of a previous solve (x, z, u, w, u_w, ρ and the
workspace). The workspace is reused when the matrix and the objectives' rows are equal (an
array comparison); z, u are reused when the stacked layout is too, else only x (and w) are.
The returned x is w (feasible, x ≥ 0); its value is f(w). D95 normalisation (SPEC §1.3) is not
done here: ``objectives.normalise_d95`` after the solve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from rtautoplan.optimize.admm_workspace import ADMMWorkspace
from rtautoplan.optimize.lbfgs import Solution
from rtautoplan.optimize.prox import StackedProx, prox

__all__ = ["RHO0", "ADMMSolution", "ADMMState", "ADMMWorkspace", "prox", "solve_admm"]

RHO0 = 0.03  # initial ρ per unit mean objective weight (module docstring)


@dataclass(frozen=True, eq=False)
class ADMMState:
    x: np.ndarray
    z: np.ndarray
    u: np.ndarray
    rho: float
    w: np.ndarray | None = None
    u_w: np.ndarray | None = None
    workspace: ADMMWorkspace | None = None


@dataclass(frozen=True, eq=False)
class ADMMSolution(Solution):
    state: ADMMState | None = None
    primal_residual: float = np.nan
    dual_residual: float = np.nan


def solve_admm(f, x0: np.ndarray | None = None, state: ADMMState | None = None, rho: float | None = None,
               max_iter: int = 1000, abs_tol: float = 1e-6, rel_tol: float = 1e-4, adapt: bool = True,
               alpha: float = 1.6, sigma_rel: float = 0.1, adapt_every: int = 10, select_every: int = 10,
               workspace: ADMMWorkspace | None = None, callback=None) -> ADMMSolution:
    """Minimise the plan objective f (a ``PlanObjective``) over x ≥ 0 by ADMM split on dose (module
    docstring). Start from ``state`` (warm start) if given, else from x0. ``workspace``: a prebuilt
    :class:`ADMMWorkspace` (else the state's, when it matches, else built here). ``callback``:
    called after every iteration as callback(it, x, w, z, u, rho, r, s) (for benchmarks).
    ``evaluations`` of the result counts calls of f: one, for the final value."""
    start = time.perf_counter()
    if not all(hasattr(f, a) for a in ("matrix", "objectives", "local_rows", "weights")):
        raise TypeError("solve_admm splits on dose and needs a PlanObjective (objectives.plan_objective)")
    if state is None and x0 is None:
        raise ValueError("give x0 or a previous state")
    ws = next((w for w in (workspace, state.workspace if state is not None else None)
               if w is not None and w.matches(f)), None) or ADMMWorkspace.build(f, sigma_rel)
    A, AT = ws.matrix, ws.matrix_t
    weights = np.asarray(f.weights, float)
    proxes = StackedProx(f, ws)
    n, p_rows = A.shape[1], ws.idx.size
    sigma, c = ws.sigma, ws.c

    def dose(x):
        return np.asarray(A @ x.astype(A.dtype), np.float64)

    def back(z, u):  # (Σ c_m A_mᵀ z_m, Σ c_m A_mᵀ u_m) for stacked z, u: one pass over Aᵀ
        acc = np.empty((A.shape[0], 2), A.dtype)
        acc[:, 0] = np.bincount(ws.idx, weights=c * z, minlength=A.shape[0])
        acc[:, 1] = np.bincount(ws.idx, weights=c * u, minlength=A.shape[0])
        out = np.asarray(AT @ acc, np.float64)
        return out[:, 0], out[:, 1]

    if state is not None:
        x = np.maximum(np.asarray(state.x, float), 0.0)
        w = np.maximum(np.asarray(state.w if state.w is not None else x, float), 0.0)
        same = state.z.shape == (p_rows,) and state.w is not None and (state.workspace is ws or state.workspace is None
                                                                        or np.array_equal(state.workspace.idx, ws.idx))
        if same:
            z, u, u_w = (np.array(a, float) for a in (state.z, state.u, state.u_w))
        else:
            z, u, u_w = dose(x)[ws.idx], np.zeros(p_rows), np.zeros(n)
        rho = state.rho if rho is None else rho
    else:
        x = np.maximum(np.asarray(x0, float), 0.0)
        w = x.copy()
        z, u, u_w = dose(x)[ws.idx], np.zeros(p_rows), np.zeros(n)
    if rho is None:
        rho = RHO0 * (float(np.mean(weights[weights > 0])) if np.any(weights > 0) else 1.0)
    cz, cu = back(z, u)
    proxes.select(dose(x)[ws.idx])
    r_norm = s_norm = np.inf
    converged = False
    last_adapt = 0
    it = 0
    for it in range(1, max_iter + 1):
        x = ws.solve(cz - cu + sigma * (w - u_w))
        ax = dose(x)[ws.idx]
        hat, hat_w = alpha * ax + (1.0 - alpha) * z, alpha * x + (1.0 - alpha) * w
        z_prev, w_prev, cz_prev = z, w, cz
        z = proxes(hat + u, weights, rho)
        w = np.maximum(hat_w + u_w, 0.0)
        u = u + hat - z
        u_w = u_w + hat_w - w
        cz, cu = back(z, u)
        # residuals
        dz = ax - z
        r_norm = math.sqrt(float(c @ (dz * dz)) + sigma * float((x - w) @ (x - w)))
        s_norm = rho * float(np.linalg.norm(cz - cz_prev + sigma * (w - w_prev)))
        scale_pri = max(math.sqrt(float(c @ (ax * ax)) + sigma * float(x @ x)),
                        math.sqrt(float(c @ (z * z)) + sigma * float(w @ w)))
        scale_dual = rho * max(float(np.linalg.norm(cu)), sigma * float(np.linalg.norm(u_w)))
        eps_pri = math.sqrt(p_rows + n) * abs_tol + rel_tol * scale_pri
        eps_dual = math.sqrt(n) * abs_tol + rel_tol * scale_dual
        if callback is not None:
            callback(it, x, w, z, u, rho, r_norm, s_norm)
        if r_norm <= eps_pri and s_norm <= eps_dual:
            if not proxes.select(ax):  # converged on the current DVH_MIN sets, and they are final
                converged = True
                break
        elif it % select_every == 0:
            proxes.select(ax)
        if adapt and it - last_adapt >= adapt_every:
            dzeta = z - z_prev
            moved = math.sqrt(float(c @ (dzeta * dzeta)) + sigma * float((w - w_prev) @ (w - w_prev)))
            factor = 2.0 if r_norm > 10.0 * moved else 0.5 if moved > 10.0 * r_norm else 1.0
            if factor != 1.0:
                rho *= factor
                u, u_w, cu = u / factor, u_w / factor, cu / factor
                last_adapt = it
    value = float(f(w)[0])
    return ADMMSolution(w, value, it, time.perf_counter() - start, converged, 1,
                        "converged" if converged else "iteration cap",
                        ADMMState(x, z, u, rho, w, u_w, ws), r_norm, s_norm)
