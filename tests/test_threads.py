"""The engine's threads (``rtautoplan.threads``, ``$RTAUTOPLAN_THREADS``) never change a result: every parallel
stage gives, bit for bit, what one thread gives (the thresholds that keep small work on one thread are set to 0
here, so the threaded paths run on these small inputs)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import sparse

import rtautoplan.optimize.objectives as objectives_module
from rtautoplan import threads
from rtautoplan.optimize.rowproducts import RowView
from rtautoplan.plan import Objective, ObjectiveKind


def test_engine_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("RTAUTOPLAN_THREADS", "3")
    assert threads.engine_threads() == 3
    monkeypatch.delenv("RTAUTOPLAN_THREADS")
    assert threads.engine_threads() >= 1
    assert [s for s in threads.slabs(10, 1)] == [slice(0, 10)]
    cut = threads.slabs(10, 2)
    assert cut[0].start == 0 and cut[-1].stop == 10 and all(a.stop == b.start for a, b in zip(cut, cut[1:]))
    assert list(threads.ordered_map(lambda v: v * v, range(9), threads=3)) == [v * v for v in range(9)]


def test_ordered_map_reraises_a_task_error():
    def boom(v):
        if v == 4:
            raise ValueError("beam 4")
        return v

    with pytest.raises(ValueError, match="beam 4"):
        list(threads.ordered_map(boom, range(8), threads=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_products_do_not_depend_on_threads(dtype):
    """M x by row blocks, Mᵀ g, Σ w M², Mᵀ B by column ranges: the same bits with 1, 2 and 5 threads."""
    rng = np.random.default_rng(5)
    m = sparse.random(3000, 257, density=0.08, random_state=rng, dtype=dtype, format="csr")
    rows = np.sort(rng.choice(3000, 1700, replace=False))
    x = rng.uniform(0, 2, 257).astype(dtype)
    g = (rng.normal(size=rows.size) * (rng.random(rows.size) < 0.4)).astype(dtype)
    w = rng.random(rows.size).astype(dtype)
    b = rng.random((rows.size, 3)).astype(dtype)
    active = np.flatnonzero(g)

    def products(n):
        v = RowView(m, rows, threads=n, pool=ThreadPoolExecutor, parallel_min_nnz=0)
        return [v @ x, v.rmatvec(g), v.rmatvec_rows(active, g[active]), v.rmatvec_squared(w),
                v.rmatvec_squared(w.astype(float), np.float64), v.rmatmat(b)]

    one = products(1)
    sub = m[rows]
    assert np.array_equal(one[0], sub @ x) and np.array_equal(one[1], sub.T @ g)
    for n in (2, 5):
        assert all(np.array_equal(a, c) for a, c in zip(one, products(n))), f"{n} threads"


def test_distance_transform_does_not_depend_on_threads(monkeypatch):
    from rtautoplan.structures.margins import distance_mm, expand

    rng = np.random.default_rng(2)
    mask = rng.random((23, 31, 29)) < 0.002
    mask[11, 15, 14] = True
    out = {}
    for n in ("1", "3"):
        monkeypatch.setenv("RTAUTOPLAN_THREADS", n)
        out[n] = (distance_mm(mask, (2.0, 1.2, 0.9)), distance_mm(mask, (2.0, 1.2, 0.9), within_mm=6.0),
                  expand(mask, (2.0, 1.2, 0.9), 4.0))
    assert all(np.array_equal(a, b) for a, b in zip(out["1"], out["3"]))


def test_photon_engine_does_not_depend_on_threads(monkeypatch, tmp_path, small_case):
    """The dose influence (beams on threads), the plan objective's value and gradient at the objective points,
    an L-BFGS solve, the dose on the CT grid and a scaled dose: bitwise the same with 1 and 2 threads."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.structures.rules import apply_rules

    monkeypatch.setattr(objectives_module, "PARALLEL_MIN_NNZ", 0)
    case = apply_rules(small_case, "hn")
    objectives = (Objective("CTV_6000", ObjectiveKind.DMIN, 60.0, 2.0),
                  Objective("CTV_6000", ObjectiveKind.DMAX, 63.0, 1.0),
                  Objective("SpinalCord", ObjectiveKind.DMAX, 5.0, 1.0),
                  Objective("Esophagus", ObjectiveKind.DMEAN, 10.0, 0.5))
    out = {}
    for n in ("1", "2"):
        monkeypatch.setenv("RTAUTOPLAN_THREADS", n)
        tps = InHousePhoton(n_beams=3, dose_grid_mm=3.0, max_iter=30, cache_dir=tmp_path / n)  # each computes its own
        tps.prepare(case)
        dose = tps.optimize(objectives)
        f = tps._f
        assert f.view.threads == int(n)
        x = np.random.default_rng(0).uniform(0.5, 1.5, tps._dij.n_beamlets)
        out[n] = (tps._dij.matrix, f(x), f.curvature_diagonal(), tps._x, dose.gy, dose.scaled(1.03).gy)
    (m1, (v1, g1), c1, x1, d1, s1), (m2, (v2, g2), c2, x2, d2, s2) = out["1"], out["2"]
    assert all(np.array_equal(getattr(m1, a), getattr(m2, a)) for a in ("data", "indices", "indptr"))
    assert v1 == v2 and np.array_equal(g1, g2) and np.array_equal(c1, c2)
    assert np.array_equal(x1, x2) and np.array_equal(d1, d2) and np.array_equal(s1, s2)


def test_carbon_spot_influence_does_not_depend_on_threads(monkeypatch, small_case):
    """Beams of the ion spot influence on threads, stacked in beam order: the same dose and α matrices."""
    from rtautoplan.physics.ion_dij import spot_influence
    from rtautoplan.plan import Beam, Modality

    beams = tuple(Beam(f"G{g}", float(g), (0.0, 0.0, 0.0), modality=Modality.CARBON) for g in (0, 120, 240))
    out = {}
    for n in ("1", "2"):
        monkeypatch.setenv("RTAUTOPLAN_THREADS", n)
        dij = spot_influence(small_case, beams, ion="carbon", dose_grid_factor=(1, 2, 2), spot_spacing_mm=6.0)
        out[n] = (dij.matrix, dij.alpha_matrix, dij.spots)
    for a, b in zip(out["1"][:2], out["2"][:2]):
        assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("data", "indices", "indptr")) and a.nnz
    assert all(np.array_equal(a, b) for a, b in zip(out["1"][2], out["2"][2]))
