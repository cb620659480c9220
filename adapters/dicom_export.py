"""A TPS reached through files: the case and each objective set go out, the dose comes back.

The exchange folder holds one sub-folder per case::

    <exchange>/<case_id>/case/            CT series, RTSTRUCT (input + planning ROIs), prescription.json
    <exchange>/<case_id>/request-0001/    objectives.json (+ beams.json), written by us
    <exchange>/<case_id>/result-0001/     RTDOSE (required), RTPLAN (optional), result.json (last)

We write each file under a temporary name and rename it, and the far side writes ``result.json``
last, so neither side ever reads a half-written file. ``result.json`` is
``{"status": "ok", "weights": [[…per beam…], …]}`` or ``{"status": "error", "message": "…"}``;
without weights there, the RTPLAN's BeamMeterset of each beam is the beam's weight.

``serve(exchange, tps)`` is the far side for any TPS of ours: the tests run it with the in-house
engine standing in for an external system.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from rtautoplan.case import Case
from rtautoplan.dicom.read import write_case
from rtautoplan.dicom.rtdose import read_rtdose, write_rtdose
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.physics.dij import beams_for, dose_to_grid
from rtautoplan.plan import Beam, Dose, Modality, Objective, ObjectiveKind, Plan

RESULT = "result.json"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def objectives_to_json(objectives: Sequence[Objective]) -> list[dict]:
    return [{**asdict(o), "kind": o.kind.value} for o in objectives]


def objectives_from_json(items: list[dict]) -> tuple[Objective, ...]:
    return tuple(Objective(**{**item, "kind": ObjectiveKind(item["kind"])}) for item in items)


def beams_to_json(beams: Sequence[Beam]) -> list[dict]:
    return [{**asdict(b), "modality": b.modality.value} for b in beams]


def beams_from_json(items: list[dict]) -> tuple[Beam, ...]:
    return tuple(Beam(**{**b, "isocenter_mm": tuple(b["isocenter_mm"]), "modality": Modality(b["modality"])})
                 for b in items)


class DicomExport:
    """TPS protocol over an exchange folder. timeout_s: how long ``optimize`` waits for a result."""

    name = "dicom-export"

    def __init__(self, exchange: str | Path, modality: Modality = Modality.PHOTON, timeout_s: float = 600.0,
                 poll_s: float = 0.05, n_beams: int = 7):
        self.exchange, self.modality = Path(exchange), modality
        self.timeout_s, self.poll_s, self.n_beams = timeout_s, poll_s, n_beams
        self._case: Case | None = None
        self._beams: tuple[Beam, ...] = ()
        self._count = 0
        self._plan: Plan | None = None

    @property
    def folder(self) -> Path:
        return self.exchange / self._case.case_id

    def prepare(self, case: Case, beams: Sequence[Beam] | None = None) -> None:
        self._case, self._count, self._plan = case, 0, None
        self._beams = tuple(beams) if beams else beams_for(case, n=self.n_beams, modality=self.modality)
        out = self.folder / "case"
        out.mkdir(parents=True, exist_ok=True)
        write_case(case, out)
        write_rtstruct(case, out / "RS_planning.dcm", label="rtautoplan planning")

    def optimize(self, objectives: Sequence[Objective]) -> Dose:
        if self._case is None:
            raise RuntimeError(f"{self.name}: call prepare(case, beams) before optimize()")
        self._count += 1
        request = self.folder / f"request-{self._count:04d}"
        request.mkdir(parents=True, exist_ok=True)
        _write_json(request / "beams.json", beams_to_json(self._beams))
        _write_json(request / "objectives.json", objectives_to_json(objectives))
        result = self._wait(self.folder / f"result-{self._count:04d}")
        dose = self._read_dose(result)
        self._plan = Plan(self._case.case_id, self.modality, self._beams, tuple(objectives),
                          self._weights(result), dose, self.name)
        return dose

    def plan(self) -> Plan:
        if self._plan is None:
            raise RuntimeError(f"{self.name}: no plan yet; call prepare() and optimize() first")
        return self._plan

    def _wait(self, result: Path) -> Path:
        deadline = time.monotonic() + self.timeout_s
        while not (result / RESULT).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {RESULT} in {result} after {self.timeout_s:g} s; check that "
                                   f"the external TPS watches {self.exchange} and answers each request-NNNN folder")
            time.sleep(self.poll_s)
        status = json.loads((result / RESULT).read_text())
        if status.get("status") != "ok":
            raise RuntimeError(f"{self.name}: the external TPS failed {result.name}: {status.get('message', status)}")
        return result

    def _read_dose(self, result: Path) -> Dose:
        files = sorted(p for p in result.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTDOSE")
        if not files:
            raise RuntimeError(f"{self.name}: {result} has {RESULT} but no RTDOSE; the external TPS must export the dose")
        dose = read_rtdose(files[0])
        gy = dose.gy if dose.grid == self._case.grid else dose_to_grid(dose.gy, dose.grid, self._case.grid)
        return Dose(self._case.grid, np.maximum(gy, 0.0).astype(np.float32), dose.kind)

    def _weights(self, result: Path) -> tuple[np.ndarray, ...]:
        status = json.loads((result / RESULT).read_text())
        if "weights" in status:
            return tuple(np.asarray(w, float) for w in status["weights"])
        for path in result.glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.Modality in ("RTPLAN", "RTIONPLAN"):
                beams = ds.FractionGroupSequence[0].ReferencedBeamSequence
                return tuple(np.array([float(b.BeamMeterset)]) for b in beams)
        raise RuntimeError(f"{self.name}: {result} gives no beam weights (neither {RESULT} 'weights' nor an RTPLAN)")


def serve(exchange: str | Path, case: Case, tps, stop=lambda: False, poll_s: float = 0.05) -> int:
    """The far side: answer every request of ``case`` in ``exchange`` with ``tps`` until ``stop()``.

    Returns the number of requests answered. A failing optimisation is answered with an error
    result, never left unanswered.
    """
    folder = Path(exchange) / case.case_id
    answered, prepared_beams = 0, None
    while not stop():
        pending = sorted(p for p in folder.glob("request-*") if (p / "objectives.json").exists()
                         and not (folder / p.name.replace("request", "result") / RESULT).exists())
        if not pending:
            time.sleep(poll_s)
            continue
        request = pending[0]
        result = folder / request.name.replace("request", "result")
        result.mkdir(exist_ok=True)
        try:
            beams = beams_from_json(json.loads((request / "beams.json").read_text()))
            if beams != prepared_beams:
                tps.prepare(case, beams)
                prepared_beams = beams
            dose = tps.optimize(objectives_from_json(json.loads((request / "objectives.json").read_text())))
            write_rtdose(case, dose, result / "RD_result.dcm")
            _write_json(result / RESULT, {"status": "ok", "weights": [w.tolist() for w in tps.plan().weights]})
        except Exception as error:  # noqa: BLE001 - the requester must get an answer, whatever failed
            _write_json(result / RESULT, {"status": "error", "message": f"{type(error).__name__}: {error}"})
        answered += 1
    return answered
