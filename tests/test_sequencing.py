"""Leaf sequencing (physics/sequencing.py): exact reproduction of the quantised fluence, leaf
geometry (no overlap, inside the jaws, unidirectional), error against levels, a hand-checked
example, and a real in-house photon plan on ``small_case``."""

from __future__ import annotations

import numpy as np
import pytest

from rtautoplan.physics.sequencing import (
    delivered_map, fluence_map, quantise, sequence_beam, sequence_plan, sweep)
from rtautoplan.plan import Dose, Modality, Plan

CELL = 5.0


def random_map(seed=0, ny=7, nx=9, holes=True):
    """Beamlets on a 5 mm lattice centred on the axis, random weights, some lattice holes."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(-ny // 2, ny - ny // 2), np.arange(-nx // 2, nx - nx // 2), indexing="ij")
    positions = np.stack([(x.ravel() + 0.5) * CELL, (y.ravel() + 0.5) * CELL], axis=1)
    keep = rng.random(len(positions)) > (0.15 if holes else 0.0)
    return positions[keep], rng.gamma(2.0, 1.0, keep.sum())


def test_known_small_example():
    """Row 0 [0 2 3 1 2 0]: rises at edges 1, 1, 2, 4, drops at 3, 3, 5, 5 → segments [1,3) [1,3)
    [2,5) [4,5); row 1 [1 1 0 0 4 4]: [0,2) then [4,6) four times."""
    left, right = sweep(np.array([[0, 2, 3, 1, 2, 0], [1, 1, 0, 0, 4, 4]]))
    np.testing.assert_array_equal(left, [[1, 0], [1, 4], [2, 4], [4, 4], [5, 4]])
    np.testing.assert_array_equal(right, [[3, 2], [3, 6], [5, 6], [5, 6], [5, 6]])


@pytest.mark.parametrize("seed", range(5))
def test_segments_reproduce_the_quantised_fluence_exactly(seed):
    positions, weights = random_map(seed)
    fmap = fluence_map(positions, weights, CELL)
    for levels in (1, 4, 10):
        beam = sequence_beam(fmap, levels)
        intensity, step = quantise(fmap.fluence, levels)
        np.testing.assert_allclose(delivered_map(beam, fmap), intensity * step, atol=1e-12 * step)
        np.testing.assert_allclose(beam.delivered, (intensity * step)[fmap.rows, fmap.cols], atol=1e-12)
        assert beam.meterset_weights.sum() == pytest.approx(1.0)


def test_leaves_do_not_overlap_stay_within_jaws_and_sweep_one_way():
    positions, weights = random_map(3, ny=9, nx=12)
    beam = sequence_beam(fluence_map(positions, weights, CELL), 10)
    assert np.all(beam.left_mm <= beam.right_mm)
    assert np.all(beam.left_mm >= beam.jaw_x_mm[0]) and np.all(beam.right_mm <= beam.jaw_x_mm[1])
    centres = 0.5 * (beam.leaf_boundaries_mm[1:] + beam.leaf_boundaries_mm[:-1])
    open_rows = np.any(beam.left_mm < beam.right_mm, axis=0)
    assert np.all((centres[open_rows] > beam.jaw_y_mm[0]) & (centres[open_rows] < beam.jaw_y_mm[1]))
    rows = np.flatnonzero(np.any(beam.left_mm < beam.right_mm, axis=0))
    assert np.all(np.diff(beam.left_mm[:, rows], axis=0) >= 0)  # unidirectional sweep
    assert np.all(np.diff(beam.right_mm[:, rows], axis=0) >= 0)
    assert beam.leaf_boundaries_mm[0] == -beam.leaf_boundaries_mm[-1]  # symmetric MLC
    np.testing.assert_allclose(np.diff(beam.leaf_boundaries_mm), CELL)
    assert beam.n_segments == beam.left_mm.shape[0] == beam.segment_fluence.size


def test_error_decreases_with_levels_and_is_bounded_by_half_a_step():
    positions, weights = random_map(1, ny=11, nx=11, holes=False)
    fmap = fluence_map(positions, weights, CELL)
    errors = [sequence_beam(fmap, levels) for levels in (2, 5, 10, 20, 50)]
    rms = [b.rms_error for b in errors]
    assert all(a > b for a, b in zip(rms, rms[1:])), rms
    assert all(b.max_error <= 0.5 / b.levels + 1e-12 for b in errors)


def test_rejects_off_lattice_positions_and_other_modalities():
    with pytest.raises(ValueError, match="lattice"):
        fluence_map(np.array([[1.0, 2.5]]), np.array([1.0]), CELL)
    with pytest.raises(ValueError, match="non-negative"):
        fluence_map(np.array([[2.5, 2.5]]), np.array([-1.0]), CELL)
    plan = Plan("c", Modality.PROTON, (), (), (), Dose(None, np.zeros(1)))
    with pytest.raises(ValueError, match="photon"):
        sequence_plan(plan)


def test_an_all_zero_beam_has_no_segment():
    positions, weights = random_map(0)
    beam = sequence_beam(fluence_map(positions, 0 * weights, CELL), 10)
    assert beam.n_segments == 0 and np.all(beam.delivered == 0)


def test_real_photon_plan(photon_plan):
    """The in-house plan of small_case (module fixture below): one MLC model for all
    beams, delivered weights in plan order, error within half a level."""
    _, _, plan = photon_plan
    sequenced = sequence_plan(plan, levels=10)
    assert len(sequenced) == len(plan.beams)
    for seq, w in zip(sequenced, plan.weights):
        assert seq.delivered.shape == w.shape
        np.testing.assert_array_equal(seq.leaf_boundaries_mm, sequenced[0].leaf_boundaries_mm)
        assert seq.max_error <= 0.05 + 1e-12 and seq.rms_error < 0.05


@pytest.fixture(scope="module")
def photon_plan(tmp_path_factory):
    from conftest import build_small_case

    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    case = apply_rules(build_small_case(), "hn")
    tps = InHousePhoton(n_beams=5, dose_grid_factor=1, cache_dir=tmp_path_factory.mktemp("dij"), max_iter=60)
    tps.prepare(case)
    tps.optimize(objectives_for(case, np.random.default_rng(0)))
    return case, tps, tps.plan()


def test_apertures_deliver_the_segments_fluence(photon_plan):
    """A·w with the sequencer's weights is exactly the fluence its segments deliver."""
    from rtautoplan.physics.sequencing import apertures

    _, _, plan = photon_plan
    sequenced = sequence_plan(plan, levels=10)
    for a, seq in zip(apertures(plan, sequenced), sequenced):
        assert a.shape == (seq.delivered.size, seq.n_segments)
        np.testing.assert_allclose(a @ seq.segment_fluence, seq.delivered, rtol=1e-9, atol=1e-9)


