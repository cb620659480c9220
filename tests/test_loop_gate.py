"""The closed loop and the clinical gate: a step that breaks a passing plan is rejected, and the best
passing plan is kept beside the best-scoring one (``run_loop(acceptable=...)``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtautoplan.loop import BREAKS_GATE, run_loop
from rtautoplan.plan import Dose, Modality, Plan


@dataclass
class Score:
    total: float
    higher_is_better: bool = True
    maximum: float | None = None


class ToyEnv:
    """Dose = level × a fixed pattern; the score rises with the level; an action adds its value to it."""

    bounds: dict = {}

    def __init__(self, case):
        self.case, self.level, self.t = case, 1.0, 0
        self.pattern = np.where(case.structure("CTV_6000").mask, 60.0, 10.0)

    def _set(self):
        self.last_dose = Dose(self.case.grid, (self.level * self.pattern).astype(np.float32))
        self.last_score = Score(self.level)

    def reset(self, seed=None, options=None):
        self.level, self.t = 1.0, 0
        self._set()
        return np.zeros(1), {}

    @property
    def parameters(self):
        return {"level": self.level}

    def preview(self, action):
        return {"level": self.level + action}

    def moves(self, action):
        return action != 0

    def snapshot(self):
        return self.level

    def restore(self, level):
        self.level = level
        self._set()

    def step(self, action):
        self.level += action
        self.t += 1
        self._set()
        return np.zeros(1), 0.0, False, self.t >= 5, {}

    @property
    def tps(self):
        env = self

        class Tps:
            def plan(self):
                return Plan("toy", Modality.PHOTON, (), (), (np.array([env.level]),), env.last_dose)
        return Tps()


class Greedy:
    name, greedy = "up", True

    def rank(self, observation):
        return [(0.2, 1.0), (0.05, 0.5)]


def test_a_step_that_breaks_the_gate_is_rejected_and_the_passing_plan_kept(small_case):
    env = ToyEnv(small_case)
    passes = lambda e: e.level <= 1.12  # noqa: E731 the "gate": a hot spot above 1.12 × the pattern fails
    result = run_loop(env, Greedy(), 4, acceptable=passes)
    reasons = [s.reason for s in result.steps]
    assert BREAKS_GATE in reasons  # +0.2 would leave 1.2: rejected, the next idea (+0.05) taken
    assert result.best_acceptable is not None and result.best_acceptable[3].total <= 1.12 + 1e-9
    assert all(s.parameters["level"] <= 1.12 + 1e-9 for s in result.steps if s.accepted)


def test_without_a_gate_the_loop_is_unchanged(small_case):
    env = ToyEnv(small_case)
    result = run_loop(env, Greedy(), 3)
    assert result.best_acceptable is None and abs(result.best_score.total - 1.6) < 1e-9  # three steps of +0.2
