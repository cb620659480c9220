"""The product in one function: a case goes in, a tuned, deliverable plan comes out.

``plan_case(case, site, modality)``::

    case ─ env (TPS adapter + planning parameters ↔ objectives + score; apply_rules inside)
         ─ run_loop(env, policy, safety filter)        the closed loop, best plan kept
         ─ photons: leaf sequencing → delivered fluence → dose recomputed and re-scored
         → (planned case, Result)

``write_outputs(case, result, out)`` then writes the DICOM objects, the report and the step log.
Which environment, adapter and default policy serve a (site, modality) is the ``SETUPS`` table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from rtautoplan import gate, protocols
from rtautoplan.adapters import ADAPTERS
from rtautoplan.case import Case
from rtautoplan.normalisation import normalise
from rtautoplan.errors import InputError
from rtautoplan.loop import is_better, run_loop, scaled_plan
from rtautoplan.oversight import Oversight, conservative_reference
from rtautoplan.safety import level1_limits
from rtautoplan.plan import Modality, Result, Step
from rtautoplan.policies import POLICIES
from rtautoplan.policies.env import ENVS
from rtautoplan.policies.env_prostate import ENGINE as PROSTATE_ENGINE
from rtautoplan.policies.env_proton import PPO_ENGINE
from rtautoplan.policies.sarsa import SARSA_ENGINE


@dataclass(frozen=True)
class Setup:
    """env: ``ENVS`` key; adapter: ``ADAPTERS`` key and its options; policy: ``POLICIES`` key;
    max_steps: closed-loop steps; env_options: passed to the environment; coverage_guard: the loop's CTV
    D99 guard (fraction of Rx, ``SafetyFilter``; None: off)."""

    env: str
    adapter: str
    policy: str
    max_steps: int
    adapter_options: dict = field(default_factory=dict)
    env_options: dict = field(default_factory=dict)
    coverage_guard: float | None = None


# (site, modality) → how it is planned. H&N photon and proton plans share seed 002's multi-level
# objectives and dose-distribution score; seed 004's single-level 44 Gy environment (``hn_imrt``)
# is for its SARSA planner (``--policy sarsa``), not for planning a multi-level case.
# Prostate plans run on seed 000's engine (``env_prostate.ENGINE``), the one its ACER planner was trained on,
# and the trained planners keep the block dose grid they learned on (TRAINED_GRID; the others: 3 mm, issue 13).
TRAINED_GRID = {"dose_grid_factor": (1, 2, 2)}
GRID_OPTIONS = ("dose_grid_factor", "dose_grid_mm")
# The generic and liver photon IMRT setups plan 9 equispaced coplanar fields (TG-119 plans 7 or 9, 9 for
# the C-shape; measured in docs/results.md, s3-tg119); H&N keeps seed 002's 7 (hn01 passes the gate with
# them; 9 there is not measured yet) and the trained planners the 7 they learned with.
IMRT_FIELDS = {"n_beams": 9}
# Seed 002's PPO (``--policy ppo``) plans on the engine it was trained on, with the loop's CTV D99 guard at 99 % Rx.
# It is not the proton H&N default: it beats the rule-based planner on 20/20 held-out variants on that coarse
# engine, but on hn01 the plan that leaves (gate's rounds, 6 × 10 × 10 mm dose voxels, 12 mm spots) spares the
# parotids and oesophagus 7–16 Gy less than the rule-based plan (docs/decisions.md, s4 review).
PPO_HN = Setup("proton_hn", "inhouse-proton", "ppo", 4, adapter_options=PPO_ENGINE, coverage_guard=0.99)
PPO_LIVER = replace(PPO_HN, env_options={"site": "liver"})  # the liver model (ppo.LIVER_WEIGHTS), seed 002 §2.15
SETUPS: dict[tuple[str, str], Setup] = {
    ("prostate", "photon"): Setup("prostate", "inhouse-photon", "acer", 20,
                                  adapter_options={**PROSTATE_ENGINE, **TRAINED_GRID},
                                  env_options={"init": "trivial"}),
    ("hn", "photon"): Setup("proton_hn", "inhouse-photon", "rule-based", 8),
    ("hn", "proton"): Setup("proton_hn", "inhouse-proton", "rule-based", 8),
    ("hn", "carbon"): Setup("carbon_hn", "phoenix", "rule-based", 10),
    # Sites without a seed's template: seed 002's objectives (rule 10 targets, rules 9–11 OARs) plus
    # the case's goals, with the site's margins (SPEC §2.15 liver: 5 / 15 mm; generic: 5 / 20 mm).
    ("liver", "photon"): Setup("proton_hn", "inhouse-photon", "rule-based", 8, adapter_options=IMRT_FIELDS,
                               env_options={"site": "liver"}),
    ("liver", "proton"): Setup("proton_hn", "inhouse-proton", "rule-based", 8, env_options={"site": "liver"}),
    ("generic", "photon"): Setup("proton_hn", "inhouse-photon", "rule-based", 8, adapter_options=IMRT_FIELDS,
                                 env_options={"site": "generic"}),
    ("generic", "proton"): Setup("proton_hn", "inhouse-proton", "rule-based", 8, env_options={"site": "generic"}),
    # Carbon on any site: seed 003's objectives act on the CTVs and the Table A1 organs the case has.
    ("generic", "carbon"): Setup("carbon_hn", "phoenix", "rule-based", 10),
}
SITES = ("hn", "prostate", "liver", "generic")
GOAL_ROUNDS = 4  # re-optimisations after the loop of a plan that fails the gate (rtautoplan.goal_rounds)
MODALITIES = ("photon", "proton", "carbon")


# A trained planner runs in the environment it was trained in: seed 004's SARSA reads the 14-value
# state of ``hn_imrt`` (model 2: dose and volume moves), not seed 002's.
POLICY_SETUPS: dict[tuple[str, str, str], Setup] = {
    ("hn", "photon", "sarsa"): Setup("hn_imrt", "inhouse-photon", "sarsa", 35, env_options={"model": 2},
                                     adapter_options={**SARSA_ENGINE, **TRAINED_GRID}),
    # seed 003's QMIX, with the optimiser iterations it was trained on (policies/weights/qmix_carbon.json)
    ("hn", "carbon", "qmix"): Setup("carbon_hn", "phoenix", "qmix", 10, adapter_options={"max_iterations": 100}),
    ("hn", "proton", "ppo"): PPO_HN,
    ("liver", "proton", "ppo"): PPO_LIVER,
}


def setup_for(site: str, modality: str, policy: str | None = None) -> Setup:
    """The setup of (site, modality), or of the planner ``policy`` there if it has its own."""
    if (site, modality, policy) in POLICY_SETUPS:
        return POLICY_SETUPS[(site, modality, policy)]
    if (site, modality) not in SETUPS:
        known = ", ".join(f"{s}/{m}" for s, m in SETUPS)
        raise ValueError(f"no planning setup for site {site!r} with {modality!r}; available: {known}")
    return SETUPS[(site, modality)]


# Organs that make a case head-and-neck or prostate for the site's template (any two for H&N).
_HN_ORGANS = ("Parotid_L", "Parotid_R", "Cavity_Oral", "Bone_Mandible", "Larynx", "Brainstem", "Glnd_Submand_L",
              "Glnd_Submand_R", "Musc_Constrict", "OpticChiasm", "Cochlea_L", "Cochlea_R")


def choose_site(case: Case, requested: str | None = None) -> tuple[str, str]:
    """(site, how it was chosen): the option, else prescription.json's ``site``, else the ROIs: prostate
    with a Prostate target or Bladder and Rectum, head and neck with two of its organs, liver with a
    Liver and no H&N organs, else generic (targets from the prescription, OARs from goals and the
    protocol table). Never the H&N template for a case that does not look like one."""
    if requested:
        return requested, "--site option"
    if case.prescription.site:
        if case.prescription.site not in SITES:
            raise InputError("prescription.json \"site\"", f"{case.prescription.site!r} is not a site",
                             f"Use one of {', '.join(SITES)}")
        return case.prescription.site, "prescription.json"
    names = {s.name for s in case.structures}
    hn = sorted(names & set(_HN_ORGANS))
    if "Prostate" in names or {"Bladder", "Rectum"} <= names:
        return "prostate", "the case has " + ("Prostate" if "Prostate" in names else "Bladder and Rectum")
    if len(hn) >= 2:
        return "hn", f"the case has head-and-neck organs ({', '.join(hn[:3])})"
    if "Liver" in names:
        return "liver", "the case has a Liver and no head-and-neck organs"
    return "generic", "no site template matches the ROIs"


def adapter_for(name: str, options: dict, modality: str | None = None):
    """An instance of adapter ``name`` with ``options``; an InputError (one line) for an unknown
    adapter, an option it does not take, a required argument the shells cannot give (the
    dicom-export adapter's exchange folder) or a modality it does not plan."""
    import inspect

    if name not in ADAPTERS:
        raise InputError(f"adapter {name!r}", "is not an adapter of rtautoplan", f"Use one of {sorted(ADAPTERS)}")
    cls = ADAPTERS[name]
    own = getattr(cls, "modality", None)
    if modality is not None and isinstance(own, Modality) and own.value != modality:
        raise InputError(f"adapter {name!r}", f"plans {own.value} beams, not {modality}",
                         f"Use --modality {own.value}, or leave --adapter out (the setup's adapter)")
    parameters = inspect.signature(cls).parameters
    required = [p for p, v in parameters.items() if v.default is inspect.Parameter.empty
                and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD) and p not in options]
    if required:
        raise InputError(f"adapter {name!r}", f"needs {', '.join(required)}, which the command line does not give",
                         f"Use it from the Python API ({cls.__name__}({', '.join(required)}=…) as plan_case(tps=…)), "
                         "or choose another adapter")
    unknown = sorted(set(options) - set(parameters)) if not any(
        v.kind is v.VAR_KEYWORD for v in parameters.values()) else []
    if unknown:
        raise InputError(f"adapter {name!r}", f"takes none of the options {unknown}",
                         "Leave them out for this adapter (e.g. PHOENIX sets its own dose grid)")
    return cls(**options)


