"""The client side of the PHOENIX API: a user's session on a server.

Every call goes to the server the session was opened on; a closed session refuses calls with
PHX-1001. Sessions are cheap: open one per user or per worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rtautoplan.case import Case
from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.server import FieldSpec, JobStatus, ObjectiveInfo, PlanInfo, RoiInfo


class Session:
    """A user's connection to a ``PhoenixServer`` (obtained from ``server.connect(user)``)."""

    def __init__(self, server, user: str):
        self._server, self.user, self._open = server, user, True

    def _s(self):
        if not self._open:
            raise PhoenixError(E.SESSION_CLOSED, f"session of {self.user!r} is closed; connect() again")
        self._server._check_up()
        return self._server

    def close(self) -> None:
        self._open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # patients
    def import_patient(self, source: str | Path | Case) -> str:
        """Import a patient from a DICOM folder (CT series + RTSTRUCT [+ prescription.json]) or an
        in-memory Case; returns its patient UID."""
        return self._s().import_patient(source)

    def list_rois(self, patient_uid: str) -> list[RoiInfo]:
        return self._s().list_rois(patient_uid)

    # plans
    def create_plan(self, patient_uid: str, label: str, fields=None, rbe_model: str = "LQ", technique: str = "PBS",
                    prescription_gy: float | None = None, fractions: int | None = None,
                    target_roi: str | Sequence[str] | None = None) -> str:
        """Create a plan and compute its dose influence (fields default to 45° and 315°). target_roi:
        the ROI or ROIs the spots cover (default: every prescription level's target in the patient)."""
        return self._s().create_plan(patient_uid, label, fields, rbe_model, technique, prescription_gy, fractions,
                                     target_roi)

    def plan_info(self, plan_id: str) -> PlanInfo:
        return self._s().plan_info(plan_id)

    def delete_plan(self, plan_id: str) -> None:
        """Delete a plan with its objectives and dose (refused with PHX-2201 while it is optimised)."""
        self._s().delete_plan(plan_id)

    # objectives
    def add_objective(self, plan_id: str, roi: str, type: str, **parameters: float) -> str:
        return self._s().add_objective(plan_id, roi, type, **parameters)

    def set_objective_parameter(self, obj_id: str, name: str, value: float) -> None:
        self._s().set_objective_parameter(obj_id, name, value)

    def remove_objective(self, obj_id: str) -> None:
        self._s().remove_objective(obj_id)

    def list_objectives(self, plan_id: str) -> list[ObjectiveInfo]:
        return self._s().list_objectives(plan_id)

    # jobs
    def submit_optimization(self, plan_id: str, max_iterations: int = 200, tolerance: float | None = 1e-9) -> str:
        return self._s().submit_optimization(plan_id, max_iterations, tolerance)

    def job_status(self, job_id: str) -> JobStatus:
        return self._s().job_status(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        return self._s().wait(job_id, timeout_s)

    def cancel(self, job_id: str) -> JobStatus:
        return self._s().cancel(job_id)

    # results
    def get_dose(self, plan_id: str, kind: str = "RBE") -> np.ndarray:
        return self._s().get_dose(plan_id, kind)

    def get_spots(self, plan_id: str) -> list[np.ndarray]:
        return self._s().get_spots(plan_id)

    def export_dvh(self, plan_id: str, roi: str, kind: str = "RBE", bin_gy: float = 0.1) -> list[tuple[float, float]]:
        return self._s().export_dvh(plan_id, roi, kind, bin_gy)


__all__ = ["Session", "FieldSpec"]
