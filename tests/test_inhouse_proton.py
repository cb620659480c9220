"""The in-house proton TPS adapter: TPS conformance, the 3 MU minimum per spot (SPEC §2.1) and,
marked slow, a 3-field IMPT plan on sample_data/hn01.

The fast tests use ``small_case`` (conftest) with 6 mm spot and 4 mm layer spacing to stay quick;
the seed-002 objectives come from ``apply_rules`` + ``objectives_for`` (rng seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtautoplan.adapters import ADAPTERS, check_tps
from rtautoplan.adapters.inhouse_proton import MIN_MU_PER_SPOT, InHouseProton
from rtautoplan.plan import Modality
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules

HN01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"
FAST = dict(spot_spacing_mm=6.0, layer_spacing_mm=4.0)


@pytest.fixture(scope="module")
def planned_small(tmp_path_factory):
    from conftest import build_small_case

    case = apply_rules(build_small_case())
    objectives = objectives_for(case, np.random.default_rng(0))
    cache = tmp_path_factory.mktemp("ion_dij")
    return case, objectives, cache


def test_registered():
    assert ADAPTERS["inhouse-proton"] is InHouseProton
    tps = InHouseProton()
    assert tps.name == "inhouse-proton" and tps.modality is Modality.PROTON


def test_check_tps(planned_small):
    case, objectives, cache = planned_small
    check_tps(InHouseProton(cache_dir=cache, max_iter=60, mu_rounds=3, **FAST), case, objectives)


def test_minimum_mu_per_spot(planned_small):
    """After optimize no spot has MU per fraction in (0, 3); spots were removed and the plan
    re-optimised; its objective is within 5 % of a converged plan without the rule; the dose is
    EFFECTIVE = 1.1 × physical and the plan weights are MU per fraction."""
    case, objectives, cache = planned_small
    free = InHouseProton(cache_dir=cache, min_mu=0.0, max_iter=2000, **FAST)
    free.prepare(case)
    free.optimize(objectives)
    tps = InHouseProton(cache_dir=cache, max_iter=300, **FAST)
    tps.prepare(case)
    dose = tps.optimize(objectives)
    mu = np.concatenate(tps.plan().weights)
    run = tps.last_run
    assert run.removed > 0 and run.rounds >= 1
    assert not np.any((mu > 0) & (mu < MIN_MU_PER_SPOT)), np.sort(mu[(mu > 0) & (mu < MIN_MU_PER_SPOT)])
    assert run.value_final <= 1.05 * free.last_run.value_final, (run, free.last_run)
    assert dose.kind == "EFFECTIVE"
    x = mu * case.prescription.fractions  # course MU
    physical = tps.dij.dose_array(x)
    from rtautoplan.physics.dij import dose_to_grid

    assert np.allclose(dose.gy, np.maximum(1.1 * dose_to_grid(physical, tps.dij.dose_grid, case.grid), 0), atol=1e-3)
    assert [len(w) for w in tps.plan().weights] == [len(s) for s in tps.dij.spots]


def test_minimum_mu_inside_the_optimisation(planned_small):
    """The default ("bounded") rule keeps every spot at 0 or ≥ the minimum by construction (a lower bound in
    the re-optimisation, nothing removed unoptimised), and stays within 10 % of the unconstrained objective;
    the former rule ("delete") is still selectable."""
    case, objectives, cache = planned_small
    options = dict(tol=1e-4, f_scale=0.0)
    free = InHouseProton(cache_dir=cache, min_mu=0.0, max_iter=1000, solver_options=options, **FAST)
    free.prepare(case)
    free.optimize(objectives)
    threshold = MIN_MU_PER_SPOT * case.prescription.fractions
    for method in ("bounded", "delete"):
        tps = InHouseProton(cache_dir=cache, max_iter=1000, min_mu_method=method, solver_options=options, **FAST)
        tps.prepare(case)
        tps.optimize(objectives)
        x = np.concatenate(tps.plan().weights) * case.prescription.fractions
        assert not np.any((x > 0) & (x < threshold * (1 - 1e-9))), method
        assert tps.last_run.removed > 0, method
        if method == "bounded":
            assert tps.last_run.forced == 0
            assert tps.last_run.value_final <= 1.1 * free.last_run.value_final, (tps.last_run, free.last_run)
    with pytest.raises(ValueError, match="min_mu_method"):
        InHouseProton(min_mu_method="round")


def test_errors_before_prepare():
    tps = InHouseProton()
    with pytest.raises(RuntimeError, match="prepare"):
        tps.optimize(())
    with pytest.raises(RuntimeError, match="prepare"):
        tps.plan()


@pytest.mark.slow
def test_hn01_three_fields_cover_ctvs(tmp_path):
    """sample_data/hn01, 3 equispaced coplanar fields (0°, 120°, 240°), seed-002 objectives (rng seed 0),
    dose grid (1, 2, 2): D98 of every CTV ≥ 95 % of its Rx (RBE-weighted, on the CTV planning voxels
    and on the full mask). About 2 minutes on 2 cores (8 s matrix, ≈ 13 M entries, 20 k spots)."""
    if not HN01.exists():
        pytest.skip("sample_data/hn01 is not present")
    from rtautoplan.dicom.read import read_case
    from rtautoplan.dvh import d98

    case = apply_rules(read_case(HN01))
    objectives = objectives_for(case, np.random.default_rng(0))
    tps = InHouseProton(cache_dir=tmp_path, dose_grid_factor=(1, 2, 2))
    tps.prepare(case)
    dose = tps.optimize(objectives)
    report = []
    for level in case.prescription.levels:
        ctv = case.structure(level.target)
        on_planning, on_mask = d98(dose.gy, ctv.voxels), d98(dose.gy, ctv.mask)
        report.append(f"{ctv.name}: D98 {on_planning:.2f} / {on_mask:.2f} Gy(RBE) (need {0.95 * level.dose_gy:.2f})")
        assert on_planning >= 0.95 * level.dose_gy and on_mask >= 0.95 * level.dose_gy, "; ".join(report)
    mu = np.concatenate(tps.plan().weights)
    assert not np.any((mu > 0) & (mu < MIN_MU_PER_SPOT))
