"""Acceptance: a 7-beam photon IMRT plan on sample_data/hn01 from the seed-002 initial objectives.

Pipeline: read_case → apply_rules → objectives_for (rng seed 0) → 7 equispaced beams at the
centroid of PTV_7000 → dose-influence matrix on a dose grid coarser by 2 in-plane
(3 × 5 × 5 mm) → L-BFGS-B (200 iterations, memory 10) from a uniform fluence.

One change to the objectives: the SpinalCord Dmax limit is min(rule-11 limit, 40 Gy) — the
clinical 45 Gy cord tolerance less a 5 Gy planning margin — because rule 11 draws the initial
limit from a dose estimate (here ≈ 49 Gy), above the tolerance the test checks.

Evaluation: the dose is interpolated (trilinear) back onto the CT grid; D98 on each CTV's
planning voxels (``Structure.voxels``, after the overlap rules) and on its full mask, Dmax on
the SpinalCord mask.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtautoplan.dicom.read import read_case
from rtautoplan.dvh import d98, dmax
from rtautoplan.optimize.lbfgs import solve_lbfgs
from rtautoplan.optimize.objectives import plan_objective
from rtautoplan.physics.dij import beams_for, dij_cached, dose_to_grid
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules

HN01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"
CORD_LIMIT_GY = 40.0
CORD_TOLERANCE_GY = 45.0


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    if not HN01.exists():
        pytest.skip("sample_data/hn01 is not present")
    case = apply_rules(read_case(HN01))
    objectives = tuple(replace(o, dose_gy=min(o.dose_gy, CORD_LIMIT_GY)) if o.structure == "SpinalCord" else o
                       for o in objectives_for(case, np.random.default_rng(0)))
    beams = beams_for(case, n=7)
    dij = dij_cached(case, beams, cache_dir=tmp_path_factory.mktemp("dij"), dose_grid_factor=(1, 2, 2))
    rows = {o.structure: dij.rows_of(case.structure(o.structure).voxels) for o in objectives}
    f = plan_objective(dij.matrix, objectives, rows)
    x0 = np.ones(dij.n_beamlets, np.float32)  # uniform fluence, mean PTV_7000 dose = Rx_max
    x0 *= case.prescription.rx_max / float(np.mean(dij.matrix[rows["PTV_7000"]] @ x0))
    solution = solve_lbfgs(f, x0, max_iter=200)
    dose = dose_to_grid(dij.dose_array(solution.x), dij.dose_grid, case.grid)
    return case, dij, solution, dose


def test_hn01_plan_covers_ctvs_and_spares_cord(planned):
    case, dij, solution, dose = planned
    assert 7 <= len(dij.beam_slices) <= 9
    cord = dmax(dose, case.structure("SpinalCord").mask)
    report = []
    for level in case.prescription.levels:
        ctv = case.structure(level.target)
        on_planning, on_mask = d98(dose, ctv.voxels), d98(dose, ctv.mask)
        report.append(f"{ctv.name}: D98 {on_planning:.2f} Gy on planning voxels, {on_mask:.2f} Gy on the full "
                      f"mask (need ≥ {0.95 * level.dose_gy:.2f} = 95 % of {level.dose_gy:g} Gy)")
        assert on_planning >= 0.95 * level.dose_gy, "; ".join(report) + f"; cord Dmax {cord:.2f} Gy"
        assert on_mask >= 0.95 * level.dose_gy, "; ".join(report) + f"; cord Dmax {cord:.2f} Gy"
    assert cord < CORD_TOLERANCE_GY, f"SpinalCord Dmax {cord:.2f} Gy ≥ {CORD_TOLERANCE_GY} Gy; " + "; ".join(report)
    assert np.all(solution.x >= 0)
