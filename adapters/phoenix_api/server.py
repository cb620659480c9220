"""The PHOENIX simulator server: patients, plans, objectives, and a pool of optimisation workers.

State lives in the server (one process); optimisations run in a ``ProcessPoolExecutor`` (fork on
Linux). What a worker needs is shipped once per plan geometry, not once per job: the dose
influence matrices and the ROI objective points are written to the server's store as
content-addressed files when a plan is created, and each worker loads a file the first time a job
uses it and keeps it (``_WORKER_CACHE``, the last ``_WORKER_CACHE_SIZE`` geometries). A job's
message is then small: file names, the objective catalogue, the warm-start weights. Job progress
and cancellation go through shared-memory slots (``multiprocessing.RawArray``) handed to the
workers when they start.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import pickle
import shutil
import threading
import traceback
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import threadpoolctl

from rtautoplan import dvh as dvh_mod
from rtautoplan.case import Case
from rtautoplan.adapters.phoenix_api import engine
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError

N_SLOTS = 1024
_WORKER_CACHE_SIZE = 4


# ------------------------------------------------------------------------------ public records


@dataclass(frozen=True)
class FieldSpec:
    """One PBS field: gantry and couch angles (degrees, IEC 61217)."""

    gantry_deg: float
    couch_deg: float = 0.0
    name: str = ""


DEFAULT_FIELDS = (FieldSpec(45.0, name="F1"), FieldSpec(315.0, name="F2"))  # seed 003, SPEC §3.1


@dataclass(frozen=True)
class RoiInfo:
    name: str
    type: str  # EXTERNAL, CTV, PTV, GTV, ORGAN, …
    volume_cc: float


@dataclass(frozen=True)
class ObjectiveInfo:
    obj_id: str
    plan_id: str
    roi: str
    type: str
    parameters: dict
    last_value: float | None = None  # its term of the objective function after the last optimisation


@dataclass(frozen=True)
class PlanInfo:
    plan_id: str
    patient_uid: str
    label: str
    fields: tuple[FieldSpec, ...]
    rbe_model: str
    technique: str
    prescription_gy: float
    fractions: int
    target_roi: str
    n_spots: tuple[int, ...]
    optimised: bool
    locked: bool
    isocenter_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # target centroid, patient coordinates


@dataclass(frozen=True)
class JobStatus:
    """state: QUEUED, RUNNING, DONE, FAILED or CANCELLED; progress 0–1 (iterations / max_iterations,
    1 when DONE); error: the failure (FAILED) with ``error_code``."""

    job_id: str
    plan_id: str
    state: str
    progress: float
    error: str | None = None
    error_code: str | None = None
    iterations: int | None = None
    objective_value: float | None = None


# ------------------------------------------------------------------------------------ worker

_SHARED: dict = {}
_WORKER_CACHE: dict = {}


def _init_worker(progress, started, cancel) -> None:
    # One BLAS thread per worker: the pool already runs one job per core, and a forked worker would
    # otherwise keep the parent's BLAS thread count and oversubscribe the CPUs (4 jobs on 2 cores
    # then run slower in parallel than one after another).
    threadpoolctl.threadpool_limits(1)
    _SHARED.update(progress=progress, started=started, cancel=cancel)


def _worker_data(influence_path: str, rois_path: str):
    key = (influence_path, rois_path)
    if key not in _WORKER_CACHE:
        try:
            influence = engine.Influence.load(Path(influence_path))
            with open(rois_path, "rb") as f:
                rois = pickle.load(f)
        except Exception as error:  # noqa: BLE001 - reported as the job's failure
            raise RuntimeError(f"dose engine data missing or corrupt ({Path(influence_path).name}): "
                               f"{type(error).__name__}: {error}") from None
        while len(_WORKER_CACHE) >= _WORKER_CACHE_SIZE:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = (influence, rois, {})
    return _WORKER_CACHE[key]


def _run_job(slot: int, job: dict) -> dict:
    """Optimise one plan in a worker; returns weights and the dose-grid products D·w, H·w."""
    progress, started, cancel = _SHARED.get("progress"), _SHARED.get("started"), _SHARED.get("cancel")
    if started is not None:
        started[slot] = 1
    if cancel is not None and cancel[slot]:
        raise engine.Cancelled()
    influence, rois, roi_cache = _worker_data(job["influence"], job["rois"])
    problem = engine.Problem(influence, rois, job["terms"], job["fractions"], job["rx_gy"], roi_cache)
    x0 = job["x0"]
    if x0 is None or len(x0) != influence.d.shape[1]:
        x0 = engine.initial_weights(influence, rois[job["target"]], job["fractions"], job["rx_gy"])

    def report(fraction):
        if progress is not None:
            progress[slot] = fraction

    out = engine.optimise(problem, x0, job["max_iterations"], job["tolerance"], report,
                          (lambda: bool(cancel[slot])) if cancel is not None else None)
    x = out["x"]
    out["dw"] = (influence.d @ x).astype(np.float32)
    out["hw"] = (influence.h @ x).astype(np.float32)
    out["term_values"] = problem.values(x)
    return out


# ------------------------------------------------------------------------------------ server


@dataclass(eq=False)
class _Objective:
    obj_id: str
    plan_id: str
    roi: str
    type: str
    params: dict
    last_value: float | None = None


@dataclass(eq=False)
class _Plan:
    plan_id: str
    patient_uid: str
    label: str
    fields: tuple[FieldSpec, ...]
    rbe_model: str
    technique: str
    prescription_gy: float
    fractions: int
    target_roi: str
    model: engine.DoseGridModel
    influence_path: Path
    rois_path: Path
    spots: tuple[np.ndarray, ...]
    objectives: dict = field(default_factory=dict)  # obj_id → _Objective, in insertion order
    weights: np.ndarray | None = None
    result: dict | None = None
    dose: dict = field(default_factory=dict)  # kind → CT-grid array of the last result
    active_job: str | None = None


@dataclass(eq=False)
class _Job:
    job_id: str
    plan_id: str
    slot: int
    future: object
    max_iterations: int
    state: str | None = None  # final state once finalised
    error: str | None = None
    error_code: str | None = None
    result: dict | None = None
    obj_ids: list = field(default_factory=list)
    traceback: str | None = None


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
        self._patients: dict[str, Case] = {}
        self._plans: dict[str, _Plan] = {}
        self._objectives: dict[str, _Objective] = {}
        self._jobs: dict[str, _Job] = {}
        self._models: dict = {}
        self._progress = mp.RawArray("d", N_SLOTS)
        self._started = mp.RawArray("b", N_SLOTS)
        self._cancel = mp.RawArray("b", N_SLOTS)
        self._free_slots = list(range(N_SLOTS))
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context(method),
                                         initializer=_init_worker, initargs=(self._progress, self._started, self._cancel))
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
            for job in self._jobs.values():
                if job.state is None:
                    self._cancel[job.slot] = 1
        self._pool.shutdown(wait=True, cancel_futures=True)
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
            self._patients[uid] = case
        return uid

    def _patient(self, uid: str) -> Case:
        try:
            return self._patients[uid]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PATIENT, f"no patient {uid!r}; import_patient() first") from None

    def list_rois(self, patient_uid: str) -> list[RoiInfo]:
        case = self._patient(patient_uid)
        return [RoiInfo(s.name, s.role.dicom_type, s.volume_cm3(case.grid)) for s in case.structures]

    # -- plans
    def create_plan(self, patient_uid: str, label: str, fields=None, rbe_model: str = "LQ", technique: str = "PBS",
                    prescription_gy: float | None = None, fractions: int | None = None,
                    target_roi: str | None = None) -> str:
        self._check_up()
        case = self._patient(patient_uid)
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
        target_roi = target_roi or case.prescription.levels[0].target
        if not case.has(target_roi):
            raise PhoenixError(E.UNKNOWN_ROI, f"target ROI {target_roi!r} is not in patient {patient_uid}")
        if not case.structure(target_roi).voxels.any():
            raise PhoenixError(E.INVALID_PLAN, f"target ROI {target_roi!r} is empty")
        rx = float(prescription_gy if prescription_gy is not None else case.prescription.rx_max)
        n_fx = int(fractions if fractions is not None else case.prescription.fractions)
        if not 0.0 < rx <= engine.BOUNDS["obj_value"][1]:
            raise PhoenixError(E.OUT_OF_RANGE, f"prescription {rx} Gy(RBE) outside (0, {engine.BOUNDS['obj_value'][1]:g}]")
        if not 1 <= n_fx <= 60:
            raise PhoenixError(E.OUT_OF_RANGE, f"fractions {n_fx} outside [1, 60]")
        key = (patient_uid, target_roi)
        with self._lock:
            model = self._models.get(key)
        if model is None:
            model = engine.DoseGridModel.from_case(case, target_roi, self.dose_grid_mm)
            with self._lock:
                self._models[key] = model
        geometry = [(f.gantry_deg, f.couch_deg) for f in fields]
        influence_path, influence = engine.influence_cached(model, geometry, self.store, **self.spot_options)
        rois_path = influence_path.with_name(f"rois-{model.key([], {})}.pkl")
        if not rois_path.is_file():
            tmp = rois_path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(model.rois, f, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(rois_path)
        if influence is not None:
            spots = influence.spots
        else:
            with np.load(influence_path) as z:
                spots = tuple(np.split(z["spots"], np.cumsum(z["sizes"])[:-1]))
        with self._lock:
            plan_id = self._new_id("PLN")
            self._plans[plan_id] = _Plan(plan_id, patient_uid, str(label), fields, "LQ", "PBS", rx, n_fx, target_roi,
                                         model, influence_path, rois_path, spots)
        return plan_id

    def _plan(self, plan_id: str) -> _Plan:
        try:
            return self._plans[plan_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PLAN, f"no plan {plan_id!r}") from None

    def _unlocked(self, plan: _Plan) -> _Plan:
        if plan.active_job is not None:
            raise PhoenixError(E.PLAN_LOCKED, f"plan {plan.plan_id} is being optimised by job {plan.active_job}; "
                                              "wait for it or cancel it first")
        return plan

    def plan_info(self, plan_id: str) -> PlanInfo:
        p = self._plan(plan_id)
        return PlanInfo(p.plan_id, p.patient_uid, p.label, p.fields, p.rbe_model, p.technique, p.prescription_gy,
                        p.fractions, p.target_roi, tuple(len(s) for s in p.spots), p.result is not None,
                        p.active_job is not None, p.model.isocenter)

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
            plan = self._unlocked(self._plan(plan_id))
            case = self._patients[plan.patient_uid]
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
            obj = _Objective(self._new_id("OBJ"), plan_id, roi, type, params)
            plan.objectives[obj.obj_id] = obj
            self._objectives[obj.obj_id] = obj
            return obj.obj_id

    def _objective(self, obj_id: str) -> _Objective:
        try:
            return self._objectives[obj_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_PARAMETER, f"no objective {obj_id!r}") from None

    def set_objective_parameter(self, obj_id: str, name: str, value: float) -> None:
        with self._lock:
            obj = self._objective(obj_id)
            self._unlocked(self._plan(obj.plan_id))
            if name not in obj.params:
                raise PhoenixError(E.UNKNOWN_PARAMETER, f"{obj.type} objective {obj_id} has parameters "
                                                        f"{list(obj.params)}, not {name!r}")
            obj.params[name] = self._check_value(name, value)

    def remove_objective(self, obj_id: str) -> None:
        with self._lock:
            obj = self._objective(obj_id)
            plan = self._unlocked(self._plan(obj.plan_id))
            del plan.objectives[obj_id]
            del self._objectives[obj_id]

    def list_objectives(self, plan_id: str) -> list[ObjectiveInfo]:
        with self._lock:
            plan = self._plan(plan_id)
            return [ObjectiveInfo(o.obj_id, plan_id, o.roi, o.type, dict(o.params), o.last_value)
                    for o in plan.objectives.values()]

    # -- jobs
    def submit_optimization(self, plan_id: str, max_iterations: int = 200, tolerance: float | None = 1e-9) -> str:
        self._check_up()
        if not 1 <= int(max_iterations) <= 100_000:
            raise PhoenixError(E.OUT_OF_RANGE, f"max_iterations {max_iterations} outside [1, 100000]")
        with self._lock:
            plan = self._unlocked(self._plan(plan_id))
            if not plan.objectives:
                raise PhoenixError(E.INVALID_PLAN, f"plan {plan_id} has no objectives; add_objective() first")
            if not self._free_slots:
                raise PhoenixError(E.SERVER_DOWN, f"more than {N_SLOTS} jobs in flight")
            slot = self._free_slots.pop()
            self._progress[slot], self._started[slot], self._cancel[slot] = 0.0, 0, 0
            terms = [engine.ObjectiveTerm(o.roi, o.type, tuple(o.params.items())) for o in plan.objectives.values()]
            payload = {"influence": str(plan.influence_path), "rois": str(plan.rois_path), "terms": terms,
                       "fractions": plan.fractions, "rx_gy": plan.prescription_gy, "target": plan.target_roi,
                       "x0": plan.weights, "max_iterations": int(max_iterations), "tolerance": tolerance,
                       "obj_ids": list(plan.objectives)}
            job_id = self._new_id("JOB")
            future = self._pool.submit(_run_job, slot, payload)
            job = _Job(job_id, plan_id, slot, future, int(max_iterations), obj_ids=payload["obj_ids"])
            self._jobs[job_id] = job
            plan.active_job = job_id
        future.add_done_callback(lambda _f, j=job: self._finalise(j))
        return job_id

    def _finalise(self, job: _Job) -> None:
        """Record the outcome of a finished job and unlock its plan (runs once)."""
        with self._lock:
            if job.state is not None:
                return
            f = job.future
            plan = self._plans[job.plan_id]
            try:
                result = f.result()
            except (CancelledError, engine.Cancelled):
                job.state, job.error_code, job.error = "CANCELLED", E.CANCELLED, f"job {job.job_id} was cancelled"
            except Exception as error:  # noqa: BLE001 - any failure in the worker is the job's failure
                job.state, job.error_code = "FAILED", E.JOB_FAILED
                job.error = f"{type(error).__name__}: {error}"
                job.traceback = "".join(traceback.format_exception(error))
            else:
                job.state, job.result = "DONE", {k: result[k] for k in ("iterations", "value", "message", "seconds")}
                plan.weights, plan.result, plan.dose = result["x"], result, {}
                for obj_id, value in zip(job.obj_ids, result["term_values"]):
                    if obj_id in plan.objectives:
                        plan.objectives[obj_id].last_value = value
            if plan.active_job == job.job_id:
                plan.active_job = None
            self._free_slots.append(job.slot)

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise PhoenixError(E.UNKNOWN_JOB, f"no job {job_id!r}") from None

    def job_status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        if job.state is None and job.future.done():
            self._finalise(job)
        with self._lock:
            if job.state is None:
                state = "RUNNING" if self._started[job.slot] else "QUEUED"
                return JobStatus(job_id, job.plan_id, state, float(self._progress[job.slot]))
            r = job.result or {}
            return JobStatus(job_id, job.plan_id, job.state, 1.0 if job.state == "DONE" else 0.0, job.error,
                             job.error_code, r.get("iterations"), r.get("value"))

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        job = self._job(job_id)
        try:
            job.future.exception(timeout=timeout_s)
        except FutureTimeout:
            raise PhoenixError(E.TIMEOUT, f"job {job_id} not finished after {timeout_s:g} s "
                                          f"(state {self.job_status(job_id).state}); it keeps running") from None
        except CancelledError:
            pass
        status = self.job_status(job_id)
        if status.state in ("FAILED", "CANCELLED"):
            raise PhoenixError(status.error_code, f"job {job_id} (plan {job.plan_id}): {status.error}")
        return status

    def cancel(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        with self._lock:
            if job.state is None and not job.future.cancel():
                self._cancel[job.slot] = 1  # a running job stops at its next iteration
        if job.future.cancelled():
            self._finalise(job)
        return self.job_status(job_id)

    # -- results
    def _result(self, plan_id: str) -> _Plan:
        plan = self._plan(plan_id)
        if plan.result is None:
            raise PhoenixError(E.NO_DOSE, f"plan {plan_id} has no dose yet; run an optimisation first")
        return plan

    def get_dose(self, plan_id: str, kind: str = "RBE") -> np.ndarray:
        kind = str(kind).upper()
        if kind not in ("RBE", "PHYSICAL"):
            raise PhoenixError(E.UNKNOWN_PARAMETER, f"dose kind {kind!r}: use 'RBE' or 'PHYSICAL'")
        with self._lock:
            plan = self._result(plan_id)
            if not plan.dose:
                r = plan.result
                plan.dose["RBE"], plan.dose["PHYSICAL"] = plan.model.dose_on_ct(r["dw"], r["hw"], plan.fractions)
            return plan.dose[kind].copy()

    def get_spots(self, plan_id: str) -> list[np.ndarray]:
        """Per field: (n, 4) x_b, y_b (mm, isocentre plane), energy (MeV/u), weight (10⁶ ions per fraction)."""
        with self._lock:
            plan = self._plan(plan_id)
            w = plan.weights if plan.weights is not None else np.zeros(sum(len(s) for s in plan.spots))
            out, start = [], 0
            for s in plan.spots:
                out.append(np.column_stack([s, w[start:start + len(s)]]))
                start += len(s)
            return out

    def export_dvh(self, plan_id: str, roi: str, kind: str = "RBE", bin_gy: float = 0.1) -> list[tuple[float, float]]:
        plan = self._plan(plan_id)
        case = self._patients[plan.patient_uid]
        if not case.has(roi):
            raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} is not in patient {plan.patient_uid}")
        mask = case.structure(roi).voxels
        if not mask.any():
            raise PhoenixError(E.UNKNOWN_ROI, f"ROI {roi!r} has no voxels")
        h = dvh_mod.dvh(self.get_dose(plan_id, kind), mask, bin_gy=bin_gy)
        return [(float(d), float(v)) for d, v in zip(h.dose_gy, h.volume_percent)]
