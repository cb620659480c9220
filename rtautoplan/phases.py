"""A sequential course (seed 004, SPEC §4.1 and §4.7): each phase of the prescription planned on
its own, and the course dose (Gy) the sum of the phases' delivered doses.

``plan_phases(case, ...) -> (course case, Result)``:

* **Phase view** (``phase_view``): the case as one phase plans it. Per dose of the phase, one
  auxiliary planning target ``zCTV_<Phase>_<cGy>`` (Role CTV) is the union of that dose's targets
  as drawn, prescribed that dose in the phase's fractions; ``apply_rules`` adds its PTV, Gap and
  Ring. The input CTVs and PTVs stay in the view as structures never planned on (Role OTHER), every
  other input ROI as read: nothing of the input is renamed, merged, re-prescribed or dropped.
* **Planner of a phase** (``planner_of``): seed 004's SARSA, in its environment as prescribed, for
  a phase whose levels are all 44 Gy (the primary its weights were trained on); any other phase
  (the 26 Gy boost) by the site's own setup (seed 002's objectives, rule-based planner), because
  the SARSA state, bounds and template are those of the 44 Gy primary (docs/decisions.md).
* **Normalisation** (``normalised``): each phase's delivered plan is scaled so that its PTV D95%
  is the phase's dose (SPEC §4.7 step 3; ``"normalisation": "none"`` in prescription.json leaves
  the plans as optimised).
* **Course**: the input case (prescription and ROIs as read) plus every phase's auxiliary
  structures; the Result's plan carries the course dose, its ``phases`` the phase Results, its
  score ``course_score`` (coverage of every phase target at its summed dose, the §4.1 OAR checks).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from typing import Callable

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, DoseLevel, Phase, Prescription, Role, Structure
from rtautoplan.errors import InputError
from rtautoplan.plan import Dose, Plan, Result, Step
from rtautoplan.policies.env_base import resolve_scoring, resolve_tps
from rtautoplan.policies.env_hn_imrt import FRACTIONS as PRIMARY_FRACTIONS, RX_GY as PRIMARY_GY
from rtautoplan.scoring.relative_loss import Goal, score as relative_loss
from rtautoplan.structures.names import planning_name, target_name

log = logging.getLogger(__name__)

DOSE_TOL_GY = 0.005  # doses are stated to 0.01 Gy (target names carry cGy)
# SPEC §4.1 clinical checks of a 70 Gy course: both parotid means < 25 Gy, oral cavity mean < 41.8 Gy.
COURSE_OAR_GOALS_GY = {"Parotid_L": 25.0, "Parotid_R": 25.0, "Cavity_Oral": 41.8}
_SOURCE = 'prescription.json "phases"'


def example_phases(rx: Prescription) -> str:
    """The ``"phases"`` of seed 004's scheme for ``rx``, as prescription.json text: every level 44 Gy
    in 22 fractions, then the highest level boosted to its dose in 2 Gy fractions."""
    phases = [{"name": "primary", "fractions": PRIMARY_FRACTIONS,
               "levels": [{"target": lv.target, "dose_gy": PRIMARY_GY} for lv in rx.levels]}]
    boost = rx.rx_max - PRIMARY_GY
    if boost > DOSE_TOL_GY:
        phases.append({"name": "boost", "fractions": max(1, round(boost / 2.0)),
                       "levels": [{"target": rx.levels[0].target, "dose_gy": round(boost, 2)}]})
    return '"phases": ' + json.dumps(phases)


def auxiliary_name(phase: Phase, dose_gy: float) -> str:
    """The planning target of ``phase`` at ``dose_gy`` (Gy): ``zCTV_Primary_4400`` (TG-263 ``z``: not anatomy)."""
    label = re.sub(r"[^0-9A-Za-z]", "", phase.name.title()) or "Phase"
    return f"zCTV_{label}_{round(dose_gy * 100):d}"


def phase_doses(phase: Phase) -> tuple[float, ...]:
    """The distinct doses (Gy) of a phase's levels, highest first."""
    doses: list[float] = []
    for level in sorted(phase.levels, key=lambda lv: -lv.dose_gy):
        if all(abs(level.dose_gy - d) > DOSE_TOL_GY for d in doses):
            doses.append(level.dose_gy)
    return tuple(doses)


def generated_names(phase: Phase) -> tuple[str, ...]:
    """Every structure a phase adds to the course: its planning targets and their PTV, Gap and Ring."""
    return tuple(name for d in phase_doses(phase) for name in (
        auxiliary_name(phase, d), target_name(Role.PTV, d), planning_name(Role.GAP, d), planning_name(Role.RING, d)))


def phase_target(case: Case, name: str) -> Structure:
    """The target ROI a phase level names (its TG-263 name or its input ROIName)."""
    for s in case.structures:
        if s.role.is_target and name in (s.name, s.roi_name):
            return s
    targets = ", ".join(s.roi_name or s.name for s in case.structures if s.role.is_target) or "none"
    raise InputError(_SOURCE, f"target {name!r} is not a target ROI of the RTSTRUCT (targets: {targets})",
                     "Name each phase level's target by its ROIName as exported")


