"""The safety filter (SPEC §5.2): parameter bounds before the TPS runs, a coverage floor after."""

import math

import numpy as np

from rtautoplan.safety import SafetyFilter, coverage


def test_parameters_inside_bounds_pass_and_outside_are_rejected_with_the_reason():
    f = SafetyFilter(bounds={"t_PTV": (1.0, 1.2), "V_BLA": (0.0, 1.0)})
    assert f.check_parameters({"t_PTV": 1.2, "V_BLA": 0.5, "lambda_BLA": 3.0}).accepted
    verdict = f.check_parameters({"t_PTV": 1.25, "V_BLA": 0.5})
    assert not verdict.accepted and "t_PTV" in verdict.reason and "[1, 1.2]" in verdict.reason
    assert not f.check_parameters({"lambda_BLA": math.nan}).accepted


def test_coverage_floor_rejects_a_cold_step_unless_the_plan_is_better(small_case):
    ctv = small_case.structure("CTV_6000").mask.to_full()
    before = np.where(ctv, 60.0, 10.0)
    after = before.copy()
    after[ctv] = np.linspace(40.0, 60.0, ctv.sum())  # D98 far below 90 % of 60 Gy
    assert coverage(small_case, before)["CTV_6000"] == 1.0
    f = SafetyFilter()
    verdict = f.check_plan(small_case, before, after, better_overall=False)
    assert not verdict.accepted and "CTV_6000" in verdict.reason
    assert f.check_plan(small_case, before, after, better_overall=True).accepted
    assert f.check_plan(small_case, before, before * 0.99, better_overall=False).accepted


def test_a_target_already_below_the_floor_may_improve_but_not_worsen(small_case):
    ctv = small_case.structure("CTV_6000").mask.to_full()
    cold = np.where(ctv, 45.0, 0.0)
    f = SafetyFilter()
    assert f.check_plan(small_case, cold, cold * 1.05, better_overall=False).accepted
    assert not f.check_plan(small_case, cold, cold * 0.95, better_overall=False).accepted


def test_only_changed_parameters_are_judged():
    f = SafetyFilter(bounds={"D": (0.0, 77.0), "w": (0.0, 100.0)})
    current = {"D": 84.0, "w": 1.0}  # a rule-11 start above the bound
    assert f.check_parameters({"D": 84.0, "w": 1.5}, current).accepted
    assert not f.check_parameters({"D": 90.0, "w": 1.5}, current).accepted


def test_coverage_guard_keeps_ctv_d99_at_min_of_guard_and_its_value_whatever_the_score(small_case):
    """D99 may not fall below min(99 % Rx, its value before), better score or not; off by default."""
    ctv = small_case.structure("CTV_6000").mask.to_full()
    at_rx = np.where(ctv, 60.0, 10.0)
    guard = SafetyFilter(coverage_guard=0.99)
    assert coverage(small_case, at_rx * 0.985, 99.0)["CTV_6000"] == 0.985
    verdict = guard.check_plan(small_case, at_rx, at_rx * 0.985, better_overall=True)
    assert not verdict.accepted and "CTV_6000 D99" in verdict.reason and verdict.rule == "coverage floor"
    assert SafetyFilter().check_plan(small_case, at_rx, at_rx * 0.985, better_overall=True).accepted
    assert guard.check_plan(small_case, at_rx, at_rx * 0.995, better_overall=True).accepted
    below = at_rx * 0.97  # already under the guard: may rise, may not fall
    assert guard.check_plan(small_case, below, at_rx * 0.975, better_overall=False).accepted
    assert not guard.check_plan(small_case, below, at_rx * 0.965, better_overall=True).accepted
