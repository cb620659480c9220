"""What the closed loop adds for a clinician at every step (SPEC §5.2, §5.4): the ensemble's second
opinions, and conservative mode.

``Oversight(ensemble=…, reference=…, conservative_k=K)`` is handed to ``loop.run_loop``:

* ``assess``: the step's uncertainty (``rtautoplan.uncertainty.assess``) over the actions that move a
  planning parameter, with every ensemble member (another trained seed) asked the same observation
  (a recurrent member carries its own state through the episode, as the policy does);
* ``admit`` (conservative mode, ``conservative_k`` = K set): an action is allowed only when the policy
  and each of its reviewers rank it among their K best moving actions. The reviewers are the ensemble
  (the planner's other trained seeds: an action they would not also have proposed is one the training
  runs disagree on) or, for a planner without one, the reference planner (the rule-based one). The
  allowed actions are tried in the policy's order, so when its first choice is refused (logged with
  rule "conservative mode") its next-ranked agreed action is taken; the safety filter (bounds, coverage,
  level-1 organ limits) still checks each. With no agreed action the step passes with the plan
  unchanged (the step budget counts it); the planners, asked again, move on (the rule-based planner to
  its next handle, a recurrent policy's state advances).
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
        self._rankings: list[list] = []  # the ensemble's rankings of the current step (``assess``)
        if self.conservative_k is not None:
            if self.conservative_k < 1:
                raise InputError("--conservative", f"K = {self.conservative_k} allows no action", "Give K ≥ 1")
            if not self.ensemble and self.reference is None:
                raise InputError("--conservative", "no other trained seed and no reference planner to compare with",
                                 "Plan a site with a rule-based heuristic (prostate, hn)")

    def reset(self) -> None:
        for member in (*self.ensemble, self.reference):
            if member is not None:
                reset(member)

    def assess(self, policy, observation, moving: Sequence[tuple[Any, float]]) -> dict:
        """Uncertainty of this step; every ensemble member ranks ``observation`` once."""
        keys = {action_key(a) for a, _ in moving}
        self._rankings = [[(a, v) for a, v in ranked(m, observation, k=None) if action_key(a) in keys]
                          for m in self.ensemble]
        kind = value_kind(policy)
        return assess(moving, kind, self._rankings, value_kind(self.ensemble[0]) if self.ensemble else kind)

    def reviewers(self) -> str:
        """Who must agree in conservative mode, as the log names them."""
        if self.ensemble:
            return f"the planner's other trained seed{'s' if len(self.ensemble) > 1 else ''}"
        return f"the {getattr(self.reference, 'name', 'reference')} planner"

    def admit(self, observation, moving: Sequence[tuple[Any, float]]) -> tuple[list, str]:
        """(allowed actions best first, why the policy's first choice was refused or ""): all of
        ``moving`` when conservative mode is off. Call after ``assess`` of the same step (the
        ensemble's rankings are reused: a recurrent member is asked once per step)."""
        if self.conservative_k is None:
            return list(moving), ""
        k = self.conservative_k
        keys = {action_key(a) for a, _ in moving}
        if self.ensemble:
            lists = self._rankings
        else:
            lists = [[(a, v) for a, v in ranked(self.reference, observation, k=None) if action_key(a) in keys]]
        agreed = set.intersection(*({action_key(a) for a, _ in theirs[:k]} for theirs in lists))
        allowed = [(a, v) for a, v in moving[:k] if action_key(a) in agreed]
        refused = ""
        if moving and action_key(moving[0][0]) not in agreed:
            refused = f"not among the first {k} actions of both the planner and {self.reviewers()}"
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
