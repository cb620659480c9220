"""The closed loop over one planning environment: policy → safety filter → TPS → score, step by step.

``run_loop(env, policy, max_steps)`` is what ``pipeline.plan_case`` and ``evaluate`` share. It works on the single-agent gymnasium environments and on the PettingZoo
multi-agent one (observations, actions and rewards are then dicts per agent; the team reward is
the same for every agent, SPEC §3.4).

Each step:
1. the policy ranks its actions and proposes the first that changes a planning parameter: an
   action whose parameters stay as they are (a Table-1 move of a TPP already at its clamp) would
   re-run the TPS on the same plan, so it is passed over for the next-ranked one (``env.moves``; the
   top 3 of the rest are kept for the report, SPEC §5.3);
2. the safety filter checks the parameters the action would change (``env.preview``) against the
   environment's bounds table (``env.bounds``) — a rejected action is logged, the TPS is not called
   and the policy's next-ranked alternative is tried;
3. the environment re-optimises; the filter checks the new plan's target coverage against the
   hard floor unless the score improved — a rejected plan is rolled back (``env.restore``);
4. the best plan by the active score is kept (the initial plan counts), so the result is never
   worse than where the loop started.

With an ``Oversight`` (``rtautoplan.oversight``) each step also carries its uncertainty (an
ensemble's disagreement among it) and, in conservative mode, only actions its reviewers (the other
trained seeds, else the rule-based planner) rank in their top K too are tried. Every Step records what the audit and off-policy evaluation need:
the observation, the action as taken, μ(a|s), the optimiser's convergence report and the rule of a
rejection (``Step``).

A policy with ``greedy = True`` (the rule-based planner) works as a dosimetrist does: a step that
does not improve the score is undone (rolled back, logged "no improvement: undone") and the
policy, seeing the unchanged plan, proposes something else at the next step. Learned policies are
not greedy: their value estimates may pass through a worse plan to a better one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from rtautoplan.oversight import Oversight
from rtautoplan.plan import Dose, Plan, Step
from rtautoplan.policies.base import Policy, behaviour_probability, ranked, reset as reset_policy
from rtautoplan.safety import CONSERVATIVE, COVERAGE_FLOOR, GATE, UNDO, SafetyFilter, Verdict


@dataclass(frozen=True, eq=False)
class LoopResult:
    """best_plan: the TPS plan at the best step (weights already scaled by the env's dose_scale);
    best_dose/best_score: its dose and score; initial_*: the plan before the first step."""

    steps: tuple[Step, ...]
    best_step: int
    best_plan: Plan
    best_dose: Dose
    best_score: Any
    initial_plan: Plan
    initial_dose: Dose
    initial_score: Any
    best_acceptable: tuple | None = None  # (step, plan, dose, score) of the best plan ``acceptable`` passed


def is_better(after, before) -> bool:
    """``after`` beats ``before`` by the active score (a loss when ``higher_is_better`` is False)."""
    if before is None:
        return True
    sign = 1.0 if getattr(after, "higher_is_better", True) else -1.0
    return sign * (float(after.total) - float(before.total)) > 1e-9


def reached_best(score) -> bool:
    """The score is at its system's best (ψ = 9, L = 0 …): nothing is left to improve."""
    if score.maximum is None:
        return False
    if getattr(score, "higher_is_better", True):
        return float(score.total) >= float(score.maximum) - 1e-9
    return float(score.total) <= float(score.maximum) + 1e-9


def _team(value) -> float:
    return float(np.mean(list(value.values()))) if isinstance(value, dict) else float(value)


def _done(terminated, truncated) -> bool:
    if isinstance(terminated, dict):
        return bool(terminated) and all(terminated.values()) or bool(truncated) and all(truncated.values())
    return bool(terminated or truncated)


def _moves(env, action) -> bool:
    fn = getattr(env, "moves", None)
    return True if fn is None else bool(fn(action))


def describe(env, action) -> str:
    """A human-readable action (``env.describe_action``, every environment's ``LoopHooks``)."""
    fn = getattr(env, "describe_action", None)
    return str(fn(action)) if fn is not None else str(action)


def scaled_plan(env) -> Plan:
    """The TPS plan with its weights scaled like the dose (D95 normalisation), so plan and dose agree."""
    plan, scale = env.tps.plan(), float(getattr(env, "dose_scale", 1.0))
    if scale != 1.0:
        plan = replace(plan, weights=tuple(np.asarray(w) * scale for w in plan.weights), dose=env.last_dose)
    return plan


UNDONE = "no improvement: undone (greedy planner)"


BREAKS_GATE = "rejected: the plan passed the clinical gate and this step fails it"


def convergence(tps) -> dict:
    """The optimiser's report of the TPS's last optimisation (``TPS.convergence``, {} when it gives none)."""
    report = getattr(tps, "convergence", None)
    return dict(report) if isinstance(report, dict) else {}


def _attempt(env, action, safety: SafetyFilter, greedy: bool = False, keep_passing=None):
    """Try one action: (verdict, observation or None, reward, done, convergence). A rejected plan is
    rolled back; for a greedy planner so is a plan that does not improve the score; with
    ``keep_passing`` (the clinical gate, when the current plan passes it) so is a plan that fails it."""
    verdict = safety.check_parameters(env.preview(action), env.parameters)
    if not verdict.accepted:
        return verdict, None, 0.0, False, {}
    score_before, dose_before = env.last_score, env.last_dose
    snapshot = env.snapshot()
    observation, reward, terminated, truncated, _ = env.step(action)
    report = convergence(env.tps) if hasattr(env, "tps") else {}
    improved = is_better(env.last_score, score_before)
    verdict = safety.check_plan(env.case, dose_before.gy, env.last_dose.gy, improved)
    if verdict.accepted and safety.level1:
        verdict = safety.check_level1(env.case, getattr(env, "objectives", ()), dose_before.gy, env.last_dose.gy)
    if verdict.accepted and greedy and not improved:
        verdict = Verdict(False, UNDONE, UNDO)
    if verdict.accepted and keep_passing is not None and not keep_passing(env):
        verdict = Verdict(False, BREAKS_GATE, GATE)
    if not verdict.accepted:
        env.restore(snapshot)
        return verdict, None, 0.0, False, report
    return verdict, observation, _team(reward), _done(terminated, truncated), report


def run_loop(env, policy: Policy, max_steps: int, seed: int = 0, options: dict | None = None,
             on_step: Callable[[Step], None] | None = None, coverage_floor: float = COVERAGE_FLOOR,
             acceptable: Callable[[Any], bool] | None = None, level1: tuple = (),
             oversight: Oversight | None = None, coverage_guard: float | None = None) -> LoopResult:
    """Run ``policy`` on ``env`` for at most ``max_steps`` steps (module docstring). The safety
    filter takes the environment's bounds table (``env.bounds``) and ``coverage_floor`` (fraction
    of Rx for CTV D98). When it rejects the policy's first choice, the next-ranked alternatives are
    tried; when all are rejected by the filter the loop stops: there is nothing safe left to do (a
    greedy planner whose ideas were merely undone goes on to its next ones). ``acceptable(env)``, if
    given (the clinical gate on the plan as it would leave), is asked of every accepted plan: the
    best plan it passes is kept too,
    since the best-scoring plan by the environment's score may fail a goal the score does not see; and
    while the current plan is the best one that passes, a step that fails the gate is rejected (rolled
    back, logged), as the safety filter rejects a step that drops coverage. ``level1``: the hard
    limits of the level-1 organs (``safety.level1_limits``); ``oversight``: uncertainty and
    conservative mode (module docstring); ``coverage_guard``: fraction of Rx below which no step may take a
    CTV's D99, nor lower it when already below, whatever the score (``SafetyFilter``; None: off)."""
    observation, _ = env.reset(seed=seed, options=options)
    safety = SafetyFilter(bounds=env.bounds, coverage_floor=coverage_floor, level1=tuple(level1),
                          coverage_guard=coverage_guard)
    reset_policy(policy)
    oversight = oversight or Oversight()
    oversight.reset()
    best = initial = (0, scaled_plan(env), env.last_dose, env.last_score)
    passing = initial if acceptable is not None and acceptable(env) else None
    current = 0  # the step whose plan the environment holds
    steps: list[Step] = []
    for t in range(1, max_steps + 1):
        if reached_best(env.last_score):
            break
        start = time.perf_counter()
        moving = [(a, v) for a, v in ranked(policy, observation, k=None) if _moves(env, a)]
        if not moving:  # the policy's only proposal changes nothing (a random draw): ask again
            continue
        uncertainty = oversight.assess(policy, observation, moving)
        allowed, refused = oversight.admit(observation, moving)
        alternatives = allowed[:3]
        labelled = tuple((describe(env, a), float(v)) for a, v in moving[:3])
        record = dict(alternatives=labelled, state=observation, uncertainty=uncertainty,
                      available=tuple(a for a, _ in moving if isinstance(a, (int, np.integer))))
        if refused:
            a, v = moving[0]
            steps.append(Step(t, describe(env, a), False, float(env.last_score.total), 0.0, refused,
                              parameters=dict(env.parameters), time_s=time.perf_counter() - start, rule=CONSERVATIVE,
                              action_id=a, mu=behaviour_probability(policy, v), **record))
            if on_step is not None:
                on_step(steps[-1])
        done = accepted = False
        greedy, undone = bool(getattr(policy, "greedy", False)), 0
        keep = acceptable if passing is not None and passing[0] == current else None
        for action, value in alternatives:
            verdict, next_observation, reward, done, report = _attempt(env, action, safety, greedy, keep)
            undone += verdict.rule in (UNDO, GATE)
            steps.append(Step(t, describe(env, action), verdict.accepted, float(env.last_score.total), reward,
                              verdict.reason, parameters=dict(env.parameters), time_s=time.perf_counter() - start,
                              rule=verdict.rule, action_id=action, mu=behaviour_probability(policy, value),
                              convergence=report, **record))
            if on_step is not None:
                on_step(steps[-1])
            if verdict.accepted:
                observation, accepted = next_observation, True
                break
        if accepted and is_better(env.last_score, best[3]):
            best = (t, scaled_plan(env), env.last_dose, env.last_score)
        if accepted:
            current = t
            if acceptable is not None and (passing is None or is_better(env.last_score, passing[3])) \
                    and (keep is not None or acceptable(env)):
                passing = (t, scaled_plan(env), env.last_dose, env.last_score)
        if not alternatives:  # conservative mode refused all: the plan stays, the planners move on
            continue
        if done or not (accepted or undone == len(alternatives)):
            break
    return LoopResult(tuple(steps), best[0], *best[1:], *initial[1:], passing)
