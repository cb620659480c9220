"""Suggest mode: the planner proposes, the clinician decides (SPEC §5.3; issue 19).

Python API::

    session = SuggestSession.open("export/pat1", PlanOptions(site="prostate"), k=3)
    for s in session.suggest():        # the top-k actions, each with its what-if
        print(s.rank, s.action, s.value, s.score_delta, s.dvh_delta)
    session.decide("accept", index=0)   # or ("edit", action="t_rec-"), or ("reject")
    planned = session.finish("plans/pat1")   # DICOM, report and plan_log.json, as ``rtautoplan plan``

Each suggestion's **what-if** is the plan re-optimised with that action (the safety filter applied,
the environment then restored): the active score's change, each structure's DVH difference (percent
volume at ``DVH_POINTS`` doses over 0–120 % of the highest Rx) and its Dmean / D2 / D98 change (Gy).
Every decision is a Step with ``override`` ("accepted", "edited: <suggested> → <chosen>", "rejected"):
an accepted or edited action still passes the safety filter (a rejected one is logged with its rule
and the plan stays as it was). μ(a|s) of a clinician's edit is not known: NaN. The plan that leaves
is chosen as in autonomous mode (``pipeline.conclude``) and stays UNAPPROVED.

The hook's suggest protocol (``answer``, ``docs/hook.schema.json``) keeps sessions in the hook
process by id.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtautoplan.dvh import d2, d98, dmean, dvh_points
from rtautoplan.errors import InputError
from rtautoplan.loop import LoopResult, _attempt, describe, is_better, reached_best, scaled_plan, _moves
from rtautoplan.plan import Step
from rtautoplan.policies.base import behaviour_probability, ranked, reset as reset_policy
from rtautoplan.safety import SafetyFilter

DVH_POINTS = 25
DECISIONS = ("accept", "edit", "reject")
PROTOCOL = "1.1"  # docs/hook.schema.json "version"


@dataclass(frozen=True)
class Suggestion:
    """One proposed action: rank (1 = the planner's first), action (name), action_id, value (probability,
    Q or priority), accepted by the safety filter (rule, reason), the what-if score and its change,
    per structure the DVH difference (% volume at ``dvh_dose_gy``) and metric changes (Gy), uncertainty."""

    rank: int
    action: str
    action_id: object
    value: float
    accepted: bool
    rule: str = ""
    reason: str = ""
    score: float | None = None
    score_delta: float | None = None
    dvh_dose_gy: tuple = ()
    dvh_delta: dict = field(default_factory=dict)
    metrics_delta: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        from rtautoplan.audit import jsonable

        return {"rank": self.rank, "action": self.action, "action_id": jsonable(self.action_id),
                "value": _num(self.value), "accepted": self.accepted, "rule": self.rule, "reason": self.reason,
                "score": _num(self.score), "score_delta": _num(self.score_delta),
                "dvh_dose_gy": [round(float(d), 3) for d in self.dvh_dose_gy],
                "dvh_delta": {k: [round(float(v), 3) for v in vs] for k, vs in self.dvh_delta.items()},
                "metrics_delta": {k: {m: round(float(v), 3) for m, v in ms.items()} for k, ms in self.metrics_delta.items()}}


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 5)


def _structures(case):
    from rtautoplan.case import Role

    return [s for s in case.by_role(Role.CTV, Role.PTV, Role.OAR) if s.mask.any()]


def _dvh(case, gy: np.ndarray, doses: np.ndarray) -> tuple[dict, dict]:
    rx = float(doses[-1]) / 1.2
    curves = {s.name: dvh_points(gy, s.mask, rx, doses.size) for s in _structures(case)}
    metrics = {s.name: {"Dmean": dmean(gy, s.mask), "D2%": d2(gy, s.mask), "D98%": d98(gy, s.mask)}
               for s in _structures(case)}
    return curves, metrics


class SuggestSession:
    """One case planned step by step with a clinician (module docstring). ``planning``:
    ``pipeline.prepare``'s result; ``k``: suggestions per step."""

    def __init__(self, planning, k: int = 3, seed: int = 0, case_dir: str | Path | None = None):
        if k < 1:
            raise InputError("k", f"{k} suggestions", "Ask for 1 or more")
        self.planning, self.k, self.case_dir = planning, int(k), case_dir
        self.id = secrets.token_hex(8)
        env = self.env = planning.env
        self.observation, _ = env.reset(seed=seed)
        self.safety = SafetyFilter(bounds=env.bounds, level1=planning.limits, coverage_guard=planning.coverage_guard)
        reset_policy(planning.planner)
        planning.oversight.reset()
        initial = (0, scaled_plan(env), env.last_dose, env.last_score)
        self.initial = self.best = initial
        self.passing = initial if planning.acceptable(env) else None
        self.steps: list[Step] = []
        self.t = 1
        rx = max(lv.dose_gy for lv in planning.planned.prescription.levels)
        self.doses = np.linspace(0.0, 1.2 * rx, DVH_POINTS)
        self._offer: tuple[Suggestion, ...] | None = None
        self._uncertainty: dict = {}

    @classmethod
    def open(cls, case_dir: str | Path, options=None, k: int = 3) -> "SuggestSession":
        """A session on the case folder ``case_dir`` with ``PlanOptions`` (site, policy, steps …)."""
        from rtautoplan.dicom.read import read_case
        from rtautoplan.folder import PlanOptions
        from rtautoplan.pipeline import choose_site, prepare, sequential_course, setup_for

        options = options or PlanOptions()
        case = read_case(case_dir, unknown_rois=options.unknown_rois)
        site, _ = choose_site(case, options.site)
        setup = setup_for(site, options.modality, options.policy)
        if sequential_course(case, setup):
            raise InputError(f"case {case.case_id}", "is a sequential course, which suggest mode does not plan",
                             "Plan it in autonomous mode (rtautoplan plan)")
        tps = options.tps() if options.tps is not None else None
        planning = prepare(case, site, options.modality, options.adapter, options.policy, options.max_steps,
                           options.seed, tps, None, options.conservative)
        return cls(planning, k, options.seed, case_dir)

    @property
    def done(self) -> bool:
        """No step left: the step budget is spent or the score is at its best."""
        return self.t > self.planning.steps or reached_best(self.env.last_score)

    def suggest(self) -> tuple[Suggestion, ...]:
        """The planner's top-k actions for the current plan with their what-ifs (asks the planner once
        per step: a recurrent planner advances)."""
        if self._offer is not None:
            return self._offer
        if self.done:
            return ()
        p, env = self.planning, self.env
        moving = [(a, v) for a, v in ranked(p.planner, self.observation, k=None) if _moves(env, a)]
        self._uncertainty = p.oversight.assess(p.planner, self.observation, moving) if moving else {}
        allowed, _ = p.oversight.admit(self.observation, moving)
        self._offer = tuple(self._what_if(i + 1, a, v) for i, (a, v) in enumerate(allowed[:self.k]))
        return self._offer

    def _what_if(self, rank: int, action, value) -> Suggestion:
        env = self.env
        before_curves, before_metrics = _dvh(env.case, env.last_dose.gy, self.doses)
        score_before, snapshot = env.last_score, env.snapshot()
        verdict, _, _, _, _ = _attempt(env, action, self.safety)
        common = dict(rank=rank, action=describe(env, action), action_id=action, value=float(value),
                      accepted=verdict.accepted, rule=verdict.rule, reason=verdict.reason)
        if not verdict.accepted:
            return Suggestion(**common)
        curves, metrics = _dvh(env.case, env.last_dose.gy, self.doses)
        score = float(env.last_score.total)
        env.restore(snapshot)
        return Suggestion(**common, score=score, score_delta=score - float(score_before.total),
                          dvh_dose_gy=tuple(self.doses), dvh_delta={k: curves[k] - before_curves[k] for k in curves},
                          metrics_delta={k: {m: metrics[k][m] - before_metrics[k][m] for m in metrics[k]}
                                         for k in metrics})

    def decide(self, decision: str, index: int = 0, action: str | None = None) -> Step:
        """Record the clinician's decision on the current suggestions: "accept" suggestion ``index``,
        "edit" (take ``action``, any action of the planner's environment, by name, instead), or
        "reject" (keep the plan); returns the Step logged."""
        if decision not in DECISIONS:
            raise InputError("decision", f"{decision!r} is not a decision", f"Use one of {', '.join(DECISIONS)}")
        offer = self.suggest()
        if not offer:
            raise InputError("decision", "there is nothing to decide: the session is done", "Finish the session")
        if not 0 <= index < len(offer):
            raise InputError("index", f"{index} is not a suggestion (0–{len(offer) - 1})", "Give a listed index")
        start, chosen = time.perf_counter(), offer[index]
        env, planner = self.env, self.planning.planner
        record = dict(alternatives=tuple((s.action, s.value) for s in offer), state=self.observation,
                      uncertainty=self._uncertainty)
        if decision == "reject":
            step = Step(self.t, chosen.action, False, float(env.last_score.total), 0.0, "rejected by the clinician",
                        parameters=dict(env.parameters), rule="clinician", action_id=chosen.action_id,
                        mu=behaviour_probability(planner, chosen.value), override="rejected", **record)
        else:
            taken, override, mu = chosen.action_id, "accepted", behaviour_probability(planner, chosen.value)
            if decision == "edit":
                taken, mu = self._action_named(action), math.nan
                override = f"edited: {chosen.action} → {describe(env, taken)}"
            verdict, observation, reward, _, report = _attempt(env, taken, self.safety)
            step = Step(self.t, describe(env, taken), verdict.accepted, float(env.last_score.total), reward,
                        verdict.reason, parameters=dict(env.parameters), time_s=time.perf_counter() - start,
                        rule=verdict.rule, action_id=taken, mu=mu, convergence=report, override=override, **record)
            if verdict.accepted:
                self.observation = observation
                self._keep()
        self.steps.append(step)
        self.t += 1
        self._offer = None
        return step

    def _action_named(self, name: str | None):
        space = getattr(self.env, "action_space", None)
        names = {describe(self.env, a): a for a in range(int(space.n))} if hasattr(space, "n") else {}
        if name not in names:
            raise InputError("action", f"{name!r} is not an action of this planner",
                             f"Use one of {', '.join(sorted(names)) or 'the suggestions (accept)'}")
        return names[name]

    def _keep(self) -> None:
        env = self.env
        current = (self.t, scaled_plan(env), env.last_dose, env.last_score)
        if is_better(env.last_score, self.best[3]):
            self.best = current
        if (self.passing is None or is_better(env.last_score, self.passing[3])) and self.planning.acceptable(env):
            self.passing = current

    def finish(self, out: str | Path | None = None):
        """(planned case, Result); with ``out``, the outputs written there (``outputs.write_outputs``)."""
        from rtautoplan.pipeline import conclude

        b, i = self.best, self.initial
        loop = LoopResult(tuple(self.steps), b[0], *b[1:], *i[1:], self.passing)
        result = conclude(self.planning, loop)
        if out is None:
            return self.planning.planned, result, {}
        from rtautoplan.audit import input_files
        from rtautoplan.folder import check_output, write_folder
        from rtautoplan.outputs import write_outputs

        out = Path(out)
        check_output(out)
        extra = {"site": self.planning.site, "mode": "suggest",
                 **({"inputs": input_files(self.case_dir)} if self.case_dir else {})}
        files = write_folder(out, lambda tmp: write_outputs(self.planning.planned, result, tmp, extra=extra),
                             {"acceptable": bool(result.acceptable)})
        return self.planning.planned, result, files