def tps_with_options(setup: Setup, adapter: str | None, options: dict, modality: str | None = None):
    """An adapter instance with ``options`` (e.g. a dose grid) on top of the setup's own adapter options
    (those only when ``adapter`` is the setup's; a dose grid in ``options`` replaces the setup's); see
    ``adapter_for`` for what is refused."""
    name = adapter or setup.adapter
    base = setup.adapter_options if name == setup.adapter else {}
    if any(k in options for k in GRID_OPTIONS):
        base = {k: v for k, v in base.items() if k not in GRID_OPTIONS}
    return adapter_for(name, {**base, **options}, modality)


def make_env(setup: Setup, case: Case | None = None, tps=None, adapter: str | None = None,
             max_steps: int | None = None, **env_options):
    """The environment of ``setup`` on ``case`` (or on phantom seeds given in env_options)."""
    if tps is None:
        tps = tps_with_options(setup, adapter, {})
    options = {**setup.env_options, **env_options}
    if case is not None:
        options["case"] = case
    return ENVS[setup.env](tps, max_steps=max_steps or setup.max_steps, **options)


def make_policy(name: str, env, seed: int = 0):
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; available: {sorted(POLICIES)}")
    return POLICIES[name](env, seed)


def deliverable(env, plan, segments: dict | None = None):
    """(plan, sequenced beams): photon plans are leaf-sequenced, their segment weights re-optimised where
    the TPS can (``optimize_segments``) and their dose recomputed from the segments' fluence (a clinic gets
    the delivered dose, not the ideal fluence's); ion plans are delivered as optimised. ``segments``: a memo
    of the sequenced beams by plan (weights and objectives), so a plan the loop's gate check already
    sequenced is not sequenced and re-weighted again when it leaves (the same beams, so the same plan)."""
    if plan.modality is not Modality.PHOTON:
        return plan, ()
    if not plan.positions or not hasattr(env.tps, "dose_of"):
        raise InputError(f"adapter {env.tps.name!r}", "gives no beamlet geometry or dose of given weights, so its "
                         "photon plans cannot be leaf-sequenced and recomputed here",
                         "Use a photon adapter of rtautoplan (inhouse-photon), or the external TPS's own RTPLAN")
    key = _plan_key(plan) if segments is not None else None
    sequenced = segments.get(key) if key is not None else None
    if sequenced is None:
        sequenced = _sequenced(env, plan)
        if key is not None:
            segments[key] = sequenced
    weights = tuple(s.delivered for s in sequenced)
    dose = env.tps.dose_of(weights)
    return replace(plan, weights=weights, dose=dose), sequenced


