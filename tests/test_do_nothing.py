"""The do-nothing planner keeps the plan it is handed (issue 16's floor), through the real closed loop."""

from __future__ import annotations

from test_oversight import BIG_FIRST, ToyEnv

from rtautoplan.loop import run_loop
from rtautoplan.pipeline import make_policy
from rtautoplan.policies import POLICIES, DoNothing


def test_do_nothing_is_a_registered_planner():
    assert POLICIES["do-nothing"] is DoNothing
    assert make_policy("do-nothing", None).name == "do-nothing"


def test_the_loop_keeps_the_start_plan_where_another_planner_moves(small_case):
    kept = run_loop(ToyEnv(small_case), DoNothing(), 5)
    moved = run_loop(ToyEnv(small_case), BIG_FIRST, 5)
    assert kept.steps == () and kept.best_step == 0
    assert kept.best_score.total == kept.initial_score.total == 1.0
    assert moved.best_score.total > moved.initial_score.total  # the same env does move under a planner