# The hook's suggest-mode sessions in this process: id → (session, output folder).
SESSIONS: dict[str, tuple[SuggestSession, str]] = {}
FOLLOW_UP_KEYS = ("session", "decision", "index", "action")


def offer(session: SuggestSession) -> dict:
    """The suggest response: the session, the step, the current score and the top-k suggestions."""
    suggestions = session.suggest()
    score = session.env.last_score
    return {"status": "suggest", "protocol": PROTOCOL, "session": session.id, "step": session.t,
            "done": session.done, "score": {"system": str(getattr(score, "system", "")), "current": _num(score.total)},
            "uncertainty": session._uncertainty if suggestions else {},
            "suggestions": [s.as_json() for s in suggestions]}


def answer(request: dict, defaults, parse) -> dict:
    """One suggest-mode request of the hook (``docs/hook.schema.json``): open a session
    (``{"mode": "suggest", "case": …, "output": …, "k": 3}``; ``parse`` checks it as the autonomous
    request), decide (``{"session": id, "decision": "accept" | "edit" | "reject", "index": i,
    "action": name}``) or finish (``{"session": id, "decision": "finish"}``: the outputs are written)."""
    if "session" not in request:
        case, output, options = parse(request)
        session = SuggestSession.open(case, options, request.get("k", 3))
        SESSIONS[session.id] = (session, output)
        return offer(session)
    unknown = sorted(set(request) - set(FOLLOW_UP_KEYS))
    if unknown:
        raise InputError("request", f"unknown key(s) {', '.join(map(repr, unknown))} in a session follow-up",
                         f"Use only: {', '.join(FOLLOW_UP_KEYS)}")
    sid = request["session"]
    if not isinstance(sid, str) or sid not in SESSIONS:
        raise InputError("request key 'session'", f"{sid!r} is not an open session of this hook",
                         'Open one with {"mode": "suggest", "case": …, "output": …}')
    decision, index, action = request.get("decision"), request.get("index", 0), request.get("action")
    if not isinstance(index, int) or isinstance(index, bool):
        raise InputError("request key 'index'", f"{index!r} is not an integer", "Give the suggestion's index (0 …)")
    if action is not None and not isinstance(action, str):
        raise InputError("request key 'action'", f"{action!r} is not an action name", "Give the action's name")
    session, output = SESSIONS[sid]
    if decision == "finish":
        from rtautoplan.hook import response

        _, result, files = session.finish(output)
        del SESSIONS[sid]
        return {**response(result, files), "session": sid,
                "overrides": [{"step": s.step, "action": s.action, "decision": s.override} for s in result.steps]}
    if decision == "edit" and action is None:
        raise InputError("request key 'action'", "is missing for an edit", "Give the action to take instead, by name")
    from rtautoplan.outputs import step_record

    step = session.decide(decision, index, action)
    last = {k: v for k, v in step_record(step).items() if k != "state"}
    return {**offer(session), "last": last}