def _sequenced(env, plan) -> tuple:
    """The plan's step-and-shoot segments, their weights re-optimised where the TPS can."""
    from rtautoplan.physics.sequencing import apertures, sequence_plan, with_segment_weights

    sequenced = sequence_plan(plan)
    if hasattr(env.tps, "optimize_segments"):
        shapes = apertures(plan, sequenced)
        weights = env.tps.optimize_segments(plan.objectives, shapes, [b.segment_fluence for b in sequenced])
        sequenced = tuple(with_segment_weights(b, a, w, np.asarray(p, float))
                          for b, a, w, p in zip(sequenced, shapes, weights, plan.weights))
    return sequenced


def _plan_key(plan) -> tuple:
    """What a plan's segments depend on besides the TPS: its objectives and its weights (bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for w in plan.weights:
        digest.update(np.ascontiguousarray(w, float).tobytes())
    return plan.objectives, digest.hexdigest()


def sequential_course(case: Case, setup: Setup, env_options: dict | None = None) -> bool:
    """Whether ``case`` is planned phase by phase (``rtautoplan.phases.plan_phases``): seed 004's
    environment plans one 44 Gy primary phase as prescribed (``as_prescribed``), so a case sent to it
    must state its sequential course; InputError when its prescription states none."""
    if setup.env != "hn_imrt" or (env_options or {}).get("as_prescribed"):
        return False
    rx = case.prescription
    if not rx.phases:
        from rtautoplan.phases import example_phases

        levels = ", ".join(f"{lv.target} {lv.dose_gy:g} Gy" for lv in rx.levels)
        raise InputError(f"prescription of case {case.case_id!r}", "seed 004's SARSA planner plans a sequential "
                         "course (a 44 Gy primary phase, then a boost), and this prescription "
                         f"({len(rx.levels)} levels, simultaneous: {levels} in {rx.fractions} fractions) states no "
                         f"phases", f"Add them to prescription.json, e.g. {example_phases(rx)}, or choose another "
                         "planner (--policy rule-based)")
    return True


def choose_plan(finals: dict, verdicts: dict) -> str:
    """Which candidate leaves (name in ``finals``: "best", "initial", "acceptable", each (step, plan,
    score, …) after sequencing and normalisation): the best-scoring one that passes the clinical gate;
    when none does, the one nearest to passing (``GateResult.violation``: a plan that misses a hot-spot
    rule by 0.05 Gy is closer to treatable than a better-scoring one that misses it by 3 Gy), the
    score breaking ties. Sequencing can reorder near-equal plans, so all is judged after it."""
    names = sorted(finals, key=lambda n: (n != "best", n != "acceptable"))
    passing = [n for n in names if verdicts[n].acceptable]
    if not passing:
        nearest = min(verdicts[n].violation for n in names)
        passing = [n for n in names if verdicts[n].violation <= nearest + 1e-9]
    chosen = passing[0]
    for name in passing[1:]:
        if is_better(finals[name][2], finals[chosen][2]):
            chosen = name
    return chosen


def final_plan(env, case: Case, plan, segments: dict | None = None):
    """(plan, score, sequenced beams, Normalised or None): ``plan`` as it leaves (``leaving_plan``), scored."""
    plan, sequenced, normalised = leaving_plan(env, case, plan, segments)
    return plan, env.score(plan.dose.gy), sequenced, normalised


def leaving_plan(env, case: Case, plan, segments: dict | None = None):
    """(plan, sequenced beams, Normalised or None): ``plan`` as delivered (``deliverable``), normalised by
    the prescription's rule (weights, segments' MU and dose together)."""
    plan, sequenced = deliverable(env, plan, segments)
    plan, normalised = normalise(case, plan)
    if normalised is not None:
        sequenced = tuple(replace(b, segment_fluence=b.segment_fluence * normalised.factor,
                                  delivered=b.delivered * normalised.factor) for b in sequenced)
    return plan, sequenced, normalised


def plan_case(case: Case, site: str = "hn", modality: str = "photon", adapter: str | None = None,
              policy: str | None = None, max_steps: int | None = None, seed: int = 0, tps=None,
              on_step: Callable[[Step], None] | None = None, env_options: dict | None = None,
              conservative: int | None = None, goal_rounds: int = GOAL_ROUNDS) -> tuple[Case, Result]:
    """Plan ``case`` (as read, before the structure rules) in the closed loop; returns the case
    with its planning structures and the Result: the best plan, leaf-sequenced (photons),
    normalised (``rtautoplan.normalisation``) and checked by the clinical gate (``rtautoplan.gate``);
    a plan that fails the gate gets up to ``goal_rounds`` goal-driven re-optimisations
    (``rtautoplan.goal_rounds``). ``max_steps`` 0 gives the initial plan without policy steps or rounds.
    ``conservative``: K of conservative mode (``rtautoplan.oversight``); the level-1 organs' limits and
    the planner's ensemble always apply."""
    setup = setup_for(site, modality, policy)
    if sequential_course(case, setup, env_options):
        from rtautoplan.phases import plan_phases

        planned, course = plan_phases(case, site, modality, adapter, policy or setup.policy, max_steps, seed, tps,
                                      on_step)
        goals = protocols.goals_for(planned, site)
        verdict = gate.check(planned, course.plan.dose.gy, goals, notes=(protocols.fractionation_note(planned),))
        return planned, replace(course, gate=verdict, site=site)
    planning = prepare(case, site, modality, adapter, policy, max_steps, seed, tps, env_options, conservative)
    loop = run_loop(planning.env, planning.planner, planning.steps, seed=seed, on_step=on_step,
                    level1=planning.limits, oversight=planning.oversight, acceptable=planning.acceptable,
                    coverage_guard=planning.coverage_guard)
    return planning.planned, conclude(planning, loop, goal_rounds, on_step)


