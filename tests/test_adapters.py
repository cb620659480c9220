"""Every registered TPS adapter passes the conformance check (adapters/base.py)."""

from dataclasses import replace

import numpy as np
import pytest

from rtautoplan.adapters import ADAPTERS, ConformanceError, check_tps
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules


@pytest.fixture
def planning_case(small_case):
    case = apply_rules(small_case, site="hn")
    return case, objectives_for(case, np.random.default_rng(0))


@pytest.mark.parametrize("solver", ["lbfgs", "admm"])
def test_inhouse_photon_conforms(planning_case, tmp_path, solver):
    case, objectives = planning_case
    check_tps(InHousePhoton(solver=solver, n_beams=5, dose_grid_factor=1, cache_dir=tmp_path, max_iter=60),
              case, objectives)


def test_every_registered_adapter_is_a_tps():
    assert "inhouse-photon" in ADAPTERS
    for name, cls in ADAPTERS.items():
        assert hasattr(cls, "prepare") and hasattr(cls, "optimize") and hasattr(cls, "plan"), name


def test_check_tps_catches_a_broken_adapter(planning_case, tmp_path):
    """A TPS whose plan() disagrees with its last dose must fail the check."""
    case, objectives = planning_case

    class Broken(InHousePhoton):
        def plan(self):
            plan = super().plan()
            return type(plan)(plan.case_id, plan.modality, plan.beams, plan.objectives, plan.weights,
                              type(plan.dose)(plan.dose.grid, plan.dose.gy * 2.0), plan.adapter)

    with pytest.raises(ConformanceError, match="last dose"):
        check_tps(Broken(n_beams=5, dose_grid_factor=1, cache_dir=tmp_path, max_iter=30), case, objectives)


@pytest.mark.parametrize("solver", ["lbfgs", "admm"])
def test_inhouse_photon_without_warm_start_plans_as_a_function_of_the_objectives(planning_case, tmp_path, solver):
    """warm_start=False: objectives A, then B, then A again give A's dose exactly; warm-started, the
    second A starts from B's solution and need not (the ACER planner's engine, policies/acer.py)."""
    case, objectives = planning_case
    tighter = tuple(replace(o, dose_gy=0.5 * o.dose_gy) if o.adjustable else o for o in objectives)
    doses = {}
    for warm in (False, True):
        tps = InHousePhoton(solver=solver, n_beams=5, dose_grid_factor=2, cache_dir=tmp_path, max_iter=15,
                            warm_start=warm)
        tps.prepare(case)
        first = tps.optimize(objectives).gy.copy()
        tps.optimize(tighter)
        doses[warm] = (first, tps.optimize(objectives).gy)
    assert np.array_equal(*doses[False])
    assert not np.array_equal(*doses[True])


def test_inhouse_engines_start_from_given_weights(planning_case, tmp_path):
    """optimize(objectives, start=plan.weights) starts from that plan, not from the previous solution:
    A, then B, then A from A's weights (3 iterations) ends at A's optimum, where A warm from B's
    solution does not; a start of the wrong length is refused."""
    from rtautoplan.adapters.base import objective_value
    from rtautoplan.adapters.inhouse_proton import InHouseProton

    case, objectives = planning_case
    tighter = tuple(replace(o, dose_gy=0.3 * o.dose_gy, weight=30.0 * o.weight) if o.adjustable else o
                    for o in objectives)
    for tps in (InHousePhoton(n_beams=5, dose_grid_factor=2, cache_dir=tmp_path, max_iter=200),
                InHouseProton(n_beams=2, dose_grid_factor=2, spot_spacing_mm=8.0, max_iter=200, cache_dir=tmp_path)):
        tps.prepare(case)
        first = tps.optimize(objectives)
        start = tps.plan().weights
        tps.optimize(tighter)
        squeezed = tps.plan().weights
        tps.max_iter = 3  # too few to come back from B's solution
        again = tps.optimize(objectives, start=start)
        best = objective_value(first, case, objectives)
        assert objective_value(again, case, objectives) <= best * 1.01 + 1e-9, tps.name
        tps.optimize(tighter, start=squeezed)
        warm = tps.optimize(objectives)
        assert objective_value(warm, case, objectives) > best * 1.05, tps.name
        assert not np.allclose(np.concatenate(start), np.concatenate(squeezed))
        with pytest.raises(ValueError, match="start of"):
            tps.optimize(objectives, start=start[:-1])


def test_inhouse_photon_plans_with_high_definition_leaves(planning_case, tmp_path):
    """beamlet_mm=2.5 (a high-definition MLC): the same field area in 2.5 mm beamlets, four times as many as
    5 mm ones (±one ring at the target's edge), and the plan sequences onto 2.5 mm leaf pairs whose
    delivered fluence is the optimised one up to the sequencer's intensity levels."""
    from rtautoplan.physics.sequencing import sequence_plan

    case, objectives = planning_case
    counts = {}
    for mm in (5.0, 2.5):
        tps = InHousePhoton(n_beams=3, dose_grid_factor=2, cache_dir=tmp_path, max_iter=30, beamlet_mm=mm)
        tps.prepare(case)
        tps.optimize(objectives)
        plan = tps.plan()
        counts[mm] = sum(len(w) for w in plan.weights)
        assert plan.beamlet_mm == mm
        beam = sequence_plan(plan)[0]
        assert np.allclose(np.diff(beam.leaf_boundaries_mm), mm)
        peak = float(np.max(plan.weights[0]))
        assert np.max(np.abs(beam.delivered - plan.weights[0])) <= 0.1 * peak
    assert 3.0 <= counts[2.5] / counts[5.0] <= 5.0
    with pytest.raises(ValueError, match="beamlet_mm"):
        InHousePhoton(beamlet_mm=0.0)
