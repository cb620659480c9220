"""The PHOENIX simulator server: the request API on the patients, plans and objectives it keeps
(``plans``) and on the optimisation jobs of its worker pool (``jobs``, ``worker``).

State lives in the server (one process), guarded by one lock that the plan store and the job pool
share; optimisations run in a ``ProcessPoolExecutor`` (fork on Linux). What a worker needs is
shipped once per plan geometry, not once per job: the dose influence matrices and the ROI
objective points are written to the server's store as content-addressed files when a plan is
created (``plans.store_geometry``), and each worker loads a file the first time a job uses it and
keeps it (``worker``). A job's message is then small: file names, the objective catalogue, the
warm-start weights. Job progress and cancellation go through shared-memory slots (``jobs``).
"""

from __future__ import annotations

import itertools
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rtautoplan import dvh as dvh_mod
from rtautoplan.case import Case
from rtautoplan.adapters.phoenix_api import engine
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.jobs import JobPool
from rtautoplan.adapters.phoenix_api.plans import ObjectiveRecord, PlanRecord, PlanStore, store_geometry
from rtautoplan.adapters.phoenix_api.records import (DEFAULT_FIELDS, FieldSpec, JobStatus, ObjectiveInfo, PlanInfo,
                                                     RoiInfo)

__all__ = ["DEFAULT_FIELDS", "FieldSpec", "JobStatus", "ObjectiveInfo", "PhoenixServer", "PlanInfo", "RoiInfo"]

if TYPE_CHECKING:  # session imports this module
    from rtautoplan.adapters.phoenix_api.session import Session


