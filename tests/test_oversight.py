"""The complete safety filter (SPEC §5.2: level-1 organ limits, conservative mode, rejection rate) and
the uncertainty of every step (§5.4), on a toy environment whose dose is level × a fixed pattern."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from rtautoplan.errors import InputError
from rtautoplan.loop import run_loop
from rtautoplan.oversight import Oversight, conservative_reference
from rtautoplan.plan import Dose, Modality, Objective, ObjectiveKind, Plan
from rtautoplan.protocols import goals_for
from rtautoplan.safety import CONSERVATIVE, LEVEL1, SafetyFilter, level1_limits, rejection_rate
from rtautoplan.uncertainty import DISAGREEMENT_FLAG, MARGIN_FLAG, assess, entropy, margin
from test_loop_gate import Score


class ToyEnv:
    """Four discrete actions: action a adds STEP[a] to the level; dose = level × (60 Gy in the CTV,
    40 Gy in the spinal cord, 10 Gy elsewhere); the score is the level."""

    STEP = (0.0, 0.1, 0.2, 0.4)
    bounds: dict = {}
    action_space = gym.spaces.Discrete(4)

    def __init__(self, case):
        self.case, self.level, self.t = case, 1.0, 0
        self.pattern = np.where(case.structure("CTV_6000").mask, 60.0,
                                np.where(case.structure("SpinalCord").mask, 40.0, 10.0)).astype(np.float32)

    def _set(self):
        self.last_dose = Dose(self.case.grid, (self.level * self.pattern).astype(np.float32))
        self.last_score = Score(self.level)

    def reset(self, seed=None, options=None):
        self.level, self.t = 1.0, 0
        self._set()
        return np.array([self.level]), {}

    @property
    def parameters(self):
        return {"level": self.level}

    @property
    def objectives(self):
        return (Objective("SpinalCord", ObjectiveKind.DMAX, 45.0),)

    def preview(self, action):
        return {"level": self.level + self.STEP[action]}

    def moves(self, action):
        return self.STEP[action] != 0

    def snapshot(self):
        return self.level

    def restore(self, level):
        self.level = level
        self._set()

    def step(self, action):
        self.level += self.STEP[action]
        self.t += 1
        self._set()
        return np.array([self.level]), self.STEP[action], False, self.t >= 6, {}

    @property
    def tps(self):
        env = self

        class Tps:
            convergence = {"iterations": 7, "converged": True}

            def plan(self):
                return Plan("toy", Modality.PHOTON, (), (), (np.array([env.level]),), env.last_dose)
        return Tps()


class Fixed:
    """Ranks the actions in a fixed order with fixed probabilities."""

    value_kind = "probability"

    def __init__(self, order, name="fixed"):
        self.order, self.name = order, name

    def rank(self, observation):
        return list(self.order)


BIG_FIRST = Fixed([(3, 0.6), (2, 0.3), (1, 0.1)])


def test_level1_limits_come_from_the_goals_of_level1_organs(small_case):
    limits = level1_limits(small_case, goals_for(small_case, "generic"))
    assert [(g.roi, g.metric, g.upper) for g in limits] == [("SpinalCord", "D0.03cc", 50.0)]


def test_a_step_taking_the_cord_above_its_limit_is_rejected_whatever_the_score(small_case):
    """40 Gy × level: +0.4 (56 Gy) breaks the 50 Gy limit; the filter rejects it and the policy's
    next choice (+0.2, 48 Gy) is taken; the cord never exceeds its limit on an accepted step."""
    limits = level1_limits(small_case, goals_for(small_case, "generic"))
    result = run_loop(ToyEnv(small_case), BIG_FIRST, 3, level1=limits)
    rejected = [s for s in result.steps if not s.accepted]
    assert rejected and rejected[0].rule == LEVEL1 and "SpinalCord" in rejected[0].reason
    assert all(40.0 * s.parameters["level"] <= 50.0 + 1e-6 for s in result.steps if s.accepted)
    rate = rejection_rate(result.steps)
    assert rate["per_rule"][LEVEL1] == len(rejected) and rate["rate"] == pytest.approx(len(rejected) / len(result.steps))


def test_an_objective_relaxed_above_the_hard_limit_is_rejected(small_case):
    limits = level1_limits(small_case, goals_for(small_case, "generic"))
    f = SafetyFilter(level1=limits)
    dose = np.where(small_case.structure("SpinalCord").mask, 30.0, 0.0)
    relaxed = (Objective("SpinalCord", ObjectiveKind.DMAX, 60.0),)
    verdict = f.check_level1(small_case, relaxed, dose, dose)
    assert not verdict.accepted and verdict.rule == LEVEL1 and "relaxed" in verdict.reason
    assert f.check_level1(small_case, (Objective("SpinalCord", ObjectiveKind.DMAX, 45.0),), dose, dose).accepted
    above = dose * 2.0  # 60 Gy: already above; may fall, may not rise
    assert f.check_level1(small_case, (), above, above * 0.95).accepted
    assert not f.check_level1(small_case, (), above, above * 1.01).accepted


def test_conservative_mode_takes_only_actions_both_planners_rank_in_their_top_k(small_case):
    reference = Fixed([(1, 3.0), (2, 2.0), (3, 1.0)], "rule-based")
    watch = Oversight(reference=reference, conservative_k=2)
    result = run_loop(ToyEnv(small_case), BIG_FIRST, 2, oversight=watch)
    refused = [s for s in result.steps if s.rule == CONSERVATIVE]
    assert refused and all(s.action == "3" for s in refused)  # the policy's first choice is not in {1, 2}
    assert {s.action for s in result.steps if s.accepted} == {"2"}  # in both top-2 lists
    disjoint = Oversight(reference=Fixed([(1, 1.0)], "rule-based"), conservative_k=1)
    kept = run_loop(ToyEnv(small_case), BIG_FIRST, 4, oversight=disjoint)  # nothing shared: the plan stays
    assert not any(s.accepted for s in kept.steps) and [s.step for s in kept.steps] == [1, 2, 3, 4]
    assert kept.best_score.total == kept.initial_score.total


class Counting(Fixed):
    """A reviewer that counts how often it is asked (a recurrent seed must be asked once per step)."""

    def __init__(self, order, name="seed1"):
        super().__init__(order, name)
        self.asked = 0

    def rank(self, observation):
        self.asked += 1
        return super().rank(observation)


def test_conservative_mode_with_an_ensemble_falls_back_to_the_next_action_the_seeds_agree_on(small_case):
    """K = 2: the policy's first choice (+0.4) is not in the other seed's first two, so it is refused and
    the policy's second (+0.2), which both rank in their first two, is taken; the seed is asked once per
    step (its rankings from ``assess`` are reused)."""
    seed = Counting([(2, 0.5), (1, 0.4), (3, 0.1)])
    watch = Oversight(ensemble=(seed,), conservative_k=2)
    result = run_loop(ToyEnv(small_case), BIG_FIRST, 3, oversight=watch)
    refused = [s for s in result.steps if s.rule == CONSERVATIVE]
    assert len(refused) == 3 and all(s.action == "3" and "other trained seed" in s.reason for s in refused)
    assert [s.action for s in result.steps if s.accepted] == ["2", "2", "2"] and seed.asked == 3
    agreeing = Oversight(ensemble=(Fixed([(2, 0.5), (3, 0.4), (1, 0.1)]),), conservative_k=2)
    assert not any(s.rule == CONSERVATIVE for s in run_loop(ToyEnv(small_case), BIG_FIRST, 2, oversight=agreeing).steps)
    strict = Oversight(ensemble=(Fixed([(2, 0.5), (3, 0.4), (1, 0.1)]),), conservative_k=1)
    kept = run_loop(ToyEnv(small_case), BIG_FIRST, 2, oversight=strict)  # top-1s differ: the plan stays
    assert not any(s.accepted for s in kept.steps) and len(kept.steps) == 2


def test_conservative_mode_still_rejects_an_agreed_action_that_breaks_a_level1_limit(small_case):
    """Both seeds rank +0.4 first: it is admitted, but it takes the cord to 56 Gy > 50 Gy, so the level-1
    limit rejects it and the next agreed action (+0.2) is taken."""
    limits = level1_limits(small_case, goals_for(small_case, "generic"))
    watch = Oversight(ensemble=(Fixed([(3, 0.5), (2, 0.4), (1, 0.1)]),), conservative_k=2)
    result = run_loop(ToyEnv(small_case), BIG_FIRST, 1, level1=limits, oversight=watch)
    assert [(s.action, s.accepted, s.rule) for s in result.steps] == [("3", False, LEVEL1), ("2", True, "")]


def test_conservative_mode_needs_discrete_actions_and_a_k(small_case):
    env = ToyEnv(small_case)
    assert conservative_reference(env, None) is None
    env.action_space = gym.spaces.Box(-1, 1, (2,))
    with pytest.raises(InputError, match="not a discrete set"):
        conservative_reference(env, 3)
    with pytest.raises(InputError, match="K ≥ 1"):
        Oversight(reference=BIG_FIRST, conservative_k=0)


def test_entropy_margin_and_disagreement():
    assert entropy(np.full(4, 0.25)) == pytest.approx(math.log(4))
    assert margin([0.6, 0.3, 0.1], "probability") == pytest.approx(0.3)
    assert margin([5.0, 4.0, 0.0], "q") == pytest.approx(0.2)  # the gap over the Q range
    sure = assess([(0, 0.9), (1, 0.1)], "probability", [[(0, 0.8), (1, 0.2)]])
    assert sure["disagreement"] == 0.0 and sure["flags"] == [] and sure["total_variation"] == pytest.approx(0.1)
    torn = assess([(0, 0.52), (1, 0.48)], "probability", [[(1, 0.7), (0, 0.3)]])
    assert torn["margin"] < MARGIN_FLAG and torn["disagreement"] >= DISAGREEMENT_FLAG
    assert torn["flags"] == ["low margin", "ensemble disagrees"]
    q = assess([(2, 3.0), (0, 1.0), (1, -1.0)], "q")
    assert 0.0 < q["entropy"] < math.log(3) and q["margin"] == pytest.approx(0.5)
    assert assess([(0, 9.0), (1, 1.0)], "priority")["entropy"] is None


def test_every_step_logs_mu_state_convergence_and_the_ensembles_view(small_case):
    member = Fixed([(1, 0.5), (2, 0.3), (3, 0.2)], "seed1")
    result = run_loop(ToyEnv(small_case), BIG_FIRST, 2, oversight=Oversight(ensemble=(member,)))
    for s in result.steps:
        assert s.mu == 1.0 and s.action_id in (1, 2, 3) and s.state is not None
        assert s.uncertainty["ensemble"] == 1 and s.uncertainty["disagreement"] == 1.0
        assert "ensemble disagrees" in s.uncertainty["flags"]
        assert s.convergence == {"iterations": 7, "converged": True}


def test_hard_constraints_catch_spots_below_the_minimum_mu_and_a_plan_off_its_normalisation(small_case):
    from types import SimpleNamespace

    from rtautoplan.normalisation import Normalised
    from rtautoplan.safety import hard_constraints

    ctv = small_case.structure("CTV_6000").mask
    dose = Dose(small_case.grid, np.where(ctv, 60.0, 5.0).astype(np.float32))
    ion = Plan("small", Modality.PROTON, (), (), (np.array([0.0, 3.0, 4.5]), np.array([2.9])), dose)
    at_rx = Normalised("CTV_6000", "D95%", 60.0, 58.0, 1.03)
    checks = {c["rule"]: c for c in hard_constraints(small_case, SimpleNamespace(plan=ion, normalisation=at_rx))}
    assert not checks["minimum MU per spot"]["met"] and "1 of 3 spots" in checks["minimum MU per spot"]["detail"]
    assert checks["target normalisation"]["met"]
    off = Normalised("CTV_6000", "D95%", 62.0, 58.0, 1.07)
    photon = Plan("small", Modality.PHOTON, (), (), (np.array([0.5]),), dose)
    checks = hard_constraints(small_case, SimpleNamespace(plan=photon, normalisation=off))
    assert [c["rule"] for c in checks] == ["target normalisation"] and not checks[0]["met"]


def test_the_study_counts_a_kept_plan_that_takes_a_level1_organ_above_its_limit(small_case):
    from rtautoplan.oversight_study import kept_plan_level1

    limits = level1_limits(small_case, goals_for(small_case, "generic"))
    cord = small_case.structure("SpinalCord").mask
    initial = np.where(cord, 45.0, 0.0)
    assert kept_plan_level1(small_case, limits, initial, initial * 1.1) == []  # 49.5 Gy ≤ 50 Gy
    broken = kept_plan_level1(small_case, limits, initial, initial * 1.2)  # 54 Gy
    assert len(broken) == 1 and broken[0].startswith("SpinalCord D0.03cc 54.00 Gy")
    above = initial * 1.3  # already above: only a further rise counts
    assert kept_plan_level1(small_case, limits, above, above) == [] and kept_plan_level1(small_case, limits, above, above * 1.01)
