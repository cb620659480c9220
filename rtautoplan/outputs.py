"""Everything ``rtautoplan plan`` leaves in its output folder, and the audit trail (SPEC §5.7).

``write_outputs(case, result, out)`` writes the DICOM objects (``dicom.write.write_result``), the
report (``report.write_report``: DVHs, dose, every scoring system that applies to the case, the
decisions step by step) and ``plan_log.json``: input hash, software version, policy, seed, the
initial and final score, and every step with its action, alternatives, safety verdict,
parameters, score and time; for a sequential course also each phase (name, fractions, levels,
planner, score) and each target's course dose (``phases.phase_records``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rtautoplan.audit import jsonable, seal
from rtautoplan.case import Case
from rtautoplan.dicom.modules import software_version
from rtautoplan.dicom.write import write_result
from rtautoplan.plan import Result, Step
from rtautoplan.safety import hard_constraints, rejection_rate

LOG_FILE = "plan_log.json"


def case_hash(case: Case) -> str:
    """SHA-256 of what the plan depends on: CT (HU), grid, every structure's name and mask, prescription."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(case.hu).tobytes())
    h.update(repr((case.grid, case.prescription)).encode())
    for s in case.structures:
        h.update(s.name.encode())
        h.update(np.packbits(s.mask.to_full()).tobytes())
    return h.hexdigest()


def applicable_scores(case: Case, dose_gy: np.ndarray) -> list:
    """Every scoring system that can score this case (a system missing its structures is left out)."""
    from rtautoplan.scoring import SCORERS

    scores = []
    for score in SCORERS.values():
        try:
            scores.append(score(dose_gy, case))
        except ValueError:
            continue
    return scores


def step_record(step: Step) -> dict:
    """One step as the log keeps it (``Step``; ``rtautoplan.audit``)."""
    return {"step": step.step, "action": step.action, "accepted": step.accepted, "reason": step.reason,
            "rule": step.rule, "score": step.score, "reward": step.reward, "time_s": round(step.time_s, 3),
            "alternatives": [list(a) for a in step.alternatives],
            "parameters": {k: float(v) for k, v in step.parameters.items()},
            "action_id": jsonable(step.action_id), "mu": jsonable(step.mu), "state": jsonable(step.state, 5),
            "uncertainty": step.uncertainty, "convergence": step.convergence, "override": step.override,
            "available": [int(a) for a in step.available]}


def _grid_json(grid) -> dict:
    """The grid the RTDOSE holds: spacing (mm, slice row column), shape, origin (mm)."""
    return {"spacing_mm": [round(float(v), 4) for v in grid.spacing], "shape": list(grid.shape),
            "origin_mm": [round(float(v), 3) for v in grid.origin]}


def write_outputs(case: Case, result: Result, out: str | Path, extra: dict | None = None,
                  uid_seed: str | None = None) -> dict[str, Path]:
    """Write DICOM, report and log for ``result`` into ``out``; returns name → path."""
    from rtautoplan.report import write_report

    out = Path(out)
    paths = write_result(case, result, out, uid_seed=uid_seed)
    plan = result.plan
    info = {"case": case.case_id, "prescription": case.prescription.summary, "modality": plan.modality.value, "adapter": plan.adapter, "policy": result.policy,
            "scoring": result.score.system, "initial score": round(float(result.initial_score.total), 4),
            "final score": round(float(result.score.total), 4), "best step": result.best_step,
            "normalisation": str(result.normalisation) if result.normalisation else "none",
            "dose grid": _grid_json(plan.dose.as_computed.grid), **(extra or {})}
    safety = {**rejection_rate(result.steps), "hard constraints": hard_constraints(case, result)}
    broken = [c["detail"] for c in safety["hard constraints"] if not c["met"]]
    header = {**{k: v for k, v in info.items() if k != "inputs"},
              "safety filter": f"{safety['rejected']} of {safety['attempts']} attempts rejected ({100 * safety['rate']:.1f} %)",
              "flagged steps": sum(1 for s in result.steps if s.uncertainty.get("flags")),
              **({"HARD CONSTRAINTS BROKEN": "; ".join(broken)} if broken else {})}
    attribution = result.audit.get("attribution", {})
    steps = [{**step_record(s), "attribution": attribution.get(s.step) if s.accepted else None} for s in result.steps]
    gate = result.gate.as_json() if result.gate is not None else None
    paths["report"] = write_report(out, case, plan.dose, applicable_scores(case, plan.dose.gy), steps,
                                   title=f"rtautoplan plan: {case.case_id}", extra=header, gate=gate)
    log = {"software": software_version(), "input_sha256": case_hash(case),
           "acceptable": bool(result.acceptable), **(gate or {"reasons": ["the plan was not checked by the gate"]}),
           **info,
           "delivery": [{"beam": b.name, "segments": s.n_segments, "fluence_rms_error": round(s.rms_error, 4)}
                        for b, s in zip(plan.beams, result.delivery)],
           "objectives": [{"structure": o.structure, "kind": o.kind.value, "dose_gy": o.dose_gy, "weight": o.weight,
                           "volume": o.volume, "adjustable": o.adjustable} for o in plan.objectives],
           "weights": result.audit.get("weights", []), "safety": safety,
           "level-1 limits": result.audit.get("level-1 limits", []),
           "overrides": [{"step": s.step, "action": s.action, "decision": s.override} for s in result.steps
                         if s.override],
           "steps": steps, "files": {k: str(v.name) for k, v in paths.items()}}
    if result.phases:
        from rtautoplan.phases import phase_records

        log.update(phase_records(case, result))
    paths["log"] = out / LOG_FILE
    paths["log"].write_text(json.dumps(seal(log), indent=1))
    return paths
