"""The benchmark problem shared by the engine and ion benchmarks: case, objectives, beams, start, quality."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rtautoplan.case import Role
from rtautoplan.dicom.read import read_case
from rtautoplan.dvh import d98, dmax
from rtautoplan.physics.dij import beams_for
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules

from common import ROOT

SIZES = {"small": (2, 4, 4), "standard": (1, 2, 2)}
N_BEAMS = 7


def problem(name: str, factor):
    """sample_data/<name> after ``apply_rules``, the seed-002 objectives (rng 0; hn01 cord Dmax ≤ 40 Gy)
    and ``N_BEAMS`` equispaced beams."""
    case = apply_rules(read_case(ROOT / "sample_data" / name))
    objectives = objectives_for(case, np.random.default_rng(0))
    if name == "hn01":
        objectives = tuple(replace(o, dose_gy=min(o.dose_gy, 40.0)) if o.structure == "SpinalCord" else o
                           for o in objectives)
    beams = beams_for(case, n=N_BEAMS)
    return case, tuple(objectives), beams


def start_point(case, dij, rows):
    """Uniform fluence scaled to a mean dose of Rx_max on the highest-dose PTV."""
    ptv = max((s for s in case.by_role(Role.PTV) if s.rx_gy), key=lambda s: s.rx_gy)
    x0 = np.ones(dij.n_beamlets)
    sub = dij.matrix[dij.rows_of(ptv.voxels)]
    return x0 * case.prescription.rx_max / float(np.mean(sub @ x0.astype(np.float32)))


def tighter_objectives(case, objectives):
    """The first adjustable OAR objective with its limit lowered by 20 %, and a label."""
    i = next(i for i, o in enumerate(objectives) if o.adjustable and case.structure(o.structure).role is Role.OAR)
    out = list(objectives)
    out[i] = replace(objectives[i], dose_gy=0.8 * objectives[i].dose_gy)
    return tuple(out), f"{objectives[i].structure} {objectives[i].kind.name} {objectives[i].dose_gy:.1f} → {out[i].dose_gy:.1f}"


def quality(case, gy, levels=None) -> dict:
    """D98 (Gy) of every CTV level (all, or the first ``levels``) on its full mask and the SpinalCord
    Dmax (Gy) of a CT-grid dose."""
    out = {lv.target: float(d98(gy, case.structure(lv.target).mask)) for lv in case.prescription.levels[:levels]}
    cord = [s for s in case.structures if s.name == "SpinalCord"]
    if cord:
        out["cord Dmax"] = float(dmax(gy, cord[0].mask))
    return out


def quality_cell(q: dict) -> str:
    """``quality`` as "D98 7000 69.8, …, cord Dmax 39.1"."""
    return ", ".join(f"{k.replace('CTV_', 'D98 ')} {v:.1f}" for k, v in q.items())
