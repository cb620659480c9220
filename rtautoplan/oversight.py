"""What the closed loop adds for a clinician at every step (SPEC §5.2, §5.4): the ensemble's second
opinions, and conservative mode.

``Oversight(ensemble=…, reference=…, conservative_k=K)`` is handed to ``loop.run_loop``:

* ``assess``: the step's uncertainty (``rtautoplan.uncertainty.assess``) over the actions that move a
  planning parameter, with every ensemble member (another trained seed) asked the same observation
  (a recurrent member carries its own state through the episode, as the policy does);
* ``admit`` (conservative mode, ``conservative_k`` set): only actions that both the policy and the
  reference planner (the rule-based one) rank in their top K moving actions are allowed; the policy's
  first choice, when refused, is logged with rule "conservative mode". With no action in both lists
  the step passes with the plan unchanged (the step budget counts it); the planners, asked again,
  move on (the rule-based planner to its next handle, a recurrent policy's state advances).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rtautoplan.errors import InputError
from rtautoplan.policies.base import ranked, reset
from rtautoplan.uncertainty import action_key, assess


def value_kind(policy) -> str:
    """What a policy's ranked values are: "probability", "q" or "priority" (``Policy.value_kind``)."""
    return str(getattr(policy, "value_kind", "priority"))


@dataclass
class Oversight:
    """ensemble: other planners asked every observation (epistemic disagreement); reference: the
    planner conservative mode consults; conservative_k: K (None: off)."""

    ensemble: Sequence[Any] = ()
    reference: Any = None
    conservative_k: int | None = None

    def __post_init__(self):
        if self.conservative_k is not None:
            if self.conservative_k < 1:
                raise InputError("--conservative", f"K = {self.conservative_k} allows no action", "Give K ≥ 1")
            if self.reference is None:
                raise InputError("--conservative", "no reference planner to compare with",
                                 "Plan a site with a rule-based heuristic (prostate, hn)")

    def reset(self) -> None:
        for member in (*self.ensemble, self.reference):
            if member is not None:
                reset(member)

    def assess(self, policy, observation, moving: Sequence[tuple[Any, float]]) -> dict:
        """Uncertainty of this step; every ensemble member ranks ``observation`` once."""
        keys = {action_key(a) for a, _ in moving}
        members = [[(a, v) for a, v in ranked(m, observation, k=None) if action_key(a) in keys] for m in self.ensemble]
        kind = value_kind(policy)
        return assess(moving, kind, members, value_kind(self.ensemble[0]) if self.ensemble else kind)

    def admit(self, observation, moving: Sequence[tuple[Any, float]]) -> tuple[list, str]:
        """(allowed actions best first, why the policy's first choice was refused or ""): all of
        ``moving`` when conservative mode is off."""
        if self.conservative_k is None:
            return list(moving), ""
        k = self.conservative_k
        keys = {action_key(a) for a, _ in moving}
        theirs = [a for a, _ in ranked(self.reference, observation, k=None) if action_key(a) in keys][:k]
        agreed = {action_key(a) for a in theirs}
        allowed = [(a, v) for a, v in moving[:k] if action_key(a) in agreed]
        refused = ""
        if moving and action_key(moving[0][0]) not in agreed:
            refused = (f"not among the {k} actions the {getattr(self.reference, 'name', 'reference')} planner "
                       f"ranks first")
        return allowed, refused


def conservative_reference(env, k: int | None):
    """The rule-based planner on ``env`` for conservative mode (None when off); an InputError when the
    environment's actions are not discrete (continuous vectors cannot be ranked alike)."""
    if k is None:
        return None
    import gymnasium as gym

    from rtautoplan.policies.rule_based import RuleBased

    space = getattr(env, "action_space", None)
    if not isinstance(space, gym.spaces.Discrete):
        raise InputError("--conservative", f"the {type(env).__name__} planning environment's actions are not a "
                         "discrete set, so two planners' top-K lists cannot be compared",
                         "Leave --conservative out for this site/modality (it applies to prostate and the H&N "
                         "SARSA planner)")
    return RuleBased(env)