def check_course(case: Case) -> None:
    """InputError unless the phases have distinct names, each phase's structures are new to the
    case (an input ROI named like one is a previous run's output) and no two phases generate one."""
    phases = case.prescription.phases
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise InputError(_SOURCE, f"phase names repeat ({', '.join(names)})", "Give every phase its own name")
    seen: dict[str, str] = {s.name: "the RTSTRUCT" for s in case.structures}
    seen.update({s.roi_name: "the RTSTRUCT" for s in case.structures if s.roi_name})
    for phase in phases:
        for level in phase.levels:
            phase_target(case, level.target)
        for name in generated_names(phase):
            if name in seen:
                raise InputError(_SOURCE, f"phase {phase.name!r} generates {name}, which {seen[name]} already has",
                                 "Plan from the original RTSTRUCT (not a previous output), give the phases "
                                 "different doses, or list the ROI under \"ignore\"")
            seen[name] = f"phase {phase.name!r}"


def phase_view(case: Case, phase: Phase) -> Case:
    """``case`` as ``phase`` plans it (module docstring): one auxiliary CTV per dose, the input
    targets kept and never planned on, the phase's levels and fractions as the prescription."""
    kept = tuple(replace(s, role=Role.OTHER, level=None, rx_gy=None) if s.role in (Role.CTV, Role.PTV) else s
                 for s in case.structures)
    aux, levels = [], []
    for dose in phase_doses(phase):
        targets = [phase_target(case, lv.target) for lv in phase.levels if abs(lv.dose_gy - dose) <= DOSE_TOL_GY]
        name = auxiliary_name(phase, dose)
        aux.append(Structure(name, np.logical_or.reduce([t.mask.to_full() for t in targets]), Role.CTV, level=2,
                             rx_gy=float(dose), color=targets[0].color))
        levels.append(DoseLevel(name, float(dose)))
    prescription = Prescription(tuple(levels), phase.fractions, site=case.prescription.site)
    return replace(case, structures=kept + tuple(aux), prescription=prescription)


def planner_of(phase: Phase, policy: str) -> str | None:
    """``policy`` (seed 004's SARSA) for a 44 Gy phase; None (the site's own setup) for any other."""
    fits = all(abs(lv.dose_gy - PRIMARY_GY) <= DOSE_TOL_GY for lv in phase.levels)
    return policy if fits else None


def course_levels(case: Case) -> tuple[DoseLevel, ...]:
    """Per target structure, the dose (Gy) the phases sum to, highest first."""
    total: dict[str, float] = {}
    for phase in case.prescription.phases:
        for level in phase.levels:
            name = phase_target(case, level.target).name
            total[name] = total.get(name, 0.0) + level.dose_gy
    return tuple(sorted((DoseLevel(t, d) for t, d in total.items()), key=lambda lv: -lv.dose_gy))


def course_score(dose_gy: np.ndarray, case: Case):
    """seed 004's relative loss (SPEC §4.3 form) of a course dose: D95% of every phase target (as
    drawn) ≥ its summed phase dose, and the §4.1 mean-dose checks of the parotids and oral cavity."""
    goals = [Goal(lv.target, "D95%", lv.dose_gy, upper=False) for lv in course_levels(case)]
    goals += [Goal(name, "Dmean", gy) for name, gy in COURSE_OAR_GOALS_GY.items()]
    return relative_loss(dose_gy, case, goals=goals)


def _scaled(dose: Dose, factor: float) -> Dose:
    return dose.scaled(factor)


def normalised(result: Result, planned: Case) -> Result:
    """The phase plan scaled so that D95% of its highest-dose PTV equals that dose (SPEC §4.7 step 3,
    the default ``Normalisation``): dose, weights and leaf-sequenced fluence (MU) by one factor, the
    initial plan by its own, both re-scored on the phase's planning case. The loop's steps keep the
    scores of the unscaled plans it compared."""
    level = planned.prescription.levels[0]
    voxels = planned.structure(target_name(Role.PTV, level.dose_gy)).mask.indices

    def factor(dose: Dose) -> float:
        d95 = dvh.d_percent(dose.gy, voxels, 95.0)
        if d95 <= 0:
            raise ValueError(f"case {planned.case_id!r}: no dose in {target_name(Role.PTV, level.dose_gy)}")
        return level.dose_gy / d95

    f = factor(result.plan.dose)
    plan = replace(result.plan, weights=tuple(np.asarray(w) * f for w in result.plan.weights),
                   dose=_scaled(result.plan.dose, f))
    delivery = tuple(replace(b, segment_fluence=b.segment_fluence * f, delivered=b.delivered * f)
                     for b in result.delivery)
    initial = result.initial_dose or result.plan.dose
    initial = _scaled(initial, factor(initial))
    score = resolve_scoring(result.score.system)[0]
    return replace(result, plan=plan, delivery=delivery, initial_dose=initial, score=score(plan.dose.gy, planned),
                   initial_score=score(initial.gy, planned))