def test_segment_weight_optimisation_lowers_the_objective_of_the_sequenced_plan(photon_plan):
    """Re-weighting the segments (w ≥ 0) never raises the plan objective of the quantised fluence,
    and on small_case lowers it; segments weighted 0 are dropped."""
    from rtautoplan.physics.sequencing import apertures, with_segment_weights

    case, tps, plan = photon_plan
    sequenced = sequence_plan(plan, levels=5)
    shapes = apertures(plan, sequenced)
    f = tps._new_objective(tuple(plan.objectives))
    before = f(np.concatenate([s.delivered for s in sequenced]))[0]
    weights = tps.optimize_segments(plan.objectives, shapes, [s.segment_fluence for s in sequenced])
    new = [with_segment_weights(s, a, w, p) for s, a, w, p in zip(sequenced, shapes, weights, plan.weights)]
    after = f(np.concatenate([s.delivered for s in new]))[0]
    assert after < before
    assert all(np.all(s.segment_fluence > 0) and s.n_segments <= old.n_segments for s, old in zip(new, sequenced))


@pytest.mark.parametrize("points", ["ct", "dose_grid"])
def test_segment_objective_is_the_objective_of_the_delivered_fluence(photon_plan, points):
    """f(A w) evaluated on the segment influence M·A (optimize.segments) is f(A w) through the beamlets:
    value and gradient Aᵀ∇f agree to float32 rounding, for the CT-point and the dose-grid objectives."""
    from scipy.linalg import block_diag

    from rtautoplan.optimize.segments import segment_objective
    from rtautoplan.physics.sequencing import apertures

    case, tps, plan = photon_plan
    sequenced = sequence_plan(plan, levels=5)
    a = block_diag(*apertures(plan, sequenced))
    saved = tps.objective_points
    tps.objective_points = points
    try:
        f = tps._new_objective(tuple(plan.objectives))
    finally:
        tps.objective_points = saved
    fs = segment_objective(f, a)
    rng = np.random.default_rng(1)
    for w in (np.concatenate([s.segment_fluence for s in sequenced]), rng.gamma(2.0, 1.0, a.shape[1])):
        value, grad = f(a @ w)
        seg_value, seg_grad = fs(w)
        assert seg_value == pytest.approx(value, rel=1e-4)
        np.testing.assert_allclose(seg_grad, a.T @ grad, rtol=1e-3, atol=1e-4 * np.abs(a.T @ grad).max())
    with pytest.raises(ValueError, match="beamlets"):
        segment_objective(f, a[:-1])


def test_a_plan_is_sequenced_once_for_the_gate_check_and_the_output(photon_plan, monkeypatch):
    """``deliverable`` with a memo: the same plan (weights and objectives) re-uses its sequenced, re-weighted
    beams, bitwise; another plan is sequenced anew."""
    from dataclasses import replace

    from rtautoplan import pipeline

    case, tps, plan = photon_plan
    env = type("Env", (), {"tps": tps})()
    calls = []
    original = tps.optimize_segments
    monkeypatch.setattr(tps, "optimize_segments", lambda *a: calls.append(1) or original(*a))
    memo: dict = {}
    first, beams = pipeline.deliverable(env, plan, memo)
    again, beams_again = pipeline.deliverable(env, replace(plan, weights=tuple(w.copy() for w in plan.weights)), memo)
    assert len(calls) == 1 and beams_again is beams
    np.testing.assert_array_equal(again.dose.gy, first.dose.gy)
    pipeline.deliverable(env, replace(plan, weights=tuple(w * 1.01 for w in plan.weights)), memo)
    assert len(calls) == 2 and len(memo) == 2
