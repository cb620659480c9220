"""The optimisation loop (stage 3 of ``engine``): the first run's starting weights, L-BFGS-B on
the spot weights with progress reports and cancellation.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize

from rtautoplan.adapters.phoenix_api.dose_grid import RoiPoints
from rtautoplan.adapters.phoenix_api.influence import Influence
from rtautoplan.adapters.phoenix_api.objectives import ObjectiveTerm, Problem


class Cancelled(Exception):
    """Raised inside the optimiser when the job's cancel flag is set."""


def initial_weights(influence: Influence, target: RoiPoints, fractions: int, rx_gy: float) -> np.ndarray:
    """Uniform spot weights scaled so the target's mean RBE-weighted dose is Rx: the scale that
    gives Rx of *physical* dose bounds it from above (RBE ≥ 1 in the target), bisection (log scale)
    below that."""
    probe = Problem(influence, {"t": target}, [ObjectiveTerm("t", "Uniform", (("obj_value", 0.0), ("weight", 1.0)))],
                    fractions, rx_gy)
    ones = np.ones(influence.d.shape[1])
    physical = float(np.mean(probe.physical_dose(ones)))
    if physical <= 0:
        raise ValueError("no spot reaches the target")
    hi = np.log10(rx_gy / physical)
    lo = hi - 2.0
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        if probe.rbe_dose(ones * 10.0**mid).mean() < rx_gy:
            lo = mid
        else:
            hi = mid
    return ones * 10.0 ** (0.5 * (lo + hi))


def optimise(problem: Problem, x0: np.ndarray, max_iterations: int, tolerance: float | None = 1e-9,
             progress=None, cancelled=None) -> dict:
    """L-BFGS-B on ``problem`` from ``x0`` (weights ≥ 0). ``progress(fraction)`` is called each
    iteration; ``cancelled()`` returning True stops the run with ``Cancelled``. tolerance None or 0:
    run all ``max_iterations`` (no convergence test), for benchmarks."""
    iterations = [0]

    def callback(_x):
        iterations[0] += 1
        if progress is not None:
            progress(min(iterations[0] / max(max_iterations, 1), 1.0))
        if cancelled is not None and cancelled():
            raise Cancelled()

    tol = tolerance if tolerance else 0.0
    t0 = time.perf_counter()
    res = scipy.optimize.minimize(problem, np.maximum(np.asarray(x0, float), 0.0), jac=True, method="L-BFGS-B",
                                  bounds=[(0.0, None)] * len(x0), callback=callback,
                                  options={"maxiter": int(max_iterations), "ftol": tol, "gtol": tol * 1e-2,
                                           "maxls": 30})
    return {"x": np.maximum(res.x, 0.0), "value": float(res.fun), "iterations": int(res.nit),
            "message": str(res.message), "seconds": time.perf_counter() - t0}
