"""The records the PHOENIX API hands to its clients: field definitions and the (frozen) answers
about ROIs, objectives, plans and jobs."""

from __future__ import annotations

from dataclasses import dataclass


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
    target_roi: str  # the first target (it scales the starting weights)
    n_spots: tuple[int, ...]
    optimised: bool
    locked: bool
    isocenter_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # target centroid, patient coordinates
    target_rois: tuple[str, ...] = ()  # every ROI the spots cover


@dataclass(frozen=True)
class JobStatus:
    """state: QUEUED, RUNNING, DONE, FAILED or CANCELLED; progress 0–1 (iterations / max_iterations,
    1 when DONE); error: the failure (FAILED) with ``error_code``; worker_pid: the process that runs
    (or ran) the job."""

    job_id: str
    plan_id: str
    state: str
    progress: float
    error: str | None = None
    error_code: str | None = None
    iterations: int | None = None
    objective_value: float | None = None
    worker_pid: int | None = None