class PhoenixServer:
    """A PHOENIX-like carbon-ion TPS: ``connect(user)`` gives a Session (the client API).

    workers: optimisation processes (plans optimise in parallel up to this many).
    dose_grid_mm: dose grid resolution (CT voxels are grouped in blocks of about this size).
    store_dir: where dose influence data is kept (default: a temporary folder removed at shutdown).
    spot_spacing_mm, layer_spacing_mm, margin_mm: spot placement (``ion_dose.spots_for``).
    """

    def __init__(self, workers: int = 4, dose_grid_mm: float = 5.0, store_dir: str | Path | None = None,
                 spot_spacing_mm: float = 5.0, layer_spacing_mm: float = 3.0, margin_mm: float = 4.0):
        if workers < 1:
            raise ValueError("workers must be ≥ 1")
        self.workers, self.dose_grid_mm = int(workers), float(dose_grid_mm)
        self.spot_options = {"spot_spacing_mm": float(spot_spacing_mm), "layer_spacing_mm": float(layer_spacing_mm),
                             "margin_mm": float(margin_mm)}
        self._own_store = store_dir is None
        self.store = engine.scratch_store() if store_dir is None else Path(store_dir)
        self.store.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._plans = PlanStore(self._lock)
        self._jobs = JobPool(self.workers, self._lock, self._plans.finish_job)
        self._down = False

    # -- lifecycle
    def connect(self, user: str) -> "Session":
        from rtautoplan.adapters.phoenix_api.session import Session

        self._check_up()
        if not isinstance(user, str) or not user:
            raise PhoenixError(E.INVALID_PLAN, "user must be a non-empty string")
        return Session(self, user)

    def shutdown(self) -> None:
        """Stop the workers (running jobs are cancelled) and remove a temporary store."""
        with self._lock:
            if self._down:
                return
            self._down = True
            self._jobs.cancel_running()
        self._jobs.shutdown()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def _check_up(self):
        if self._down:
            raise PhoenixError(E.SERVER_DOWN, "the PHOENIX server has been shut down; start a new one")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # -- patients
    def import_patient(self, source) -> str:
        self._check_up()
        if isinstance(source, Case):
            case = source
        else:
            from rtautoplan.dicom.read import read_case
            from rtautoplan.errors import InputError

            try:
                case = read_case(source)
            except InputError as error:
                raise PhoenixError(E.IMPORT_FAILED, str(error)) from None
            except Exception as error:  # noqa: BLE001 - a vendor reports every parse failure the same way
                raise PhoenixError(E.IMPORT_FAILED, f"{source}: {type(error).__name__}: {error}") from None
        with self._lock:
            uid = self._new_id("PAT")
            self._plans.patients[uid] = case
        return uid

    def list_rois(self, patient_uid: str) -> list[RoiInfo]:
        case = self._plans.patient(patient_uid)
        return [RoiInfo(s.name, s.role.dicom_type, s.volume_cm3(case.grid)) for s in case.structures]

    # -- plans
    def create_plan(self, patient_uid: str, label: str, fields=None, rbe_model: str = "LQ", technique: str = "PBS",
                    prescription_gy: float | None = None, fractions: int | None = None,
                    target_roi: str | Sequence[str] | None = None) -> str:
        self._check_up()
        case = self._plans.patient(patient_uid)
        fields = tuple(DEFAULT_FIELDS if fields is None else
                       (f if isinstance(f, FieldSpec) else FieldSpec(float(f)) for f in fields))
        if not fields:
            raise PhoenixError(E.INVALID_PLAN, "a plan needs at least one field")
        for f in fields:
            if not (0.0 <= f.gantry_deg < 360.0 and -90.0 <= f.couch_deg <= 90.0):
                raise PhoenixError(E.INVALID_PLAN, f"field {f}: gantry must be in [0, 360) and couch in [-90, 90] degrees")
        if str(rbe_model).upper() != "LQ":
            raise PhoenixError(E.INVALID_PLAN, f"RBE model {rbe_model!r} is not available; this system supports 'LQ'")
        if str(technique).upper() != "PBS":
            raise PhoenixError(E.INVALID_PLAN, f"technique {technique!r} is not available; this system supports 'PBS'")
        if target_roi is None:
            targets = tuple(dict.fromkeys(lv.target for lv in case.prescription.levels if case.has(lv.target)))
            targets = targets or (case.prescription.levels[0].target,)
        else:
            targets = (target_roi,) if isinstance(target_roi, str) else tuple(target_roi)
        if not targets:
            raise PhoenixError(E.INVALID_PLAN, "a plan needs at least one target ROI")
        for name in targets:
            if not case.has(name):
                raise PhoenixError(E.UNKNOWN_ROI, f"target ROI {name!r} is not in patient {patient_uid}")
            if not case.structure(name).voxels.any():
                raise PhoenixError(E.INVALID_PLAN, f"target ROI {name!r} is empty")
        rx = float(prescription_gy if prescription_gy is not None else case.prescription.rx_max)
        n_fx = int(fractions if fractions is not None else case.prescription.fractions)
        if not 0.0 < rx <= engine.BOUNDS["obj_value"][1]:
            raise PhoenixError(E.OUT_OF_RANGE, f"prescription {rx} Gy(RBE) outside (0, {engine.BOUNDS['obj_value'][1]:g}]")
        if not 1 <= n_fx <= 60:
            raise PhoenixError(E.OUT_OF_RANGE, f"fractions {n_fx} outside [1, 60]")
        model = self._plans.model(patient_uid, targets, self.dose_grid_mm)
        geometry = [(f.gantry_deg, f.couch_deg) for f in fields]
        influence_path, rois_path, spots = store_geometry(model, geometry, self.store, self.spot_options)
        with self._lock:
            plan_id = self._new_id("PLN")
            self._plans.plans[plan_id] = PlanRecord(plan_id, patient_uid, str(label), fields, "LQ", "PBS", rx, n_fx,
                                                    targets, model, influence_path, rois_path, spots)
        return plan_id

    def delete_plan(self, plan_id: str) -> None:
        """Forget a plan, its objectives and its dose (PHX-2201 while it is being optimised). The
        geometry files stay: other plans of the same patient, targets and fields share them."""
        with self._lock:
            plan = self._plans.unlocked(self._plans.plan(plan_id))
            for obj_id in plan.objectives:
                del self._plans.objectives[obj_id]
            del self._plans.plans[plan_id]

    def plan_info(self, plan_id: str) -> PlanInfo:
        p = self._plans.plan(plan_id)
        return PlanInfo(p.plan_id, p.patient_uid, p.label, p.fields, p.rbe_model, p.technique, p.prescription_gy,
                        p.fractions, p.targets[0], tuple(len(s) for s in p.spots), p.result is not None,
                        p.active_job is not None, p.model.isocenter, p.targets)

    # -- objectives
    @staticmethod
    def _check_value(name: str, value) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise PhoenixError(E.OUT_OF_RANGE, f"parameter {name} must be a number, got {value!r}") from None
        lo, hi = engine.BOUNDS[name]
        if not (np.isfinite(v) and lo <= v <= hi):
            raise PhoenixError(E.OUT_OF_RANGE, f"parameter {name} = {v:g} outside [{lo:g}, {hi:g}]")
        return v

    def add_objective(self, plan_id: str, roi: str, type: str, **parameters) -> str:
        with self._lock:
            plan = self._plans.unlocked(self._plans.plan(plan_id))
            case = self._plans.patients[plan.patient_uid]
            if not case.has(roi):
                raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} is not in patient {plan.patient_uid}; "
                                                  f"it has {[s.name for s in case.structures]}")
            if roi not in plan.model.rois:
                raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} has no voxels")
            if type not in engine.CATALOGUE:
                raise PhoenixError(E.UNKNOWN_OBJECTIVE_TYPE, f"objective type {type!r} is not in the catalogue "
                                                             f"{list(engine.CATALOGUE)}")
            names = engine.CATALOGUE[type]
            unknown = sorted(set(parameters) - set(names))
            missing = [n for n in names if n not in parameters]
            if unknown or missing:
                raise PhoenixError(E.UNKNOWN_PARAMETER, f"{type} takes parameters {list(names)}; "
                                                        f"unknown {unknown}, missing {missing}")
            params = {n: self._check_value(n, parameters[n]) for n in names}
            obj = ObjectiveRecord(self._new_id("OBJ"), plan_id, roi, type, params)
            plan.objectives[obj.obj_id] = obj
            self._plans.objectives[obj.obj_id] = obj
            return obj.obj_id

    def set_objective_parameter(self, obj_id: str, name: str, value: float) -> None:
        with self._lock:
            obj = self._plans.objective(obj_id)
            self._plans.unlocked(self._plans.plan(obj.plan_id))
            if name not in obj.params:
                raise PhoenixError(E.UNKNOWN_PARAMETER, f"{obj.type} objective {obj_id} has parameters "
                                                        f"{list(obj.params)}, not {name!r}")
            obj.params[name] = self._check_value(name, value)

    def remove_objective(self, obj_id: str) -> None:
        with self._lock:
            obj = self._plans.objective(obj_id)
            plan = self._plans.unlocked(self._plans.plan(obj.plan_id))
            del plan.objectives[obj_id]
            del self._plans.objectives[obj_id]

    def list_objectives(self, plan_id: str) -> list[ObjectiveInfo]:
        with self._lock:
            plan = self._plans.plan(plan_id)
            return [ObjectiveInfo(o.obj_id, plan_id, o.roi, o.type, dict(o.params), o.last_value)
                    for o in plan.objectives.values()]

    # -- jobs
    def submit_optimization(self, plan_id: str, max_iterations: int = 200, tolerance: float | None = 1e-9) -> str:
        self._check_up()
        if not 1 <= int(max_iterations) <= 100_000:
            raise PhoenixError(E.OUT_OF_RANGE, f"max_iterations {max_iterations} outside [1, 100000]")
        with self._lock:
            plan = self._plans.unlocked(self._plans.plan(plan_id))
            if not plan.objectives:
                raise PhoenixError(E.INVALID_PLAN, f"plan {plan_id} has no objectives; add_objective() first")
            slot = self._jobs.reserve_slot()
            terms = [engine.ObjectiveTerm(o.roi, o.type, tuple(o.params.items())) for o in plan.objectives.values()]
            payload = {"influence": str(plan.influence_path), "rois": str(plan.rois_path), "terms": terms,
                       "fractions": plan.fractions, "rx_gy": plan.prescription_gy, "target": plan.targets[0],
                       "x0": plan.weights, "max_iterations": int(max_iterations), "tolerance": tolerance,
                       "obj_ids": list(plan.objectives)}
            job = self._jobs.submit(self._new_id("JOB"), plan_id, slot, payload, int(max_iterations))
            plan.active_job = job.job_id
        self._jobs.watch(job)
        return job.job_id

    def job_status(self, job_id: str) -> JobStatus:
        return self._jobs.status(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        return self._jobs.wait(job_id, timeout_s)

    def cancel(self, job_id: str) -> JobStatus:
        return self._jobs.cancel(job_id)

    # -- results
    def get_dose(self, plan_id: str, kind: str = "RBE") -> np.ndarray:
        kind = str(kind).upper()
        if kind not in ("RBE", "PHYSICAL"):
            raise PhoenixError(E.UNKNOWN_PARAMETER, f"dose kind {kind!r}: use 'RBE' or 'PHYSICAL'")
        with self._lock:
            plan = self._plans.with_result(plan_id)
            if not plan.dose:
                r = plan.result
                plan.dose["RBE"], plan.dose["PHYSICAL"] = plan.model.dose_on_ct(r["dw"], r["hw"], plan.fractions)
            return plan.dose[kind].copy()

    def get_spots(self, plan_id: str) -> list[np.ndarray]:
        """Per field: (n, 4) x_b, y_b (mm, isocentre plane), energy (MeV/u), weight (10⁶ ions per fraction)."""
        with self._lock:
            plan = self._plans.plan(plan_id)
            w = plan.weights if plan.weights is not None else np.zeros(sum(len(s) for s in plan.spots))
            out, start = [], 0
            for s in plan.spots:
                out.append(np.column_stack([s, w[start:start + len(s)]]))
                start += len(s)
            return out

    def export_dvh(self, plan_id: str, roi: str, kind: str = "RBE", bin_gy: float = 0.1) -> list[tuple[float, float]]:
        plan = self._plans.plan(plan_id)
        case = self._plans.patients[plan.patient_uid]
        if not case.has(roi):
            raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} is not in patient {plan.patient_uid}")
        mask = case.structure(roi).voxels
        if not mask.any():
            raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} has no voxels")
        h = dvh_mod.dvh(self.get_dose(plan_id, kind), mask, bin_gy=bin_gy)
        return [(float(d), float(v)) for d, v in zip(h.dose_gy, h.volume_percent)]
