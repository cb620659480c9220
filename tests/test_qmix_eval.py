"""Seed 003's §3.8 evaluation (policies/qmix_eval.py): the measures on a known dose, the summary and the paired test."""

import json

import numpy as np
import pytest

from rtautoplan.case import Role
from rtautoplan.policies import qmix_eval as E


def test_measures_read_coverage_hot_spots_and_oar_metrics_off_a_known_dose(small_case):
    """CTV at exactly its Rx, one 70 Gy voxel outside it, the lens at 3 Gy: D98 = 1, max outside = 70/60,
    Lens_L D1% = 3 Gy (a Table A2 row), SpinalCord Dmax = 0."""
    ctv = small_case.structure("CTV_6000").mask.to_full()
    lens = small_case.structure("Lens_L").mask.to_full()
    dose = np.zeros(small_case.grid.shape)
    dose[ctv] = 60.0
    dose[lens] = 3.0
    body = small_case.by_role(Role.EXTERNAL)[0].mask.to_full()
    hot = np.argwhere(body & ~ctv & ~lens)[0]
    dose[tuple(hot)] = 70.0
    d98, outside, oar = E.measures(small_case, dose)
    assert d98 == {"CTV_6000": pytest.approx(1.0)}
    assert outside == pytest.approx(70.0 / 60.0)
    assert oar["Lens_L D1%"] == pytest.approx(3.0)
    assert oar["SpinalCord Dmax"] == pytest.approx(0.0)
    assert not any(name.startswith("CTV") for name in oar)


def _row(policy, seed, before, after, parotid, d98=1.0, outside=1.0):
    return {"policy": policy, "case_seed": seed, "phi_before": before, "phi_after": after, "phi_max": 200.0,
            "relative_before": before / 200.0, "relative_after": after / 200.0, "best_step": 3, "time_s": 10.0,
            "d98_rel": json.dumps({"CTV_7000": d98}), "outside_max_rel": outside,
            "oar": json.dumps({"Parotid_L Dmean": parotid, "Brainstem Dmax": 40.0}),
            "trajectory": json.dumps([before, (before + after) / 2, after])}


def test_oar_table_finds_a_consistent_sparing_significant_and_no_change_untested():
    """Ten cases where QMIX lowers the parotid by 2–3 Gy on every one: Wilcoxon's exact two-sided p = 2/2¹⁰;
    the brainstem never changes: no test."""
    rows = [_row("template", s, 150, 150, 30.0 + s % 3) for s in range(10)]
    rows += [_row("qmix", s, 150, 160, 30.0 + s % 3 - 2.0 - 0.1 * s) for s in range(10)]
    text = E.oar_table(rows)
    parotid = next(line for line in text.splitlines() if line.startswith("| Parotid_L Dmean"))
    assert "-2.45" in parotid and "0.002" in parotid
    brainstem = next(line for line in text.splitlines() if line.startswith("| Brainstem Dmax"))
    assert brainstem.endswith("| – |")


def test_table_counts_coverage_and_hot_spots_per_planner(tmp_path):
    rows = [_row("qmix", s, 150, 170, 25.0, d98=0.96 if s else 0.94, outside=1.05 if s < 2 else 1.10)
            for s in range(4)]
    rows += [_row("template", s, 150, 150, 25.0) for s in range(4)]
    text = E.table(rows)
    qmix = next(line for line in text.splitlines() if line.startswith("| qmix"))
    assert "| 75.00 ± 0.00 % | 85.00 ± 0.00 % | 4/4 | 3/4 | 0.940 | 1.100 | 2/4 |" in qmix
    template = next(line for line in text.splitlines() if line.startswith("| template"))
    assert "| 0/4 |" in template
    assert E.trajectory(rows, 0, tmp_path / "fig6.png").stat().st_size > 0
    assert E.read_csv(E.write_csv(rows, tmp_path / "rows.csv"))[0]["policy"] == "qmix"
