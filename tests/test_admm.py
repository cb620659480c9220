"""ADMM split on dose: prox operators, agreement with L-BFGS-B, warm start (small problems), and hn01 (slow)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from rtautoplan.optimize.admm import ADMMWorkspace, prox, solve_admm
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import PENALTIES, plan_objective, seed000_objectives
from rtautoplan.plan import ObjectiveKind

from test_optimize import small_problem

HN01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"


def _prox_objective(kind, v, dose, volume, weight, rho):
    n = v.size

    def fun(z):
        value, grad = PENALTIES[kind](z, dose, volume)
        return weight * value + rho / n * float((z - v) @ (z - v)), weight * grad + 2.0 * rho / n * (z - v)

    return fun


def _brute_force(fun, v, rng, starts=30):
    best = None
    for k in range(starts):  # multi-start: DVH_MIN is not convex, and all are only piecewise smooth
        z0 = v if k == 0 else v + rng.normal(0.0, 8.0, v.size)
        res = minimize(fun, z0, jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
        if best is None or res.fun < best.fun:
            best = res
    return best


@pytest.mark.parametrize("kind", list(ObjectiveKind))
def test_prox_matches_brute_force(kind):
    rng = np.random.default_rng(7)
    crossings = 0
    for _ in range(25):
        v = rng.uniform(40.0, 80.0, 8)
        weight, rho, volume = rng.uniform(0.2, 3.0), rng.uniform(0.05, 5.0), rng.choice([0.25, 0.4, 0.6])
        fun = _prox_objective(kind, v, 60.0, volume, weight, rho)
        z = prox(kind, v, 60.0, volume, weight, rho)
        best = _brute_force(fun, v, rng)
        assert fun(z)[0] <= best.fun + 1e-9 * max(1.0, abs(best.fun)), (kind, v, z, best.x)
        if kind is not ObjectiveKind.DVH_MIN:  # strictly convex: the minimiser is unique
            np.testing.assert_allclose(z, best.x, atol=1e-4)
        if kind is ObjectiveKind.DV_MAX:  # count the cases where shrinking the hottest crosses the order
            n = int(np.ceil(volume * v.size - 1e-9))
            s = np.sort(v)[::-1]
            theta = weight / (weight + rho)
            crossings += bool(s[n - 1] - theta * max(s[n - 1] - 60.0, 0.0) < s[n])
    if kind is ObjectiveKind.DV_MAX:
        assert crossings >= 3, "the pooling branch of the DV_MAX prox is not exercised"


def test_prox_dv_max_pooling_by_hand():
    # hottest 1 of (70, 68): shrinking 70 towards 60 with θ = ½ gives 65 < 68, so both pool at c:
    # (c − 65) + ½(c − 68) = 0 → c = 66
    z = prox(ObjectiveKind.DV_MAX, np.array([70.0, 68.0, 50.0]), 60.0, 1 / 3, 1.0, 1.0)
    np.testing.assert_allclose(z, [66.0, 66.0, 50.0])


@pytest.mark.parametrize("seed", [0, 3])
def test_admm_reaches_lbfgs_small(seed):
    m, rows, objectives = small_problem(seed)
    f = plan_objective(m, objectives, rows)
    x0 = np.full(m.shape[1], 30.0)
    ref = solve_lbfgs(f, x0, max_iter=2000, tol=1e-14, gtol=1e-12)
    sol = solve_admm(f, x0, max_iter=1000, abs_tol=1e-8, rel_tol=1e-6)
    assert sol.converged and np.all(sol.x >= 0)
    assert sol.value <= ref.value * 1.01, f"ADMM {sol.value:.6g} vs L-BFGS-B {ref.value:.6g}"


def test_admm_seed000_dv_max_matches_lbfgs():
    m, rows, _ = small_problem()
    objs = seed000_objectives("PTV", 60.0, lam=1.0, t=1.05, v_ptv=0.1, oars=[("OAR", 2.0, 0.5, 0.3)])
    f = plan_objective(m, objs, {"PTV": rows["PTV"], "OAR": rows["OAR1"]})
    x0 = np.full(m.shape[1], 30.0)
    ref = solve_lbfgs(f, x0, max_iter=2000, tol=1e-14, gtol=1e-12)
    sol = solve_admm(f, x0, max_iter=2000, abs_tol=1e-8, rel_tol=1e-6)
    assert sol.value <= ref.value * 1.01, f"ADMM {sol.value:.6g} vs L-BFGS-B {ref.value:.6g}"


@pytest.mark.parametrize("index", [4, 6])  # OAR1 Dmax, OAR2 Dmean
def test_warm_start_needs_fewer_iterations(index):
    m, rows, objectives = small_problem(seed=3)
    f = plan_objective(m, objectives, rows)
    x0 = np.full(m.shape[1], 30.0)
    first = solve_admm(f, x0)
    tighter = list(objectives)
    tighter[index] = replace(objectives[index], dose_gy=0.8 * objectives[index].dose_gy)  # OAR limit −20 %
    f2 = plan_objective(m, tighter, rows)
    ref = solve_lbfgs(f2, x0, max_iter=2000, tol=1e-14, gtol=1e-12)
    cold = solve_admm(f2, x0)
    warm = solve_admm(f2, state=first.state)
    assert warm.state.workspace is first.state.workspace, "same matrix and rows: the factorisation is reused"
    assert cold.converged and warm.converged
    assert warm.value <= ref.value * 1.01 and cold.value <= ref.value * 1.01
    assert warm.iterations < 0.6 * cold.iterations, (warm.iterations, cold.iterations)
    # the same problem again: converged at once
    assert solve_admm(f2, state=warm.state).iterations <= 5


def test_workspace_rebuilt_when_rows_change():
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    sol = solve_admm(f, np.full(m.shape[1], 30.0), max_iter=50)
    fewer = plan_objective(m, objectives[:4], rows)
    assert not sol.state.workspace.matches(fewer)
    again = solve_admm(fewer, state=sol.state, max_iter=50)  # z, u do not fit: warm start from x only
    assert again.state.workspace is not sol.state.workspace and np.all(again.x >= 0)


def test_cholesky_factor_of_weighted_gram():
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    ws = ADMMWorkspace.build(f)
    a = f.matrix.toarray().astype(float)
    expected = sum((2.0 / len(r)) * a[r].T @ a[r] for r in f.local_rows)
    got = ws.factor @ ws.factor.T - ws.sigma * np.eye(expected.shape[0])
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert ws.sigma == pytest.approx(0.1 * np.trace(expected) / expected.shape[0])


@pytest.mark.slow
def test_admm_hn01_matches_lbfgs(tmp_path):
    if not HN01.exists():
        pytest.skip("sample_data/hn01 is not present")
    from rtautoplan.dicom.read import read_case
    from rtautoplan.physics.dij import beams_for, dij_cached
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    case = apply_rules(read_case(HN01))
    objectives = tuple(replace(o, dose_gy=min(o.dose_gy, 40.0)) if o.structure == "SpinalCord" else o
                       for o in objectives_for(case, np.random.default_rng(0)))
    dij = dij_cached(case, beams_for(case, n=7), cache_dir=tmp_path, dose_grid_factor=(1, 2, 2))
    rows = {o.structure: dij.rows_of(case.structure(o.structure).voxels) for o in objectives}
    f = plan_objective(dij.matrix, objectives, rows)
    x0 = np.ones(dij.n_beamlets)
    x0 *= case.prescription.rx_max / float(np.mean(dij.matrix[rows["PTV_7000"]] @ x0.astype(np.float32)))
    ref = solve_lbfgs(f, x0, max_iter=200)
    cold = solve_admm(f, x0)
    assert cold.value <= ref.value * 1.02, f"ADMM {cold.value:.6g} vs L-BFGS-B {ref.value:.6g}"
    # closed loop: lower the SpinalCord limit by 20 % and re-optimise from the previous state
    lower = tuple(replace(o, dose_gy=0.8 * o.dose_gy) if o.structure == "SpinalCord" else o for o in objectives)
    f2 = plan_objective(dij.matrix, lower, rows)
    ref2 = solve_lbfgs(f2, ref.x, max_iter=200)
    warm = solve_admm(f2, state=cold.state)
    assert warm.value <= ref2.value * 1.02, f"ADMM {warm.value:.6g} vs L-BFGS-B {ref2.value:.6g}"
    assert warm.iterations < cold.iterations
