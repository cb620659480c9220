"""A stochastic behaviour planner with full support, for logging runs that off-policy evaluation can
use (SPEC §5.5; ``rtautoplan.ope``).

``EpsilonGreedy(base, epsilon)``: with probability 1 − ε the base planner's first choice among the
actions that move a planning parameter, else one of those drawn uniformly; so every moving action
has μ(a|s) ≥ ε / n. ``rank`` puts the drawn action first, valued by μ(a|s), then the others by μ —
the loop logs the first value as the behaviour probability (``policies.base.behaviour_probability``).
The base planner is asked once per step (it keeps its own state, e.g. the rule-based planner's
handles). Not greedy: every step is kept, so a logged trajectory is the one the behaviour policy drew.

``EpsilonSoft(base, epsilon)``: a planner with a distribution (``probabilities``, e.g. the previous
generation's ACER) sampled through μ = (1 − ε) π_base + ε / n over the n moving actions, so μ(a|s) ≥ ε / n
and μ follows π_base elsewhere: the logs a clinic has of its deployed stochastic planner.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rtautoplan.policies.base import ranked, reset as reset_policy


class EpsilonGreedy:
    """ε-greedy around ``base`` over ``env``'s discrete actions (``env.action_mask()`` when it has one:
    only the moving actions are drawn)."""

    stochastic = True
    greedy = False
    value_kind = "probability"

    def __init__(self, base, env, epsilon: float = 0.3, seed: int = 0):
        if not 0.0 < epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1] (full support), not {epsilon}")
        self.base, self.env, self.epsilon = base, env, float(epsilon)
        self.name = f"{base.name}+eps{epsilon:g}"
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        reset_policy(self.base)

    def probabilities(self, observation) -> np.ndarray:
        """μ(·|s) over every action (0 for those that move nothing)."""
        mask = _moving(self.env, int(self.env.action_space.n))
        mu = np.where(mask, self.epsilon / mask.sum(), 0.0)
        choice = next((int(a) for a, _ in ranked(self.base, observation, k=None) if mask[int(a)]), None)
        mu[choice if choice is not None else np.flatnonzero(mask)[0]] += 1.0 - self.epsilon
        return mu

    def rank(self, observation) -> list[tuple[Any, float]]:
        return _draw_first(self.probabilities(observation), self.rng)

    def act(self, observation) -> int:
        return self.rank(observation)[0][0]


class EpsilonSoft:
    """ε-soft sampling of ``base``'s distribution over ``env``'s moving actions (module docstring)."""

    stochastic = True
    greedy = False
    value_kind = "probability"

    def __init__(self, base, env, epsilon: float = 0.1, seed: int = 0):
        if not 0.0 < epsilon <= 1.0:
            raise ValueError(f"epsilon must be in (0, 1] (full support), not {epsilon}")
        self.base, self.env, self.epsilon = base, env, float(epsilon)
        self.name = f"{base.name}+soft{epsilon:g}"
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        reset_policy(self.base)

    def probabilities(self, observation) -> np.ndarray:
        """μ(·|s) over every action (0 for those that move nothing)."""
        pi = np.asarray(self.base.probabilities(observation), float)
        mask = _moving(self.env, pi.size)
        pi = np.where(mask, pi, 0.0)
        pi = pi / pi.sum() if pi.sum() > 0 else mask / mask.sum()
        return (1.0 - self.epsilon) * pi + self.epsilon * mask / mask.sum()

    def rank(self, observation) -> list[tuple[Any, float]]:
        return _draw_first(self.probabilities(observation), self.rng)

    def act(self, observation) -> int:
        return self.rank(observation)[0][0]


def _moving(env, n: int) -> np.ndarray:
    """The actions that move a planning parameter (``env.action_mask()``; all when none or it is empty)."""
    mask = np.asarray(env.action_mask(), bool) if hasattr(env, "action_mask") else np.ones(n, bool)
    return mask if mask.any() else np.ones(n, bool)


def _draw_first(p: np.ndarray, rng: np.random.Generator) -> list[tuple[Any, float]]:
    """One action drawn from ``p`` first, valued by its probability, then the rest with p > 0 by p."""
    drawn = int(rng.choice(p.size, p=p / p.sum()))
    rest = [int(a) for a in np.argsort(-p, kind="stable") if int(a) != drawn and p[a] > 0]
    return [(drawn, float(p[drawn]))] + [(a, float(p[a])) for a in rest]


class Sampling:
    """A planner with a distribution (``probabilities(observation)``, e.g. ACER's π) acting by
    sampling it rather than by its argmax: the stochastic policy whose value off-policy evaluation
    estimates, run for real to measure it. ``rank``: the drawn action first, valued by π(a|s)."""

    stochastic = True
    greedy = False
    value_kind = "probability"

    def __init__(self, policy, seed: int = 0):
        self.policy, self.rng = policy, np.random.default_rng(seed)
        self.name = f"{policy.name}-sampled"

    def reset(self) -> None:
        reset_policy(self.policy)

    def rank(self, observation) -> list[tuple[Any, float]]:
        pi = np.asarray(self.policy.probabilities(observation), float)
        return _draw_first(pi / pi.sum(), self.rng)

    def act(self, observation) -> int:
        return self.rank(observation)[0][0]