@dataclass(frozen=True, eq=False)
class Planning:
    """One case ready for the closed loop (autonomous, ``run_loop``, or suggest mode, ``rtautoplan.suggest``):
    its environment, the case after the structure rules, the goals, the planner, the level-1 limits, the
    oversight (ensemble, conservative mode), the audit record, the number of steps and the setup's CTV D99
    guard (``Setup.coverage_guard``)."""

    site: str
    env: object
    planned: Case
    goals: tuple
    planner: object
    limits: tuple
    oversight: Oversight
    audit: dict
    steps: int
    segments: dict = field(default_factory=dict, repr=False)  # deliverable's memo: plan → sequenced beams
    coverage_guard: float | None = None

    def acceptable(self, env) -> bool:
        """The clinical gate on the plan ``env`` holds, as it would leave (sequenced, normalised)."""
        return gate.check(self.planned, leaving_plan(env, self.planned, scaled_plan(env), self.segments)[0].dose.gy,
                          self.goals).acceptable


def prepare(case: Case, site: str = "hn", modality: str = "photon", adapter: str | None = None,
            policy: str | None = None, max_steps: int | None = None, seed: int = 0, tps=None,
            env_options: dict | None = None, conservative: int | None = None) -> Planning:
    """The environment, planner and checks for ``case`` (``plan_case``'s arguments; not a sequential course)."""
    setup = setup_for(site, modality, policy)
    steps = setup.max_steps if max_steps is None else int(max_steps)
    if tps is None:
        tps = tps_with_options(setup, adapter, {}, modality)
    env = make_env(setup, case, tps=tps, adapter=adapter, max_steps=max(1, steps), **(env_options or {}))
    from rtautoplan.goals import check_rois

    planned = env.case_for(None)  # the case after the structure rules, as the loop will plan it
    goals = protocols.goals_for(planned, site)
    check_rois(goals, planned)  # before the loop: a goal naming no ROI stops here
    planner = make_policy(policy or setup.policy, env, seed)
    watch, audit = oversight_for(policy or setup.policy, planner, env, conservative)
    return Planning(site, env, planned, goals, planner, level1_limits(planned, goals), watch, audit, steps,
                    coverage_guard=setup.coverage_guard)


