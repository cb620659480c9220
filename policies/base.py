"""The Policy protocol: what the closed loop asks of any planner, learned or not.

``act(observation)`` is all a planner must do. A planner that can say how sure it is also offers
``rank(observation) -> [(action, value), …]`` best first — probabilities (ACER, PPO), Q values
(QMIX, SARSA) or heuristic priorities (rule-based) — which the report shows as the top-3
alternatives of every step (SPEC §5.3). ``reset()``, when present, is called at the start of each
episode (recurrent policies clear their hidden state). ``value_kind`` says what the ranked values
are ("probability", "q" or "priority"; ``rtautoplan.uncertainty``). A ``stochastic`` planner's
``rank`` puts the action it drew first, valued by its probability: that is the behaviour
probability μ(a|s) the audit log records for off-policy evaluation (``behaviour_probability``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    name: str

    def act(self, observation: np.ndarray) -> Any:
        """The action to take in ``observation`` (an element of the environment's action space)."""


def ranked(policy: Policy, observation: np.ndarray, k: int | None = 3) -> list[tuple[Any, float]]:
    """The policy's top-``k`` actions (None: all it ranks) with their probability or value, best
    first; a policy that cannot rank gives its one action with value NaN."""
    rank = getattr(policy, "rank", None)
    if rank is None:
        return [(policy.act(observation), float("nan"))]
    return list(rank(observation))[:k]


def behaviour_probability(policy: Policy, value: float) -> float:
    """μ(a|s) of the action the loop takes, given its ranked ``value``: the value itself for a
    ``stochastic`` planner; 1 for a deterministic one (its choice is a function of the state)."""
    return float(value) if getattr(policy, "stochastic", False) else 1.0


def reset(policy: Policy) -> None:
    """Start a new episode (clears recurrent state where the policy has any)."""
    start = getattr(policy, "reset", None)
    if start is not None:
        start()


class RandomPolicy:
    """Uniformly random actions: the floor every planner must clear. On a multi-agent (PettingZoo)
    environment every agent draws its own action."""

    name = "random"

    def __init__(self, env, seed: int = 0):
        agents = getattr(env, "possible_agents", None)
        self.spaces = {a: env.action_space(a) for a in agents} if agents else {None: env.action_space}
        for i, space in enumerate(self.spaces.values()):
            space.seed(seed + i)

    def act(self, observation) -> Any:
        if None in self.spaces:
            return self.spaces[None].sample()
        return {agent: space.sample() for agent, space in self.spaces.items()}
