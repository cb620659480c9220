"""The one interface in front of every treatment planning system, and its conformance check.

A planner (rule-based or a trained policy) drives any TPS the same way::

    tps.prepare(case, beams)          # dose influence, spots, sessions … whatever the TPS needs
    dose = tps.optimize(objectives)   # re-optimise, warm-started from the previous solution
    tps.plan()                        # the plan behind the last dose

``check_tps(tps, case)`` is to adapters what gymnasium's ``check_env`` is to environments: every
adapter in ``ADAPTERS`` must pass it (tests/test_adapters.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from rtautoplan.case import Case
from rtautoplan.plan import Beam, Dose, Modality, Objective, Plan


@runtime_checkable
class TPS(Protocol):
    """A treatment planning system as the closed loop sees it."""

    name: str
    modality: Modality

    def prepare(self, case: Case, beams: Sequence[Beam] | None = None) -> None:
        """Set up the case (beams default to the TPS's standard arrangement for the case)."""

    def optimize(self, objectives: Sequence[Objective]) -> Dose:
        """Optimise to ``objectives``, warm-started from the previous solution; dose on the CT grid (Gy).
        An adapter may also take ``start=`` (per-beam weights of one of its plans, ``Plan.weights``) to
        start from that plan instead (the in-house engines; the goal rounds use it when offered)."""

    def plan(self) -> Plan:
        """The plan (beams, weights, dose) of the last optimisation."""


class ConformanceError(AssertionError):
    """An adapter breaks the TPS contract; the message says which rule."""


def check_tps(tps: TPS, case: Case, objectives: Sequence[Objective], beams: Sequence[Beam] | None = None) -> None:
    """Raise ConformanceError unless ``tps`` honours the contract on ``case``:

    - it is a TPS (name, modality, prepare/optimize/plan);
    - ``plan()`` and ``optimize()`` before ``prepare()`` fail with a clear error, not a crash inside;
    - ``optimize`` returns a finite, non-negative Dose on the case's CT grid; optimising again with
      the same objectives (a warm start) never makes the plan worse by those objectives; tightening
      an OAR objective hard lowers that OAR's dose;
    - ``plan()`` describes the last dose: non-negative weights, one array per beam, the same dose.
    """
    _require(isinstance(tps, TPS), f"{type(tps).__name__} lacks name/modality/prepare/optimize/plan")
    _require(isinstance(tps.name, str) and tps.name, "name must be a non-empty str")
    _require(isinstance(tps.modality, Modality), "modality must be a Modality")
    for call in (tps.plan, lambda: tps.optimize(objectives)):
        try:
            call()
        except (RuntimeError, ValueError) as error:
            _require(bool(str(error)), "the error before prepare() must say what to do")
        else:
            raise ConformanceError("plan()/optimize() before prepare() must raise RuntimeError or ValueError")

    tps.prepare(case, beams)
    first = tps.optimize(objectives)
    _check_dose(first, case)
    plan = tps.plan()
    _require(isinstance(plan, Plan), "plan() must return a Plan")
    _require(len(plan.weights) == len(plan.beams) > 0, "plan() needs one weight array per beam")
    _require(all(np.all(np.asarray(w) >= 0) for w in plan.weights), "plan weights must be ≥ 0")
    _require(np.allclose(plan.dose.gy, first.gy, rtol=1e-4, atol=1e-4), "plan().dose must be the last dose")

    again = tps.optimize(objectives)
    before, after = objective_value(first, case, objectives), objective_value(again, case, objectives)
    _require(after <= before * (1 + 1e-2) + 1e-9,
             f"a warm-started re-optimisation made the plan worse ({before:.4g} → {after:.4g})")

    adjustable = [o for o in objectives if o.adjustable]
    _require(bool(adjustable), "check_tps needs at least one adjustable (OAR) objective")
    squeezed = [replace(o, dose_gy=0.0, weight=o.weight * 100.0) if o is adjustable[0] else o for o in objectives]
    tightened = tps.optimize(squeezed)
    _check_dose(tightened, case)
    organ = case.structure(adjustable[0].structure).voxels
    _require(organ.take(tightened.gy).mean() < organ.take(first.gy).mean() - 1e-3,
             f"tightening {adjustable[0].structure} to 0 Gy ×100 must lower its mean dose")


def objective_value(dose: Dose, case: Case, objectives: Sequence[Objective]) -> float:
    """Σ w·penalty of ``objectives`` evaluated on a dose on the CT grid (the TPS-independent yardstick)."""
    from rtautoplan.optimize.objectives import PENALTIES

    total = 0.0
    for o in objectives:
        d = case.structure(o.structure).voxels.take(dose.gy).astype(float)
        if d.size:
            total += o.weight * PENALTIES[o.kind](d, o.dose_gy, o.volume)[0]
    return total


def _check_dose(dose: Dose, case: Case) -> None:
    _require(isinstance(dose, Dose), "optimize() must return a Dose")
    _require(dose.grid.shape == case.grid.shape, f"dose grid {dose.grid.shape} is not the CT grid {case.grid.shape}")
    _require(bool(np.all(np.isfinite(dose.gy))) and bool(np.all(dose.gy >= 0)), "dose must be finite and ≥ 0 Gy")
    _require(dose.kind in ("PHYSICAL", "EFFECTIVE"), "Dose.kind must be PHYSICAL or EFFECTIVE (DICOM DoseType)")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)