def conclude(planning: Planning, loop, goal_rounds: int = GOAL_ROUNDS,
             on_step: Callable[[Step], None] | None = None) -> Result:
    """The Result of a finished loop (``loop.LoopResult``): the best, initial and best-passing plans made
    deliverable and normalised, the one that leaves chosen by the clinical gate (``choose_plan``); when it
    fails the gate, up to ``goal_rounds`` goal-driven re-optimisations (``rtautoplan.goal_rounds``)."""
    env, planned, goals = planning.env, planning.planned, planning.goals
    notes = (protocols.fractionation_note(planned),)
    candidates = {"best": (loop.best_step, loop.best_plan), "initial": (0, loop.initial_plan)}
    if loop.best_acceptable is not None and loop.best_acceptable[0] != loop.best_step:
        candidates["acceptable"] = loop.best_acceptable[:2]
    finals = {name: (step, *final_plan(env, planned, plan, planning.segments))
              for name, (step, plan) in candidates.items()}
    verdicts = {name: gate.check(planned, f[1].dose.gy, goals, notes=notes) for name, f in finals.items()}
    chosen = choose_plan(finals, verdicts)
    final, verdict, rounds = finals[chosen], verdicts[chosen], ()
    if not verdict.acceptable and goal_rounds and planning.steps > 0:  # --max-steps 0: the initial plan as it is
        from rtautoplan.goal_rounds import refine

        final, verdict, rounds = refine(planned, env.tps, final, verdict, lambda p: final_plan(env, planned, p),
                                        lambda gy: gate.check(planned, gy, goals, notes=notes),
                                        first_step=max((s.step for s in loop.steps), default=0) + 1,
                                        on_step=on_step)
    best_step, plan, score, sequenced, normalised = final
    initial = finals["initial"]
    from rtautoplan.attribution import explain_env

    attribution = explain_env(planning.planner, env, loop.steps)
    return Result(plan, initial[2], score, loop.steps + rounds, planning.planner.name, best_step, initial[1].dose,
                  sequenced, gate=verdict, normalisation=normalised, site=planning.site,
                  audit={**planning.audit, "level-1 limits": [str(g) for g in planning.limits],
                         "attribution": attribution})


def oversight_for(name: str, planner, env, conservative: int | None = None) -> tuple[Oversight, dict]:
    """(the loop's Oversight: the planner's ensemble, conservative mode's reference; the weights of the
    planner and every member for the audit log)."""
    from rtautoplan.audit import weights_record
    from rtautoplan.policies import ensemble_for

    members = ensemble_for(name, env)
    watch = Oversight(ensemble=members, reference=conservative_reference(env, conservative),
                      conservative_k=conservative)
    weights = [w for w in map(weights_record, (planner, *members)) if w is not None]
    return watch, {"weights": weights, "conservative": conservative}
