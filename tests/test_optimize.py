"""Penalties, the plan objective, D95 normalisation, and the L-BFGS-B and ADMM solvers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from rtautoplan.dvh import d95
from rtautoplan.optimize.admm import solve_admm
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import PENALTIES, normalise_d95, plan_objective, seed000_objectives
from rtautoplan.plan import Objective, ObjectiveKind

VOLUME = {ObjectiveKind.DVH_MIN: 0.7, ObjectiveKind.DV_MAX: 0.3, ObjectiveKind.DVH_MAX: 0.3}


def _fd(fun, x, eps=1e-6):
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        out[i] = (fun(x + e) - fun(x - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("kind", list(ObjectiveKind))
def test_penalty_gradient(kind):
    assert set(PENALTIES) == set(ObjectiveKind)
    rng = np.random.default_rng(1)
    d = rng.uniform(40.0, 80.0, 57)
    limit = 60.0 if kind is not ObjectiveKind.DMEAN else 55.0
    fn = PENALTIES[kind]
    value, grad = fn(d, limit, VOLUME.get(kind))
    assert value > 0, "the test dose must make every penalty active"
    np.testing.assert_allclose(grad, _fd(lambda v: fn(v, limit, VOLUME.get(kind))[0], d), rtol=1e-5, atol=1e-8)


def test_penalty_values():
    d = np.array([50.0, 58.0, 61.0, 64.0, 70.0])
    assert PENALTIES[ObjectiveKind.DMAX](d, 60.0, None)[0] == pytest.approx((1 + 16 + 100) / 5)
    assert PENALTIES[ObjectiveKind.DMIN](d, 60.0, None)[0] == pytest.approx((100 + 4) / 5)
    assert PENALTIES[ObjectiveKind.DMEAN](d, 60.0, None)[0] == pytest.approx((60.6 - 60.0) ** 2)
    assert PENALTIES[ObjectiveKind.DMEAN](d, 61.0, None)[0] == 0.0
    assert PENALTIES[ObjectiveKind.UNIFORM](d, 60.0, None)[0] == pytest.approx((100 + 4 + 1 + 16 + 100) / 5)
    # hottest ceil(0.4·5) = 2 voxels (64, 70): over-dose above 60
    assert PENALTIES[ObjectiveKind.DV_MAX](d, 60.0, 0.4)[0] == pytest.approx((16 + 100) / 5)
    # 80 % must get ≥ 60: hottest 4 voxels are 58, 61, 64, 70; only 58 is short; 50 is given up
    assert PENALTIES[ObjectiveKind.DVH_MIN](d, 60.0, 0.8)[0] == pytest.approx(4 / 5)
    assert PENALTIES[ObjectiveKind.DVH_MIN](d, 60.0, 0.6)[0] == 0.0


def small_problem(seed=0, n_vox=300, n_beamlets=40, dtype=np.float64):
    """A random non-negative sparse D with a 'PTV' in rows 0–99 and two 'OARs'."""
    rng = np.random.default_rng(seed)
    m = sparse.random(n_vox, n_beamlets, density=0.3, random_state=rng, dtype=dtype, format="csr")
    m.data = (m.data * 0.05).astype(dtype)
    rows = {"PTV": np.arange(0, 100), "OAR1": np.arange(100, 200), "OAR2": np.arange(150, 300)}
    objectives = (
        Objective("PTV", ObjectiveKind.DMIN, 60.0, 2.0),
        Objective("PTV", ObjectiveKind.DMAX, 63.0, 1.0),
        Objective("PTV", ObjectiveKind.UNIFORM, 61.0, 0.1),
        Objective("PTV", ObjectiveKind.DVH_MIN, 61.0, 0.5, volume=0.9),
        Objective("OAR1", ObjectiveKind.DMAX, 30.0, 1.0),
        Objective("OAR1", ObjectiveKind.DV_MAX, 25.0, 0.5, volume=0.2),
        Objective("OAR2", ObjectiveKind.DMEAN, 20.0, 1.0),
    )
    return m, rows, objectives


def test_plan_objective_gradient():
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    x = np.random.default_rng(2).uniform(0.0, 300.0, m.shape[1])
    value, grad = f(x)
    assert value > 0 and np.all(f.terms(x) > 0), "every term should be active at the test point"
    np.testing.assert_allclose(grad, _fd(lambda v: f(v)[0], x, eps=1e-5), rtol=1e-5, atol=1e-7)
    # same value as the sum of the penalties on the full dose
    d = m @ x
    manual = sum(o.weight * PENALTIES[o.kind](d[rows[o.structure]], o.dose_gy, o.volume)[0] for o in objectives)
    assert value == pytest.approx(manual, rel=1e-12)
    # weight override
    f2 = plan_objective(m, objectives, rows, weights=[0.0] * len(objectives))
    assert f2(x)[0] == 0.0


def test_admm_matches_lbfgs():
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    x0 = np.full(m.shape[1], 30.0)
    ref = solve_lbfgs(f, x0, max_iter=2000, tol=1e-14, gtol=1e-12)
    admm = solve_admm(f, x0, max_iter=500, abs_tol=1e-8, rel_tol=1e-6)
    assert np.all(ref.x >= 0) and np.all(admm.x >= 0)
    assert np.any(ref.x == 0), "the bound should be active, or the test does not test it"
    assert admm.value == pytest.approx(ref.value, rel=0.01), f"ADMM {admm.value:.6g} vs L-BFGS-B {ref.value:.6g}"
    # warm start from the previous state converges at once and stays put
    again = solve_admm(f, state=admm.state, max_iter=50, abs_tol=1e-8, rel_tol=1e-6)
    assert again.value <= admm.value * 1.001 and again.iterations <= 50


def test_lbfgs_warm_start_is_cheaper():
    m, rows, objectives = small_problem(seed=3)
    f = plan_objective(m, objectives, rows)
    cold = solve_lbfgs(f, np.full(m.shape[1], 30.0), max_iter=500)
    tighter = list(objectives)
    tighter[4] = Objective("OAR1", ObjectiveKind.DMAX, 28.0, 1.0)
    f2 = plan_objective(m, tighter, rows)
    warm = solve_lbfgs(f2, cold.x, max_iter=500)
    cold2 = solve_lbfgs(f2, np.full(m.shape[1], 30.0), max_iter=500)
    assert warm.value == pytest.approx(cold2.value, rel=0.01)
    assert warm.evaluations < cold2.evaluations


def test_normalise_d95_exact():
    m, rows, _ = small_problem(dtype=np.float32)
    x = np.random.default_rng(4).uniform(0.0, 50.0, m.shape[1])
    y = normalise_d95(x, m, rows["PTV"], 60.0)
    dose = np.asarray(m @ y.astype(np.float32), float)
    assert d95(dose, rows["PTV"]) == pytest.approx(60.0, rel=1e-6)
    assert np.allclose(y / x, y[0] / x[0])  # a pure rescaling


def test_seed000_objectives_form():
    objs = seed000_objectives("PTV", 79.2, lam=1.0, t=1.1, v_ptv=0.1, oars=[("Rectum", 2.0, 0.6, 0.3)])
    kinds = [(o.structure, o.kind, round(o.dose_gy, 6), o.weight, o.volume) for o in objs]
    assert kinds == [("PTV", ObjectiveKind.DMIN, 79.2, 0.5, None),
                     ("PTV", ObjectiveKind.DV_MAX, round(1.1 * 79.2, 6), 0.5, 0.1),
                     ("Rectum", ObjectiveKind.DV_MAX, round(0.6 * 79.2, 6), 1.0, 0.3)]
    m, rows, _ = small_problem()
    rows = {"PTV": rows["PTV"], "Rectum": rows["OAR1"]}
    f = plan_objective(m, objs, rows)
    sol = solve_admm(f, np.full(m.shape[1], 30.0), max_iter=300)
    x = normalise_d95(sol.x, m, rows["PTV"], 79.2)
    assert d95(m @ x, rows["PTV"]) == pytest.approx(79.2, rel=1e-9)


def test_active_row_gradient_matches_full_product():
    """Mᵀ g on the rows with g ≠ 0 (PlanObjective._rmatvec_active) equals the full product."""
    m, rows, objectives = small_problem(dtype=np.float32)
    f = plan_objective(m, objectives, rows)
    rng = np.random.default_rng(5)
    g = np.zeros(f.matrix.shape[0], np.float32)
    hot = rng.choice(g.size, 7, replace=False)
    g[hot] = rng.uniform(-1.0, 1.0, hot.size)
    assert f.row_nnz[hot].sum() < 0.3 * f.matrix.nnz, "few active rows: the restricted path must be taken"
    np.testing.assert_allclose(f._rmatvec_active(g), f.matrix.T @ g, rtol=1e-6, atol=1e-9)
    assert np.all(f._rmatvec_active(np.zeros_like(g)) == 0)
    # and at a point where only a few voxels violate their limits the gradient is the finite difference's
    x = np.full(m.shape[1], 60.0 / float(np.mean(m[rows["PTV"]] @ np.ones(m.shape[1], np.float32))))
    f64 = plan_objective(m.astype(np.float64), objectives, rows)
    np.testing.assert_allclose(f(x)[1], f64(x)[1], rtol=1e-4, atol=1e-6)


def test_with_objectives_matches_a_fresh_objective():
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    x = np.random.default_rng(6).uniform(0.0, 300.0, m.shape[1])
    diag = f.curvature_diagonal()
    tighter = list(objectives)
    tighter[4] = Objective("OAR1", ObjectiveKind.DMAX, 24.0, 1.0)
    reused, fresh = f.with_objectives(tighter), plan_objective(m, tighter, rows)
    assert reused.matrix is f.matrix and reused.local_rows is f.local_rows
    assert reused(x)[0] == pytest.approx(fresh(x)[0], rel=1e-12)
    np.testing.assert_allclose(reused(x)[1], fresh(x)[1], rtol=1e-12)
    np.testing.assert_allclose(reused.curvature_diagonal(), diag)  # same weights: the cached diagonal
    heavier = reused.with_objectives(tighter, weights=[2.0] * len(tighter))
    np.testing.assert_allclose(heavier.curvature_diagonal(),
                               plan_objective(m, tighter, rows, weights=[2.0] * len(tighter)).curvature_diagonal())
    reused.weights[0] = 5.0  # weights changed in place: the cache must follow
    np.testing.assert_allclose(reused.curvature_diagonal(),
                               plan_objective(m, tighter, rows, weights=reused.weights).curvature_diagonal())
    with pytest.raises(ValueError):
        f.with_objectives(objectives[:3])


def test_lbfgs_restores_blas_threads():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    m, rows, objectives = small_problem()
    solve_lbfgs(plan_objective(m, objectives, rows), np.full(m.shape[1], 30.0), max_iter=20)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


def test_screened_dose_is_exact(monkeypatch):
    """Screening the provably inactive DMAX rows out of M x changes no value or gradient bit, along
    small steps (inside the ball) and large jumps (refreshes)."""
    import rtautoplan.optimize.objectives as objectives_module

    rng = np.random.default_rng(7)
    m = sparse.random(3000, 60, density=0.2, random_state=rng, dtype=np.float32, format="csr")
    m.data = (m.data * 0.05).astype(np.float32)
    rows = {"PTV": np.arange(0, 300), "RING": np.arange(300, 2000), "OAR": np.arange(1500, 3000)}
    objectives = (Objective("PTV", ObjectiveKind.DMIN, 60.0, 2.0), Objective("PTV", ObjectiveKind.DMAX, 63.0),
                  Objective("RING", ObjectiveKind.DMAX, 50.0), Objective("OAR", ObjectiveKind.DMAX, 30.0),
                  Objective("OAR", ObjectiveKind.DMAX, 45.0, 0.5))
    monkeypatch.setattr(objectives_module, "SCREEN_MIN_NNZ", 0)
    monkeypatch.setattr(objectives_module, "SCREEN_DMAX_ROWS", False)
    full = plan_objective(m, objectives, rows)
    x = np.full(60, 60.0 / float(np.mean(m[:300] @ np.ones(60, np.float32))))
    full(x)
    monkeypatch.setattr(objectives_module, "SCREEN_DMAX_ROWS", True)
    screened = plan_objective(m, objectives, rows)
    for k in range(60):
        step = rng.normal(0.0, 0.02 if k % 15 else 2.0, x.size)
        x = np.maximum(x * (1.0 + step), 0.0)
        (v1, g1), (v2, g2) = full(x), screened(x)
        assert v1 == v2 and np.array_equal(g1, g2)
    assert full._screen is False and screened._screen not in (None, False)
    assert screened._screen.refreshes >= 2 and screened._screen.inside >= 10, "both paths must be exercised"


def test_point_objective_reads_the_dose_where_it_is_reported(small_case):
    """Objectives at the structures' CT voxels (``physics.points``): the dose at the points equals the
    reported dose (``dose_to_grid`` of the dose-grid dose) there, and the gradient is exact."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.physics.dij import dose_to_grid
    from rtautoplan.structures.rules import apply_rules

    case = apply_rules(small_case, "hn")
    tps = InHousePhoton(n_beams=3, dose_grid_factor=(1, 2, 2), max_iter=20)
    tps.prepare(case)
    objectives = (Objective("CTV_6000", ObjectiveKind.DMIN, 60.0, 2.0),
                  Objective("SpinalCord", ObjectiveKind.DMAX, 5.0, 1.0))
    f = tps._new_objective(objectives)
    x = np.random.default_rng(0).uniform(0.5, 1.5, tps._dij.n_beamlets)
    reported = dose_to_grid(tps._dij.dose_array(x), tps._dij.dose_grid, case.grid)
    points = np.flatnonzero(case.structure("CTV_6000").voxels)
    np.testing.assert_allclose(f.dose(x)[f.local_points[0]], reported.ravel()[points], rtol=1e-4, atol=1e-4)
    value, grad = f(x)
    assert value > 0
    probe = np.random.default_rng(1).normal(size=x.size)
    eps = 1e-2  # the products run in float32: a smaller step measures rounding, not the slope
    numeric = (f(x + eps * probe)[0] - f(x - eps * probe)[0]) / (2 * eps)
    assert numeric == pytest.approx(grad @ probe, rel=2e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_row_view_products_equal_the_sub_matrix(monkeypatch, threads):
    """The plan objective reads its rows in place (RowView: no copy of the matrix's entries), and every
    product is bitwise that of the materialised sub-matrix ``matrix[rows]`` (scipy's kernels)."""
    import rtautoplan.optimize.objectives as objectives_module
    from rtautoplan.optimize.rowproducts import RowView

    monkeypatch.setattr(objectives_module, "PARALLEL_MIN_NNZ", 0)
    rng = np.random.default_rng(11)
    m = sparse.random(2000, 90, density=0.1, random_state=rng, dtype=np.float32, format="csr")
    rows = {"PTV": np.arange(100, 400), "OAR": np.arange(900, 1700, 2), "MEAN": np.arange(350, 600)}
    objectives = (Objective("PTV", ObjectiveKind.DMIN, 3.0, 2.0), Objective("OAR", ObjectiveKind.DMAX, 1.0),
                  Objective("MEAN", ObjectiveKind.DMEAN, 0.5, 0.7))
    f = plan_objective(m, objectives, rows, threads=threads)
    assert f.view.base is m and not f._sub, "the objective holds the matrix itself, no row copy"
    sub = m[f.view.rows]
    x = rng.uniform(0.0, 5.0, 90).astype(np.float32)
    g = np.where(rng.random(sub.shape[0]) < 0.3, rng.normal(size=sub.shape[0]), 0.0).astype(np.float32)
    assert np.array_equal(f.view @ x, sub @ x)
    assert np.array_equal(f.view.rmatvec(g), sub.T @ g), "the same sums with any number of threads"
    active = np.flatnonzero(g)
    assert np.array_equal(f.view.rmatvec_rows(active, g[active]), sub[active].T @ g[active])
    w = rng.random(sub.shape[0]).astype(np.float32)
    squared = sparse.csr_matrix((np.square(sub.data), sub.indices, sub.indptr), shape=sub.shape)
    assert np.array_equal(f.view.rmatvec_squared(w), squared.T @ w)
    wide = sparse.csr_matrix((np.square(sub.data, dtype=np.float64), sub.indices, sub.indptr), shape=sub.shape)
    assert np.array_equal(f.view.rmatvec_squared(w.astype(float), np.float64), wide.T @ w.astype(float))
    b = rng.random((sub.shape[0], 3)).astype(np.float32)
    assert np.array_equal(f.view.rmatmat(b), sub.T @ b)
    wide_sub = sub.astype(np.float64)
    norms = np.sqrt(np.asarray(wide_sub.multiply(wide_sub).sum(axis=1)).ravel())
    np.testing.assert_allclose(f.view.row_norms(), norms, rtol=1e-12)
    assert isinstance(f.view, RowView) and f.matrix.nnz == sub.nnz and f._sub
    apertures = sparse.random(90, 12, density=0.3, random_state=rng, format="csr")
    apertures.data[:] = 1.0
    np.testing.assert_allclose(f.view.matmat_sparse(apertures), (sub.astype(np.float64) @ apertures).toarray(),
                               rtol=1e-6)
    assert f.view.matmat_sparse(apertures).dtype == np.float32


def test_lbfgs_lower_bounds():
    """solve_lbfgs(lower=…) keeps x ≥ lower and is at least as good as any feasible start."""
    m, rows, objectives = small_problem()
    f = plan_objective(m, objectives, rows)
    lower = np.zeros(m.shape[1])
    lower[::3] = 40.0
    sol = solve_lbfgs(f, np.full(m.shape[1], 30.0), max_iter=200, lower=lower)
    assert np.all(sol.x >= lower)
    assert sol.value <= f(np.maximum(np.full(m.shape[1], 30.0), lower))[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_active_rows_transpose_product_is_scipys(dtype, threads):
    """Pᵀ g over the non-zero entries of g only (the objective points' gradient): bitwise scipy's csc product
    (a zero may differ in sign), with any number of threads (column ranges)."""
    from concurrent.futures import ThreadPoolExecutor

    from rtautoplan.optimize.rowproducts import RowView

    rng = np.random.default_rng(3)
    p = sparse.random(400, 90, density=0.05, format="csr", random_state=4, dtype=dtype)
    g = rng.normal(size=400) * (rng.random(400) < 0.3)
    active = np.flatnonzero(g)
    view = RowView(p, threads=threads, pool=ThreadPoolExecutor, parallel_min_nnz=0)
    assert np.array_equal(view.rmatvec_rows(active, g[active]), p.T @ g) and active.size < 200


def test_curvature_after_a_weight_change_equals_a_fresh_objectives():
    """The DMEAN column means are kept across weight changes (they do not depend on the weights): the Jacobi
    diagonal after ``with_objectives`` is bitwise that of an objective built afresh with the new weights."""
    m, rows, objectives = small_problem(dtype=np.float32)
    f = plan_objective(m, objectives, rows)
    f.curvature_diagonal()
    weights = np.linspace(0.5, 3.0, len(objectives))
    warm = f.with_objectives(objectives, weights)
    assert warm._means is f._means and warm._means
    assert np.array_equal(warm.curvature_diagonal(), plan_objective(m, objectives, rows, weights).curvature_diagonal())
    assert not np.array_equal(warm.curvature_diagonal(), f.curvature_diagonal())
