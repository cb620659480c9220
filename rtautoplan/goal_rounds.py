"""Goal-driven re-optimisation: what a planner does by hand when a finished plan misses a goal.

After the closed loop, a plan that fails the clinical gate (``rtautoplan.gate``) goes through at most
``ROUNDS`` rounds. Each round reads every missed must-goal and hot-spot rule on the final dose (as
delivered and normalised), and for the objectives that pursue it:

- raises their weight ×``WEIGHT_FACTOR``^s, where the miss's step s grows with how far it misses
  (``miss_step``: a miss of ``FULL_STEP_MISS`` of its bound or more takes the full step, a near miss
  at least ``MIN_STEP`` of it): a planner nudges a goal missed by 0.05 Gy, and a ×3 weight for it
  moves every other trade-off of the plan with it;
- moves their dose aim by the ratio bound / achieved (an upper bound missed at 12 Gy for 10 Gy
  aims 10/12 lower; a lower bound missed aims higher), at most ±``AIM_STEP``·s per round, and never
  an upper aim on a target (or the External) below 1.02 × its Rx: a target maximum under its own
  prescription fights its coverage, and normalisation then scales the plan hotter;
- from the second time an upper dose-volume objective is tightened, halves its volume as well
  (D10 % ≤ 10 Gy is then pursued as D5 % ≤ aim): pulling the DVH's shoulder down, not its tail;
  only at full strength: the gentler retries after a round not kept keep the volume.

Each objective moves once a round. A hot spot outside the targets is pursued by a maximum-dose
objective on the External (HOTSPOT_AIM × Rx_max, the global maximum a planner sets), a target's
D2 % by its fixed hot-spot objectives. A target whose maximum objectives are weighed up has its
coverage objectives weighed up by the same factor (balanced: a planner raising a target's maximum
alone gets a colder plan, which normalisation then scales hotter). The round then re-optimises from
the best plan so far (its weights, where the TPS takes a start: ``optimize(objectives, start=…)``;
else the adapter's previous solution) and takes the plan through the same final steps as the loop's
(sequencing, normalisation, the gate). A round's plan is kept only when it is nearer to acceptable
(``GateResult.violation``) than the best so far; a round that is not goes back to the best plan's
objectives and halves its step (weight factor and aim step). The rounds stop at the first acceptable plan. Nothing here
changes the prescription, the normalisation rule or a goal: only the objectives' weights and aims,
as a planner's would.

A goal without an objective in the plan (a trained planner's environment has its own objective
set) gets the one ``structures.objectives.goal_objectives`` makes for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from rtautoplan.case import Case, Role
from rtautoplan.gate import GateResult
from rtautoplan.goals import GoalResult
from rtautoplan.plan import Objective, ObjectiveKind, Step
from rtautoplan.structures.objectives import HOTSPOT_AIM, HOTSPOT_WEIGHT, LOWER_AIM, goal_objectives, hotspot_objectives

ROUNDS = 4
WEIGHT_FACTOR = 3.0
AIM_STEP = 0.25  # the largest relative move of a dose aim in one round
MIN_VOLUME = 0.005  # an upper dose-volume objective's volume is never halved below this fraction
FULL_STEP_MISS = 0.05  # a miss of this fraction of its bound (or more) takes a round's full step
MIN_STEP = 0.5  # the smallest step (fraction of the full one) of a near miss
_DOSE_VOLUME = (ObjectiveKind.DVH_MAX, ObjectiveKind.DV_MAX)


@dataclass(frozen=True)
class Miss:
    """One failure of the gate: the objectives (indices into the plan's objective list) that pursue
    it, its bound and achieved value (Gy), and which side it misses on ("upper" or "lower")."""

    label: str
    indices: tuple[int, ...]
    bound_gy: float
    achieved_gy: float
    side: str


def miss_step(miss: Miss) -> float:
    """The fraction of a round's full step that ``miss`` takes: its relative miss |achieved − bound| / bound
    over FULL_STEP_MISS, between MIN_STEP and 1."""
    relative = abs(miss.achieved_gy - miss.bound_gy) / max(abs(miss.bound_gy), 1e-6)
    return min(max(relative / FULL_STEP_MISS, MIN_STEP), 1.0)


def _aim(objective: Objective, miss: Miss, strength: float) -> float:
    ratio = miss.bound_gy / max(miss.achieved_gy, 1e-6)
    step = AIM_STEP * strength
    return objective.dose_gy * min(max(ratio, 1.0 - step), 1.0 + step)


def tighten(objective: Objective, miss: Miss, times: int, strength: float = 1.0, floor_gy: float = 0.0) -> Objective:
    """``objective`` after one round for ``miss``: weight × WEIGHT_FACTOR^strength, aim moved towards
    the bound by at most AIM_STEP × strength, an upper aim never pushed below ``floor_gy`` (a target's
    maximum below its Rx would fight its coverage; an aim already below stays); an upper dose-volume
    objective tightened before (``times`` ≥ 1) halves its volume, at full strength only (a gentler retry
    after a round that was not kept does not repeat the jump)."""
    volume = objective.volume
    if miss.side == "upper" and objective.kind in _DOSE_VOLUME and volume and times >= 1 and strength >= 1.0:
        volume = max(volume / 2.0, MIN_VOLUME)
    aim = _aim(objective, miss, strength)
    if miss.side == "upper":
        aim = max(aim, min(objective.dose_gy, floor_gy))
    return replace(objective, weight=objective.weight * WEIGHT_FACTOR ** strength, dose_gy=aim, volume=volume)


def floors(case: Case) -> dict[str, float]:
    """The lowest upper aim (Gy) per structure: LOWER_AIM × Rx on targets and their planning regions,
    × Rx_max on the External; none (0) elsewhere."""
    out = {s.name: LOWER_AIM * s.rx_gy for s in case.by_role(Role.CTV, Role.PTV, Role.GTV, Role.CONTROL)
           if s.rx_gy is not None}
    if case.by_role(Role.EXTERNAL):
        out[case.external.name] = LOWER_AIM * case.prescription.rx_max
    return out


def _indices(objectives: Sequence[Objective], wanted: Sequence[Objective]) -> tuple[int, ...]:
    return tuple(i for i, o in enumerate(objectives) if o in wanted)


def misses(case: Case, verdict: GateResult, objectives: list[Objective], goals_origin: dict) -> list[Miss]:
    """The gate's failures, each with the objectives that pursue it. ``goals_origin`` maps a goal to
    the indices of its objectives (found once, on the plan's first objective list, and extended
    here when a goal had none)."""
    out = []
    for r in verdict.goals:
        if r.met or r.goal.priority != 1 or r.goal.unit != "Gy":
            continue
        if r.goal not in goals_origin:
            made = goal_objectives(case, [r.goal])
            found = _indices(objectives, made)
            if not found and made:
                objectives.extend(made)
                found = tuple(range(len(objectives) - len(made), len(objectives)))
            goals_origin[r.goal] = found
        out += _goal_miss(r, goals_origin[r.goal])
    hot = hotspot_objectives(case)
    for h in verdict.hotspots:
        if h.met:
            continue
        if h.rule.startswith("max outside"):
            names = {case.external.name}
            hot = hot + (Objective(case.external.name, ObjectiveKind.DMAX, HOTSPOT_AIM * case.prescription.rx_max,
                                   HOTSPOT_WEIGHT, adjustable=False),)
        else:
            target = h.rule.split(" ")[0]
            names = {target, f"z{target}_Eval"}
        indices = tuple(i for i, o in enumerate(objectives) if o.structure in names and not o.adjustable
                        and o.kind in (ObjectiveKind.DMAX, *_DOSE_VOLUME))
        if not indices:
            made = [o for o in hot if o.structure in names]
            objectives.extend(made)
            indices = tuple(range(len(objectives) - len(made), len(objectives)))
        out.append(Miss(f"hot spot {h.rule}", indices, h.limit_gy, h.value_gy, "upper"))
    return out


def _goal_miss(r: GoalResult, indices: tuple[int, ...]) -> list[Miss]:
    g = r.goal
    if g.upper is not None and r.value > g.upper:
        return [Miss(str(g), indices, g.upper, r.value, "upper")]
    if g.lower is not None and r.value < g.lower:
        return [Miss(str(g), indices, g.lower, r.value, "lower")]
    return []


def _pursues(objective: Objective, side: str) -> bool:
    """An objective that pushes the dose down (upper) or up (lower)."""
    up = objective.kind in (ObjectiveKind.DMIN, ObjectiveKind.DVH_MIN, ObjectiveKind.UNIFORM)
    return up if side == "lower" else not up


def next_objectives(objectives: Sequence[Objective], found: Sequence[Miss], counts: dict[int, int],
                    strength: float = 1.0, floor: dict[str, float] | None = None
                    ) -> tuple[list[Objective], list[str]]:
    """(the objectives after one round for ``found``, one line per change): each objective moves once a
    round (for the first miss that names it), by ``strength`` × the miss's own step (``miss_step``);
    ``counts``: how often each was tightened before (updated);
    ``floor``: the lowest upper aim per structure (``floors``)."""
    out, changes, moved = list(objectives), [], set()
    for miss in found:
        for i in miss.indices:
            o = out[i]
            if i in moved or not _pursues(o, miss.side):
                continue
            out[i] = tighten(o, miss, counts.get(i, 0), strength * miss_step(miss), (floor or {}).get(o.structure, 0.0))
            counts[i] = counts.get(i, 0) + 1
            moved.add(i)
            changes.append(f"{o.structure} {o.kind.value} {o.dose_gy:.2f}→{out[i].dose_gy:.2f} Gy "
                           f"w {o.weight:g}→{out[i].weight:g}" + (f" V {o.volume:g}→{out[i].volume:g}"
                                                                 if out[i].volume != o.volume else ""))
    return _balanced(out, objectives, moved, changes, floor or {})


def _balanced(out: list[Objective], before: Sequence[Objective], moved: set[int], changes: list[str],
              floor: dict[str, float]) -> tuple[list[Objective], list[str]]:
    """A target whose maximum objectives were weighed up gets its coverage objectives (those pushing
    the dose up, not moved this round) weighed up by the same factor, aims unchanged: a hotter
    target's maximum raised alone lets the optimiser trade coverage, and normalisation then scales
    the colder plan hotter. ``floor`` names the targets (``floors``)."""
    raised: dict[str, float] = {}
    for i in moved:
        o = before[i]
        if o.structure in floor and not _pursues(o, "lower") and out[i].weight > o.weight:
            raised[o.structure] = max(raised.get(o.structure, 1.0), out[i].weight / o.weight)
    for i, o in enumerate(out):
        if i not in moved and o.structure in raised and _pursues(o, "lower"):
            out[i] = replace(o, weight=o.weight * raised[o.structure])
            changes.append(f"{o.structure} {o.kind.value} w {o.weight:g}→{out[i].weight:g} (balanced)")
    return out, changes


def _optimize(tps, objectives: tuple[Objective, ...], best_plan) -> None:
    """Re-optimise from the best plan so far (its weights) where the TPS takes a start
    (``optimize(objectives, start=…)``: the in-house engines), else from the TPS's last solution."""
    import inspect

    if "start" in inspect.signature(tps.optimize).parameters:
        tps.optimize(objectives, start=best_plan.weights)
    else:
        tps.optimize(objectives)


def refine(case: Case, tps, start, verdict: GateResult, finish: Callable, check: Callable[..., GateResult],
           rounds: int = ROUNDS, first_step: int = 1, on_step: Callable[[Step], None] | None = None):
    """Re-optimise a plan that fails the gate (module docstring).

    start: the chosen final candidate (step, plan, score, sequenced, normalised), its ``plan`` holding
    the objectives it was optimised with; verdict: its gate result; finish(plan) → (plan, score,
    sequenced, normalised), the pipeline's ``final_plan``; check(dose_gy) → GateResult.
    Returns (candidate, verdict, steps) of the best plan found (``start`` when no round improves)."""
    best, best_verdict = start, verdict
    objectives = list(start[1].objectives)
    origin: dict = {}
    counts: dict[int, int] = {}
    kept_state = (list(objectives), dict(counts), dict(origin))
    floor, strength = floors(case), 1.0
    steps: list[Step] = []
    current = verdict
    for n in range(rounds):
        if best_verdict.acceptable:
            break
        t0 = time.perf_counter()
        found = misses(case, current, objectives, origin)
        objectives, changes = next_objectives(objectives, found, counts, strength, floor)
        if not changes:
            break
        try:
            _optimize(tps, tuple(objectives), best[1])
        except ValueError as refused:  # an adapter without an objective kind the rounds need (PHOENIX: no DVHmax)
            steps.append(Step(first_step + n, f"goal round {n + 1}: not run", False, float(best[2].total), 0.0,
                              f"the TPS refused the round's objectives ({refused}); the rounds stop"))
            if on_step is not None:
                on_step(steps[-1])
            break
        plan, score, sequenced, normalised = finish(tps.plan())
        current = check(plan.dose.gy)
        kept = current.violation < best_verdict.violation - 1e-9
        reason = "" if kept else f"not nearer to the gate (violation {current.violation:.3f} ≥ " \
                                 f"{best_verdict.violation:.3f}): not kept"
        if kept:
            best, best_verdict = (first_step + n, plan, score, sequenced, normalised), current
            kept_state = (list(objectives), dict(counts), dict(origin))
        else:  # back to the best plan's objectives and its misses, a gentler step
            objectives, counts, origin = list(kept_state[0]), dict(kept_state[1]), dict(kept_state[2])
            current, strength = best_verdict, strength / 2.0
        missed = ", ".join(f"{m.label} at {m.achieved_gy:.2f}" for m in found)
        steps.append(Step(first_step + n, f"goal round {n + 1} (missed: {missed}): " + "; ".join(changes[:6])
                          + (f"; … {len(changes) - 6} more" if len(changes) > 6 else ""), kept,
                          float(score.total), 0.0, reason, (), {}, time.perf_counter() - t0))
        if on_step is not None:
            on_step(steps[-1])
    return best, best_verdict, tuple(steps)

