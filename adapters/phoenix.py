"""PHOENIX (carbon ions, LQ RBE, PBS; seed 003, SPEC §3.1–§3.3) behind the TPS protocol.

A thin translation onto the vendor-style API of ``phoenix_api``. The adapter is a client of the
TPS's wire API (HTTP/JSON, ``docs/phoenix_api.md``): of the server at ``url`` (or
``$RTAUTOPLAN_PHOENIX_URL``), or, with neither, of a ``phoenix-server`` process it starts on the
loopback and stops at ``close()``. ``server=`` takes any object with ``connect(user)``: an
in-process ``PhoenixServer`` (tests), a ``RemoteServer`` or ``LocalServerProcess`` shared by
several adapters (parallel data workers).

* ``prepare(case, beams)``: connect, import the patient (the in-memory Case), create a plan with
  one field per beam (gantry, couch; default 45° and 315°), the case's prescription, and spots over
  every CTV of the case (``spot_targets``: all prescription levels, highest Rx first; the
  prescription's targets when the case has no CTV).
* ``optimize(objectives)``: sync the plan's objective catalogue to ``objectives`` — the same
  (structure, kind) sequence as last time only has its parameters set (``set_objective_parameter``),
  a different one is rebuilt — then submit a job, wait, read the RBE-weighted dose
  (``Dose(kind="EFFECTIVE")``). The server warm-starts from the plan's previous spot weights.
* ``plan()``: beams, spot weights per field (10⁶ ions per fraction), the last dose.

Objective mapping (Table A1): DMAX → Max(obj_value = dose_gy), DMIN → Min, UNIFORM → Uniform,
DVH_MIN → DVHmin(Dose = dose_gy, Volume = 100·volume %), weight → weight. DMEAN and DV_MAX are
not in the catalogue: ``unsupported="error"`` (default) raises ValueError; ``"skip"`` drops them
with a warning; ``"max"`` maps DMEAN to a Max objective at the same dose (a stricter surrogate).

Vendor errors become ValueError (bad request: PHX-11xx/20xx/21xx, unknown job) or RuntimeError
(system state: locked, failed job, timeout, …), with the PHX code first in the message.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Sequence

from rtautoplan.adapters.phoenix_api import FieldSpec, PhoenixError, PhoenixServer
from rtautoplan.adapters.phoenix_api.client import LocalServerProcess, RemoteServer
from rtautoplan.adapters.phoenix_api.errors import REQUEST_ERRORS
from rtautoplan.case import Case, Role
from rtautoplan.plan import Beam, Dose, Modality, Objective, ObjectiveKind, Plan

log = logging.getLogger(__name__)

CATALOGUE_TYPE = {
    ObjectiveKind.DMAX: "Max",
    ObjectiveKind.DMIN: "Min",
    ObjectiveKind.UNIFORM: "Uniform",
    ObjectiveKind.DVH_MIN: "DVHmin",
}


def spot_targets(case: Case) -> tuple[str, ...] | None:
    """The CTVs with voxels, highest Rx first (seed 003 plans CTVs, SPEC §3.1); None (the server's
    default: the prescription's targets) when the case has none."""
    ctvs = [s for s in case.by_role(Role.CTV) if s.voxels.any()]
    return tuple(s.name for s in sorted(ctvs, key=lambda s: -(s.rx_gy or 0.0))) or None


def _translate(error: PhoenixError) -> Exception:
    cls = ValueError if error.code in REQUEST_ERRORS else RuntimeError
    out = cls(f"phoenix: {error}")
    out.code = error.code
    return out


class PhoenixAdapter:
    """Carbon-ion plans on a PHOENIX server.

    server: a shared server (``PhoenixServer``, ``RemoteServer``, ``LocalServerProcess``: several
    adapters, e.g. parallel data workers, then optimise in parallel on its pool). url: a running
    ``phoenix-server`` (default ``$RTAUTOPLAN_PHOENIX_URL``). Neither: the adapter starts its own
    server process with ``workers`` optimisation processes.
    max_iterations, timeout_s: per optimisation job. unsupported: what to do with DMEAN / DV_MAX
    objectives ("error", "skip", "max"; module docstring). server_options: passed to a server the
    adapter starts (dose_grid_mm, spot_spacing_mm, …).
    """

    name = "phoenix"
    modality = Modality.CARBON

    def __init__(self, server=None, workers: int = 1, user: str = "rtautoplan",
                 max_iterations: int = 200, timeout_s: float = 600.0, unsupported: str = "error",
                 url: str | None = None, **server_options):
        if unsupported not in ("error", "skip", "max"):
            raise ValueError(f"unsupported must be 'error', 'skip' or 'max', not {unsupported!r}")
        unknown = sorted(set(server_options) - set(inspect.signature(PhoenixServer).parameters))
        if unknown:  # the server starts later, in prepare(): refuse its bad options now
            raise TypeError(f"PhoenixServer takes no option {', '.join(unknown)}")
        url = url or (os.environ.get("RTAUTOPLAN_PHOENIX_URL") if server is None else None)
        if server is None and url:
            server = RemoteServer(url, timeout_s=timeout_s)
        self._server, self._own = server, server is None
        self._workers, self._server_options = workers, server_options
        self.user, self.max_iterations, self.timeout_s, self.unsupported = user, max_iterations, timeout_s, unsupported
        self._session = None
        self._case: Case | None = None
        self._beams: tuple[Beam, ...] = ()
        self._plan_id: str | None = None
        self._catalogue: list[tuple[str, str, str]] = []  # (obj_id, roi, type) in order
        self._plan: Plan | None = None

    # -- TPS protocol
    def prepare(self, case: Case, beams: Sequence[Beam] | None = None) -> None:
        if self._server is None:
            self._server = LocalServerProcess(workers=self._workers, **self._server_options)
        try:
            if self._session is None:
                self._session = self._server.connect(self.user)
            if self._plan_id is not None:  # this adapter's previous plan: a server that trains for hours stays bounded
                self._session.delete_plan(self._plan_id)
                self._plan_id = None
            patient = self._session.import_patient(case)
            if beams:
                fields = [FieldSpec(b.gantry_deg, b.couch_deg, b.name) for b in beams]
            else:
                fields = None
            self._plan_id = self._session.create_plan(patient, f"{case.case_id}-auto", fields=fields, rbe_model="LQ",
                                                      technique="PBS", prescription_gy=case.prescription.rx_max,
                                                      fractions=case.prescription.fractions,
                                                      target_roi=spot_targets(case))
            info = self._session.plan_info(self._plan_id)
        except PhoenixError as error:
            raise _translate(error) from error
        self._case = case
        self._beams = tuple(Beam(f.name or f"C{i + 1}", f.gantry_deg, info.isocenter_mm, f.couch_deg, modality=Modality.CARBON)
                            for i, f in enumerate(info.fields))
        self._catalogue, self._plan = [], None

    def optimize(self, objectives: Sequence[Objective]) -> Dose:
        if self._plan_id is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before optimize()")
        wanted = self._wanted(objectives)
        s = self._session
        try:
            if [(roi, typ) for roi, typ, _ in wanted] == [(roi, typ) for _, roi, typ in self._catalogue]:
                for (obj_id, _, _), (_, _, params) in zip(self._catalogue, wanted):
                    for name, value in params.items():
                        s.set_objective_parameter(obj_id, name, value)
            else:
                for obj_id, _, _ in self._catalogue:
                    s.remove_objective(obj_id)
                self._catalogue = [(s.add_objective(self._plan_id, roi, typ, **params), roi, typ)
                                   for roi, typ, params in wanted]
            job = s.submit_optimization(self._plan_id, max_iterations=self.max_iterations)
            s.wait(job, timeout_s=self.timeout_s)
            gy = s.get_dose(self._plan_id, kind="RBE")
            spots = s.get_spots(self._plan_id)
        except PhoenixError as error:
            raise _translate(error) from error
        dose = Dose(self._case.grid, gy, kind="EFFECTIVE")
        weights = tuple(f[:, 3].copy() for f in spots)
        self._plan = Plan(self._case.case_id, self.modality, self._beams, tuple(objectives), weights, dose, self.name,
                          tuple(f[:, :3].copy() for f in spots))
        return dose

    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{self.name}: no plan yet; call prepare() and optimize() first")
        return self._plan

    # -- extras
    @property
    def session(self):
        """The vendor session (for DVH export, physical dose, spots …)."""
        return self._session

    @property
    def plan_id(self) -> str | None:
        return self._plan_id

    def close(self) -> None:
        """Close the session, and the server if this adapter started it."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._own and self._server is not None:
            self._server.shutdown()
            self._server = None

    def _wanted(self, objectives: Sequence[Objective]) -> list[tuple[str, str, dict]]:
        out = []
        for o in objectives:
            kind = ObjectiveKind(o.kind)
            if kind not in CATALOGUE_TYPE:
                if self.unsupported == "skip":
                    log.warning("%s: %s objective on %s is not in the PHOENIX catalogue; skipped", self.name,
                                kind.value, o.structure)
                    continue
                if self.unsupported == "max" and kind is ObjectiveKind.DMEAN:
                    kind = ObjectiveKind.DMAX
                else:
                    raise ValueError(f"{self.name}: objective {kind.value} on {o.structure} is not in the PHOENIX "
                                     f"catalogue (Max, Min, Uniform, DVHmin); pass unsupported='skip' or 'max'")
            typ = CATALOGUE_TYPE[kind]
            if typ == "DVHmin":
                if o.volume is None:
                    raise ValueError(f"{self.name}: DVHmin on {o.structure} needs a volume (fraction 0–1)")
                params = {"Dose": o.dose_gy, "Volume": 100.0 * o.volume, "weight": o.weight}
            else:
                params = {"obj_value": o.dose_gy, "weight": o.weight}
            out.append((o.structure, typ, params))
        if not out:
            raise ValueError(f"{self.name}: no objective in the PHOENIX catalogue to optimise")
        return out