def _in_course(step: Step, phase: Phase, offset: int) -> Step:
    """A phase's step as the course shows it: numbered after the earlier phases', named by its phase."""
    return replace(step, step=step.step + offset, action=f"{phase.name}: {step.action}")


def _phase_step(phase: Phase, offset: int, on_step: Callable[[Step], None] | None) -> Callable[[Step], None]:
    def report(step: Step) -> None:
        if on_step is not None:
            on_step(_in_course(step, phase, offset))

    return report


def _course_plan(case: Case, phases: tuple[Phase, ...], results: list[Result], dose: Dose) -> Plan:
    """The phases' beams (named ``<phase> <beam>``), objectives and weights, with the course dose."""
    plans = [r.plan for r in results]
    beams = tuple(replace(b, name=f"{p.name} {b.name}") for p, plan in zip(phases, plans) for b in plan.beams)
    return Plan(case.case_id, plans[0].modality, beams, tuple(o for plan in plans for o in plan.objectives),
                tuple(w for plan in plans for w in plan.weights), dose, plans[0].adapter,
                tuple(x for plan in plans for x in plan.positions), plans[0].beamlet_mm)


def _sum(doses: list[Dose]) -> Dose:
    """The sum, on the first dose's grid; the native doses summed too when they share one grid."""
    natives = [d.native for d in doses]
    same = all(n is not None and n.grid == natives[0].grid for n in natives)
    return Dose(doses[0].grid, np.sum([d.gy for d in doses], axis=0, dtype=np.float64).astype(np.float32),
                doses[0].kind, _sum(natives) if same else None)


def plan_phases(case: Case, site: str = "hn", modality: str = "photon", adapter: str | None = None,
                policy: str = "sarsa", max_steps: int | None = None, seed: int = 0, tps=None,
                on_step: Callable[[Step], None] | None = None) -> tuple[Case, Result]:
    """Plan every phase of ``case.prescription.phases`` in turn (module docstring); returns the
    course case and the course Result. tps: an adapter (prepared anew for each phase), a
    zero-argument factory (one adapter per phase) or None (the setups' own). max_steps: per phase."""
    from rtautoplan.pipeline import plan_case

    phases = case.prescription.phases
    check_course(case)
    planners = [planner_of(p, policy) for p in phases]
    if policy not in planners:
        raise InputError(_SOURCE, f"no phase is seed 004's {PRIMARY_GY:g} Gy primary, the phase {policy} plans "
                         f"({', '.join(f'{p.name}: {sorted(phase_doses(p))} Gy' for p in phases)})",
                         f"State the primary phase at {PRIMARY_GY:g} Gy, or choose another planner")
    course = course_levels(case)
    drawn = {lv.target: lv.dose_gy for lv in case.prescription.levels}
    for level in course:
        if level.target in drawn and abs(drawn[level.target] - level.dose_gy) > DOSE_TOL_GY:
            log.warning("case %s: the phases give %s %.4g Gy, its prescription level %.4g Gy", case.case_id,
                        level.target, level.dose_gy, drawn[level.target])
    results, aux, offset = [], [], 0
    for phase, planner in zip(phases, planners):
        options = {"as_prescribed": True} if planner is not None else None
        planned, result = plan_case(phase_view(case, phase), site, modality, adapter, planner, max_steps, seed,
                                    None if tps is None else resolve_tps(tps), _phase_step(phase, offset, on_step),
                                    options)
        if case.prescription.normalisation.metric != "none":
            result = normalised(result, planned)
        steps = tuple(_in_course(s, phase, offset) for s in result.steps)
        offset = max((s.step for s in steps), default=offset)
        results.append(replace(result, steps=steps))
        aux += [s for s in planned.structures if s.name in generated_names(phase)]
    course_case = case.with_structures(case.structures + tuple(aux))
    dose, initial = _sum([r.plan.dose for r in results]), _sum([r.initial_dose or r.plan.dose for r in results])
    result = Result(_course_plan(case, phases, results, dose), course_score(initial.gy, course_case),
                    course_score(dose.gy, course_case), tuple(s for r in results for s in r.steps),
                    " + ".join(f"{p.name} {r.policy}" for p, r in zip(phases, results)), 0, initial,
                    tuple(b for r in results for b in r.delivery), tuple(results))
    return course_case, result


def phase_records(case: Case, result: Result) -> dict:
    """What ``plan_log.json`` says of a course: each phase (name, fractions, levels, planner, its
    score and steps) and the dose (Gy) each target receives over the course against its level."""
    drawn = {lv.target: lv.dose_gy for lv in case.prescription.levels}
    phases = [{"name": p.name, "fractions": p.fractions,
               "levels": [{"target": lv.target, "dose_gy": lv.dose_gy} for lv in p.levels],
               "planner": r.policy, "scoring": r.score.system, "initial score": round(float(r.initial_score.total), 4),
               "final score": round(float(r.score.total), 4), "best step": r.best_step, "steps": r.n_steps}
              for p, r in zip(case.prescription.phases, result.phases)]
    course = [{"target": lv.target, "dose_gy": lv.dose_gy, "prescription_level_gy": drawn.get(lv.target)}
              for lv in course_levels(case)]
    return {"phases": phases, "course": course}
