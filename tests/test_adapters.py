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
