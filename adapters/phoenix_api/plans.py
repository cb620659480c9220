"""The server's plan store: imported patients, their plans and objectives, the dose-grid model of
each patient and target, and the geometry files a plan's optimisations read.

A plan's geometry (dose influence matrices and ROI objective points) is written to the server's
store folder as content-addressed files when the plan is created, so plans with the same patient,
target and fields share them and a worker loads each once (``worker``). Look-ups raise the
``PhoenixError`` of an unknown ID.
"""

from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtautoplan.adapters.phoenix_api import engine
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.records import FieldSpec
from rtautoplan.case import Case


@dataclass(eq=False)
class ObjectiveRecord:
    obj_id: str
    plan_id: str
    roi: str
    type: str
    params: dict
    last_value: float | None = None


@dataclass(eq=False)
class PlanRecord:
    plan_id: str
    patient_uid: str
    label: str
    fields: tuple[FieldSpec, ...]
    rbe_model: str
    technique: str
    prescription_gy: float
    fractions: int
    targets: tuple[str, ...]  # the ROIs the spots cover; the first scales the starting weights
    model: engine.DoseGridModel
    influence_path: Path
    rois_path: Path
    spots: tuple[np.ndarray, ...]
    objectives: dict = field(default_factory=dict)  # obj_id → ObjectiveRecord, in insertion order
    weights: np.ndarray | None = None
    result: dict | None = None
    dose: dict = field(default_factory=dict)  # kind → CT-grid array of the last result
    active_job: str | None = None


def store_geometry(model: engine.DoseGridModel, geometry, store: Path,
                   spot_options: dict) -> tuple[Path, Path, tuple[np.ndarray, ...]]:
    """The influence and ROI-points files of ``model`` with the fields ``geometry`` ((gantry°,
    couch°) pairs) in ``store``, written when absent, and the spots per field."""
    influence_path, influence = engine.influence_cached(model, geometry, store, **spot_options)
    rois_path = influence_path.with_name(f"rois-{model.rois_key()}.pkl")
    if not rois_path.is_file():
        tmp = rois_path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # concurrent create_plan calls
        with open(tmp, "wb") as f:
            pickle.dump(model.rois, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(rois_path)
    if influence is not None:
        spots = influence.spots
    else:
        with np.load(influence_path) as z:
            spots = tuple(np.split(z["spots"], np.cumsum(z["sizes"])[:-1]))
    return influence_path, rois_path, spots


class PlanStore:
    """Patients, plans and objectives by ID, and the dose-grid models by (patient, targets).

    lock: the server's lock; callers hold it around look-ups and changes, except ``model``, which
    takes it itself (a model is built outside it).
    """

    def __init__(self, lock):
        self._lock = lock
        self.patients: dict[str, Case] = {}
        self.plans: dict[str, PlanRecord] = {}
        self.objectives: dict[str, ObjectiveRecord] = {}
        self._models: dict = {}

    def patient(self, uid: str) -> Case:
        try:
            return self.patients[uid]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PATIENT, f"no patient {uid!r}; import_patient() first") from None

    def plan(self, plan_id: str) -> PlanRecord:
        try:
            return self.plans[plan_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PLAN, f"no plan {plan_id!r}") from None

    @staticmethod
    def unlocked(plan: PlanRecord) -> PlanRecord:
        if plan.active_job is not None:
            raise PhoenixError(E.PLAN_LOCKED, f"plan {plan.plan_id} is being optimised by job {plan.active_job}; "
                                              "wait for it or cancel it first")
        return plan

    def objective(self, obj_id: str) -> ObjectiveRecord:
        try:
            return self.objectives[obj_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PARAMETER, f"no objective {obj_id!r}") from None

    def with_result(self, plan_id: str) -> PlanRecord:
        plan = self.plan(plan_id)
        if plan.result is None:
            raise PhoenixError(E.NO_DOSE, f"plan {plan_id} has no dose yet; run an optimisation first")
        return plan

    def model(self, patient_uid: str, targets: tuple[str, ...], dose_grid_mm: float) -> engine.DoseGridModel:
        """The dose-grid model of a patient and its target ROIs, built on first use."""
        key = (patient_uid, targets)
        with self._lock:
            model = self._models.get(key)
        if model is None:
            model = engine.DoseGridModel.from_case(self.patients[patient_uid], targets, dose_grid_mm)
            with self._lock:
                self._models[key] = model
        return model

    def finish_job(self, job, result: dict | None) -> None:
        """Record a finished job on its plan (the worker's result if it is DONE) and unlock the plan."""
        plan = self.plans[job.plan_id]
        if result is not None:
            plan.weights, plan.result, plan.dose = result["x"], result, {}
            for obj_id, value in zip(job.obj_ids, result["term_values"]):
                if obj_id in plan.objectives:
                    plan.objectives[obj_id].last_value = value
        if plan.active_job == job.job_id:
            plan.active_job = None
