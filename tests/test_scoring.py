"""The four plan-quality systems (rtautoplan/scoring, SPEC §1.7, §2.12, §3.7, §4.3, §7.1).

Cases are built in memory as a row of 1 cm³ voxels (10 mm spacing), each structure a run of
consecutive voxels, so every expected number below is worked out by hand from the SPEC formulas.
"""

from __future__ import annotations

import math
import sys
import time

from pathlib import Path

import numpy as np
import pytest

from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure
from rtautoplan.scoring import SCORERS, evaluate, reward, structure_scores
from rtautoplan.scoring import dose_distribution as dd
from rtautoplan.scoring import proknow9, relative_loss, table_a2
from rtautoplan.structures.names import ORGANS


class Mini:
    """A 1 × 1 × n case of 1 cm³ voxels; ``add`` gives each structure the next run of voxels."""

    def __init__(self, n: int):
        self.n, self.next, self.spec = n, 0, []
        self.dose = np.zeros(n)

    def add(self, name: str, role: Role = Role.OAR, n: int = 10, rx: float | None = None,
            at: slice | None = None) -> slice:
        if at is None:
            at, self.next = slice(self.next, self.next + n), self.next + n
        level = {Role.OAR: ORGANS[name].level if name in ORGANS else 3, Role.RING: 3}.get(role, 2)
        self.spec.append((name, role, level, rx, at))
        return at

    def case(self, *levels: tuple[str, float]) -> Case:
        shape = (1, 1, self.n)
        structures = [Structure("External", np.ones(shape, bool), Role.EXTERNAL)]
        for name, role, level, rx, at in self.spec:
            mask = np.zeros(self.n, bool)
            mask[at] = True
            structures.append(Structure(name, mask.reshape(shape), role, level, rx))
        rx = Prescription(tuple(DoseLevel(t, d) for t, d in levels), 30)
        return Case("mini", Grid((0.0, 0.0, 0.0), (10.0, 10.0, 10.0), shape), np.zeros(shape, np.int16),
                    tuple(structures), rx)

    def grid_dose(self) -> np.ndarray:
        return self.dose.reshape(1, 1, self.n)


# --- ProKnow-9 (SPEC §1.7) -------------------------------------------------------------------------

RX = 78.0


def prostate(extra_ptv: bool = False):
    m = Mini(300)
    if extra_ptv:
        m.add("PTV_5000", Role.PTV, rx=50.0, at=slice(250, 300))
    bladder, rectum, ptv = m.add("Bladder", n=100), m.add("Rectum", n=100), m.add("PTV_7800", Role.PTV, 100, 78.0)
    m.dose[ptv] = RX
    levels = (("PTV_7800", 78.0), ("PTV_5000", 50.0)) if extra_ptv else (("PTV_7800", 78.0),)
    return m, bladder, rectum, ptv, levels


def test_proknow9_passes_and_fails_the_right_criteria():
    m, bladder, rectum, ptv, levels = prostate()
    m.dose[bladder.start:bladder.start + 35] = 0.95 * RX  # V94.3 = 35 % ≥ 30 (fail); V88.1, V81.2 = 35 % pass
    m.dose[rectum.start:rectum.start + 50] = 0.90 * RX  # V88.1 = 50 ≥ 30, V81.2 = 50 ≥ 40 fail; V75.5 = 50 < 55
    s = proknow9.score(m.grid_dose(), m.case(*levels))
    assert [c.passed for c in s.criteria] == [True, False, True, True, True, False, False, True, True]
    assert [c.value for c in s.criteria][:8] == pytest.approx([0, 35, 35, 35, 0, 50, 50, 50])
    assert s.criteria[8].value == pytest.approx(100.0)
    assert s.total == 6.0 and s.maximum == 9.0 and s.relative == pytest.approx(6 / 9)
    m.dose[ptv.start] = 1.2 * RX  # one 1 cm³ hot voxel: D0.03cc = 120 % ≥ 109.6 %
    assert proknow9.score(m.grid_dose(), m.case(*levels)).total == 5.0


def test_proknow9_threshold_is_strict_and_uses_the_highest_rx_ptv():
    m, bladder, _, _, levels = prostate(extra_ptv=True)
    m.dose[bladder.start:bladder.start + 20] = 1.01 * RX  # V100.6 = 20 %, exactly the threshold: fails
    s = proknow9.score(m.grid_dose(), m.case(*levels))
    assert s.criteria[0].value == pytest.approx(20.0) and s.criteria[0].passed is False
    assert s.total == 8.0  # relative to PTV_7800 (78 Gy); against PTV_5000 every bladder V would fail


def test_proknow9_partial_credit_is_linear_above_the_threshold():
    m, bladder, _, _, levels = prostate()
    m.dose[bladder.start:bladder.start + 31] = 0.95 * RX  # V94.3 = 31 % (threshold 30, band 3)
    case = m.case(*levels)
    assert proknow9.score(m.grid_dose(), case).total == 8.0
    partial = proknow9.score(m.grid_dose(), case, partial=True)
    assert partial.criteria[1].score == pytest.approx(1 - 1 / 3) and partial.criteria[1].passed is False
    assert partial.total == pytest.approx(8 + 2 / 3)
    m.dose[bladder.start:bladder.start + 33] = 0.95 * RX  # 33 % = 30 · (1 + 0.1): no credit left
    assert proknow9.score(m.grid_dose(), case, partial=True).criteria[1].score == pytest.approx(0.0)


@pytest.mark.parametrize("missing", ["Bladder", "Rectum", "PTV"])
def test_proknow9_names_the_missing_structure(missing):
    m = Mini(30)
    for name, role in (("Bladder", Role.OAR), ("Rectum", Role.OAR), ("PTV_7800", Role.PTV)):
        if not name.startswith(missing):
            m.add(name, role, rx=78.0 if role == Role.PTV else None)
    with pytest.raises(ValueError, match=missing):
        proknow9.score(m.grid_dose(), m.case(("PTV_7800", 78.0)))


# --- dose-distribution score (SPEC §2.12) -------------------------------------------------------------

def test_penalty_uses_bin_centres_and_both_sums_for_targets():
    ctv = dd.Band(1.0, 1.05, 60.0, 20.0, True, "S1")
    assert dd.penalty(np.full(5, 57.0), ctv) == pytest.approx(math.exp(20 * 0.049) * 0.049)  # bin 0.950–0.952
    assert dd.penalty(np.full(5, 0.9999 * 60), ctv) == pytest.approx(math.exp(20 * 0.001) * 0.001)  # centre 0.999
    assert dd.penalty(np.full(5, 60.0), ctv) == 0.0 and dd.penalty(np.full(5, 62.4), ctv) == 0.0
    half = np.r_[np.full(5, 60.0), np.full(5, 66.0)]  # 1.1 → centre 1.101, 0.051 above h, half the voxels
    assert dd.penalty(half, ctv) == pytest.approx(0.5 * math.exp(20 * 0.051) * 0.051)
    oar = dd.Band(1.0, 0.5, 60.0, 0.5, False, "S1")  # over-dose only: the under-dose sum is ignored
    assert dd.penalty(np.full(3, 0.0), oar) == 0.0


def test_plan_score_sums_s1_averages_s2_and_uniformity():
    m = Mini(100)
    ctv, cord = m.add("CTV_6000", Role.CTV, 20, 60.0), m.add("SpinalCord")
    par_l, par_r = m.add("Parotid_L"), m.add("Parotid_R")
    m.dose[ctv], m.dose[cord], m.dose[par_l], m.dose[par_r] = 60.0, 20.0, 20.0, 5.0
    m.dose[ctv.start:ctv.start + 10] = 62.4  # D2 = 62.4, D98 = 60: uniform = −2.4/60 (1.04 is inside [1, 1.05])
    case = m.case(("CTV_6000", 60.0))
    over = 0.333 - 10 / 60  # 20 Gy / 60 → centre 0.333; h = 10 Gy / Rx_min
    cord_pen, parotid_pen = math.exp(2 * over) * over, math.exp(over) * over  # c = 2 (level 1), 1 (level 3)
    s = dd.score(m.grid_dose(), case)
    assert s.total == pytest.approx(-cord_pen - (parotid_pen + 0.0) / 2 - 2.4 / 60)
    assert s.maximum == 0.0 and s.relative is None and s.higher_is_better
    assert structure_scores(m.grid_dose(), case) == pytest.approx(
        {"CTV_6000": 0.0, "SpinalCord": -cord_pen, "Parotid_L": -parotid_pen, "Parotid_R": 0.0})


def test_empty_structures_are_listed_not_scored():
    m = Mini(30)
    ctv, par_l = m.add("CTV_6000", Role.CTV, 10, 60.0), m.add("Parotid_L")
    m.add("Parotid_R", at=slice(0, 0))
    m.dose[ctv], m.dose[par_l] = 60.0, 20.0
    case = m.case(("CTV_6000", 60.0))
    s = dd.score(m.grid_dose(), case)
    over = 0.333 - 1 / 6
    assert s.total == pytest.approx(-math.exp(over) * over)  # S2 averages over the one non-empty parotid
    assert [c.name for c in s.criteria if c.max_score is None] == ["Parotid_R penalty"]
    assert set(structure_scores(m.grid_dose(), case)) == {"CTV_6000", "Parotid_L"}


def test_fig6_trade_off_oar_sparing_bought_with_ctv_coverage_is_a_negative_reward():
    m = Mini(40)
    ctv, ptv, parotid = m.add("CTV_6000", Role.CTV, 10, 60.0), m.add("PTV_6000", Role.PTV, 10, 60.0), m.add("Parotid_L")
    case = m.case(("CTV_6000", 60.0))
    m.dose[ctv], m.dose[ptv], m.dose[parotid] = 61.0, 61.0, 20.0
    before = dd.score(m.grid_dose(), case)
    m.dose[ctv], m.dose[ptv], m.dose[parotid] = 57.0, 57.0, 15.0  # OAR −5 Gy, CTV to 95 % (PTV still ≥ 0.95)
    after = dd.score(m.grid_dose(), case)
    parotid_before, parotid_after = (math.exp(o) * o for o in (0.333 - 1 / 6, 0.251 - 1 / 6))
    expected = -math.exp(20 * 0.049) * 0.049 + (parotid_before - parotid_after)
    assert expected < 0  # −0.1306 + 0.1047
    assert reward("dose_distribution", before, after) == pytest.approx(expected)
    assert after.criteria[0].passed is False and before.criteria[0].passed is True


def test_ring_normalisation_is_configurable_and_lens_has_no_free_dose():
    m = Mini(40)
    m.add("CTV_7000", Role.CTV, 10, 70.0)
    m.add("CTV_6000", Role.CTV, 10, 60.0)
    ring, lens = m.add("zRing_7000", Role.RING, 10, 70.0), m.add("Lens_L")
    case = m.case(("CTV_7000", 70.0), ("CTV_6000", 60.0))
    m.dose[:20], m.dose[ring], m.dose[lens] = 62.0, 42.0, 6.0
    generating = structure_scores(m.grid_dose(), case)
    assert generating["zRing_7000"] == pytest.approx(-math.exp(0.5 * 0.101) * 0.101)  # 42/70 → 0.601
    assert dd.structure_scores(m.grid_dose(), case, ring_rx="rx_min")["zRing_7000"] == pytest.approx(
        -math.exp(0.5 * 0.201) * 0.201)  # 42/60 → 0.701
    assert generating["Lens_L"] == pytest.approx(-math.exp(0.101) * 0.101)  # [0, 0], Rx_min 60: 0.1 → 0.101
    m.dose[lens] = 0.0  # the first bin's centre (0.001) still lies above h = 0
    assert structure_scores(m.grid_dose(), case)["Lens_L"] == pytest.approx(-math.exp(0.001) * 0.001)
    with pytest.raises(ValueError, match="ring_rx"):
        dd.score(m.grid_dose(), case, ring_rx="lowest")


def test_nested_ctv_uniformity_ignores_the_boost_inside_it():
    m = Mini(30)
    boost = m.add("CTV_7000", Role.CTV, 10, 70.0)
    m.add("CTV_6000", Role.CTV, rx=60.0, at=slice(0, 30))  # drawn around the boost
    m.dose[:], m.dose[boost] = 60.0, 70.0
    case = m.case(("CTV_7000", 70.0), ("CTV_6000", 60.0))
    assert dd.score(m.grid_dose(), case).total == pytest.approx(0.0)  # 70 Gy in CTV_6000: below h = 1.05 · 70/60
    m.dose[boost.start:boost.start + 5] = 72.1  # CTV_7000: D2 − D98 = 2.1 Gy, still inside [1, 1.05] · 70 Gy
    assert dd.score(m.grid_dose(), case).total == pytest.approx(-2.1 / 70 / 2)  # S3: averaged over 2 CTVs


# --- Table A2 (SPEC §3.7) ------------------------------------------------------------------------

def row(structure, metric):
    return next(r for r in table_a2.ROWS if r.structure == structure and r.metric == metric)


@pytest.mark.parametrize("structure, metric, points", [
    ("CTV", "V95%", {0: -40, 0.49: -14, 0.98: 12, 0.99: 26, 1.0: 40}),
    ("CTV", "V105%", {0: 20, 0.05: 13, 0.1: 6, 0.55: 3, 1.0: 0}),
    ("CTV", "CI", {0: 0, 0.3: 3, 0.6: 6, 0.8: 13, 1.0: 20}),
    ("CTV", "HI", {0: 20, 0.1: 6, 0.55: 3, 1.0: 0, 2.0: 0}),
    ("Brainstem", "Dmax", {0: 7.2, 22.5: 6.6, 45: 6, 49.5: 3, 54: 0, 60: 0}),
    ("Bone_Mandible", "Dmean", {30: 5, 35: 2.5, 40: 0, 41: 0}),
    ("Lobe_Temporal_L", "V40Gy", {0: 3.6, 7.66: 3, 8.83: 1.5, 10: 0}),
    ("Parotid_R", "Dmean", {21: 2.5, 23: 1.25, 25: 0}),
])
def test_table_a2_piecewise_rows_at_their_breakpoints(structure, metric, points):
    r = row(structure, metric)
    assert {v: r.points(v) for v in points} == pytest.approx(points)


def test_table_a2_maximum_is_204_4_over_18_oars_and_the_ctv():
    oars = {r.structure for r in table_a2.ROWS} - {"CTV"}
    assert len(oars) == 18 and all(name in ORGANS for name in oars)
    assert sum(r.max_score for r in table_a2.ROWS if r.structure != "CTV") == pytest.approx(104.4)
    assert sum(r.max_score for r in table_a2.ROWS) == pytest.approx(table_a2.MAX_PHI)


def full_table_a2_case():
    m = Mini(200)
    ctv = m.add("CTV_6000", Role.CTV, 20, 60.0)
    for name in sorted({r.structure for r in table_a2.ROWS} - {"CTV"}):
        m.add(name, n=8)
    return m, ctv


def test_table_a2_full_score_plan():
    m, ctv = full_table_a2_case()
    m.dose[ctv] = 60.0  # Rx in the CTV only, nothing anywhere else: every row at its maximum
    s = table_a2.score(m.grid_dose(), m.case(("CTV_6000", 60.0)))
    assert s.total == pytest.approx(204.4) and s.maximum == pytest.approx(204.4) and s.relative == pytest.approx(1)
    assert all(c.passed for c in s.criteria) and len(s.criteria) == 25
    assert reward("table_a2", None, s) == pytest.approx(204.4 - 102.2)


def test_table_a2_ctv_rows_and_temporal_lobe_by_hand():
    m = Mini(150)
    ctv, lobe = m.add("CTV_6000", Role.CTV, 100, 60.0), m.add("Lobe_Temporal_L", n=20)
    m.dose[ctv] = 60.0
    m.dose[ctv.start:ctv.start + 10] = 30.0
    m.dose[130:150] = 60.0  # 20 cm³ of body outside the CTV inside the 95 % isodose
    m.dose[lobe.start:lobe.start + 8] = 45.0  # V40 = 8 cm³, V50 = 0
    s = table_a2.score(m.grid_dose(), m.case(("CTV_6000", 60.0)))
    got = {c.name: (c.value, c.score) for c in s.criteria if c.max_score is not None}
    assert got["CTV_6000 V95%"] == pytest.approx((0.9, -40 + 52 / 0.98 * 0.9))
    assert got["CTV_6000 V105%"] == pytest.approx((0.0, 20.0))
    assert got["CTV_6000 CI"] == pytest.approx((90 ** 2 / (100 * 110), 6 + 35 * (8100 / 11000 - 0.6)))
    assert got["CTV_6000 HI"] == pytest.approx((0.5, 6 - 6 / 0.9 * 0.4))  # (60 − 30)/60
    assert got["Lobe_Temporal_L V40Gy"] == pytest.approx((8.0, 3 - 3 * 0.34 / 2.34))
    assert got["Lobe_Temporal_L V50Gy"] == pytest.approx((0.0, 3.6))
    assert s.maximum == pytest.approx(100 + 7.2)


def test_table_a2_leaves_missing_structures_out_of_total_and_maximum():
    m = Mini(40)
    m.add("Brainstem")
    m.add("Parotid_L")
    s = table_a2.score(m.grid_dose(), m.case(("CTV_6000", 60.0)))  # no CTV, 16 of 18 OARs missing
    assert s.maximum == pytest.approx(14.4 + 3.0) and s.total == pytest.approx(14.4 + 3.0)
    assert reward("table_a2", None, s) == pytest.approx(17.4 / 2)  # φ − 0.5 · (attainable max φ)
    skipped = [c for c in s.criteria if c.max_score is None]
    assert len(skipped) == 25 - 3 and all(math.isnan(c.value) and c.score == 0.0 for c in skipped)
    with pytest.raises(ValueError, match="PTV_6000"):
        table_a2.score(m.grid_dose(), m.case(("CTV_6000", 60.0)), target="PTV_6000")


def test_table_a2_scores_every_ctv_of_a_sib_plan():
    """Two nested levels (CTV_7000 drawn inside CTV_5400): each CTV's four rows at its own Rx, weighted
    1/2 so the CTV part keeps 100 points. A perfect SIB plan (70 in the boost, 54 around it) earns them
    all: CTV_5400's V105% and HI read it without the boost, its CI target volume includes the boost."""
    m = Mini(60)
    boost = m.add("CTV_7000", Role.CTV, 10, 70.0)
    m.add("CTV_5400", Role.CTV, rx=54.0, at=slice(0, 30))
    m.add("Brainstem", at=slice(40, 50))
    m.dose[0:30], m.dose[boost] = 54.0, 70.0
    case = m.case(("CTV_7000", 70.0), ("CTV_5400", 54.0))
    s = table_a2.score(m.grid_dose(), case)
    rows = {c.name: c for c in s.criteria if c.structure.startswith("CTV")}
    assert sorted(rows) == sorted(f"{n} {metric}" for n in ("CTV_7000", "CTV_5400")
                                  for metric in ("V95%", "V105%", "CI", "HI"))
    assert rows["CTV_5400 V95%"].max_score == pytest.approx(20.0) and rows["CTV_7000 CI"].max_score == 10.0
    assert all(c.passed and c.score == pytest.approx(c.max_score) for c in rows.values())
    assert s.total == pytest.approx(100 + 14.4) and s.maximum == pytest.approx(100 + 14.4)
    m.dose[20:30] = 40.0  # a third of the elective CTV cold: only its rows lose
    s = table_a2.score(m.grid_dose(), case)
    got = {c.name: (c.value, c.score) for c in s.criteria if c.structure.startswith("CTV")}
    assert got["CTV_5400 V95%"] == pytest.approx((2 / 3, 0.5 * (-40 + 52 / 0.98 * 2 / 3)))
    assert got["CTV_5400 CI"] == pytest.approx((2 / 3, 0.5 * (6 + 35 * (2 / 3 - 0.6))))  # 20² / (30 · 20)
    assert got["CTV_7000 V95%"] == pytest.approx((1.0, 20.0))
    named = table_a2.score(m.grid_dose(), case, target="CTV_7000")  # one named target: full weight
    assert [c.max_score for c in named.criteria if c.metric == "V95%"] == [40.0]


# --- relative-difference loss (SPEC §4.3) -----------------------------------------------------------------

def hn_loss_case(rx: float = 44.0):
    m = Mini(60)
    name = f"PTV_{rx * 100:.0f}"
    ptv = m.add(name, Role.PTV, 20, rx)
    parts = m.add("Parotid_L"), m.add("Parotid_R"), m.add("Cavity_Oral")
    m.dose[ptv] = rx
    return m, ptv, parts, m.case((name, rx))


def test_relative_loss_is_zero_when_all_goals_are_met():
    m, _, (lp, rp, oc), case = hn_loss_case()
    m.dose[lp], m.dose[rp], m.dose[oc] = 15.0, 10.0, 24.0
    s = relative_loss.score(m.grid_dose(), case)
    assert s.total == 0.0 and all(c.passed for c in s.criteria) and len(s.criteria) == 7
    assert not s.higher_is_better and s.maximum == 0.0


def test_relative_loss_hinge_values_and_reward():
    m, ptv, (lp, rp, oc), case = hn_loss_case()
    m.dose[lp], m.dose[rp], m.dose[oc], m.dose[ptv] = 18.0, 10.0, 30.0, 40.0
    s = relative_loss.score(m.grid_dose(), case)
    assert [c.score for c in s.criteria] == pytest.approx([0.2, 0.2, 0, 0, 0.2, 0.2, 4 / 44])
    assert s.total == pytest.approx(0.8 + 4 / 44)
    m.dose[lp] = 15.0
    after = relative_loss.score(m.grid_dose(), case)
    assert reward("relative_loss", s, after) == pytest.approx(0.4)  # −ΔL


def test_relative_loss_ptv_goal_follows_the_case_prescription():
    m, ptv, _, case = hn_loss_case(70.0)
    m.dose[ptv] = 68.0
    assert relative_loss.score(m.grid_dose(), case).total == pytest.approx(2 / 70)
    assert relative_loss.score(m.grid_dose(), case, ptv_d95_gy=44.0).total == 0.0
    no_ptv = Mini(20)
    no_ptv.add("Parotid_L")
    with pytest.raises(ValueError, match="PTV"):
        relative_loss.score(no_ptv.grid_dose(), no_ptv.case(("PTV_7000", 70.0)))


# --- all systems -----------------------------------------------------------------------------------------

def test_rewards_and_registry():
    m, bladder, _, _, levels = prostate()
    case = m.case(*levels)
    before = evaluate("proknow9", m.grid_dose(), case)
    m.dose[bladder.start:bladder.start + 35] = 0.95 * RX
    after = evaluate("proknow9", m.grid_dose(), case)
    assert reward("proknow9", before, after) == -1.0
    assert set(SCORERS) == {"proknow9", "dose_distribution", "table_a2", "relative_loss"}
    with pytest.raises(ValueError, match="not comparable"):
        reward("table_a2", None, after)
    with pytest.raises(ValueError, match="unknown"):
        evaluate("planiq", m.grid_dose(), case)
    with pytest.raises(ValueError, match="shape"):
        evaluate("proknow9", np.zeros((2, 2, 2)), case)


def big_case(shape=(64, 128, 128)):
    """~1 M voxels with every structure the four systems read, half a million voxels in some."""
    k = np.arange(shape[0])[:, None, None] * np.ones(shape, bool)
    slabs = {"Bladder": (0, 8), "Rectum": (8, 16), "PTV_7000": (16, 40), "CTV_7000": (20, 36), "zRing_7000": (40, 64),
             "Parotid_L": (0, 4), "Parotid_R": (4, 8), "Cavity_Oral": (8, 12), "Brainstem": (12, 14),
             "SpinalCord": (14, 16), "Lens_L": (60, 61)}
    roles = {"PTV_7000": Role.PTV, "CTV_7000": Role.CTV, "zRing_7000": Role.RING}
    structures = [Structure("External", np.ones(shape, bool), Role.EXTERNAL)]
    for name, (lo, hi) in slabs.items():
        role = roles.get(name, Role.OAR)
        level = ORGANS[name].level if role == Role.OAR else (3 if role == Role.RING else 2)
        structures.append(Structure(name, (k >= lo) & (k < hi), role, level, None if role == Role.OAR else 70.0))
    return Case("big", Grid((0.0, 0.0, 0.0), (3.0, 2.0, 2.0), shape), np.zeros(shape, np.int16), tuple(structures),
                Prescription((DoseLevel("CTV_7000", 70.0),), 35))


def python_lines(f) -> int:
    """Python line events while f() runs: constant in the voxel count for vectorised code."""
    count, previous = 0, sys.gettrace()

    def tracer(frame, event, arg):
        nonlocal count
        count += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        f()
    finally:
        sys.settrace(previous)
    return count


@pytest.mark.parametrize("system", sorted(SCORERS))
def test_scores_run_no_python_loop_over_voxels(system):
    small, large = big_case((64, 8, 8)), big_case((64, 32, 32))  # same structures, 16 × the voxels
    lines = [python_lines(lambda c=c: SCORERS[system](np.random.default_rng(1).uniform(0, 75, c.grid.shape), c))
             for c in (small, large)]
    assert lines[1] <= 1.05 * lines[0], f"{system}: {lines} Python lines for 4096 / 65536 voxels"


def test_scores_are_fast_and_consistent():
    case = big_case()
    dose = np.random.default_rng(0).uniform(0.0, 75.0, case.grid.shape)
    start = time.perf_counter()
    scores = {name: f(dose, case) for name, f in SCORERS.items()}
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"four scores of a 1 M-voxel case took {elapsed:.1f} s: a Python loop over voxels?"
    for s in scores.values():
        assert s.total == pytest.approx(sum(c.score for c in s.scored))
        assert s.maximum == pytest.approx(sum(c.max_score for c in s.scored))
    # CTV, Brainstem, SpinalCord, both parotids, Lens_L
    assert scores["table_a2"].maximum == pytest.approx(100 + 14.4 + 14.4 + 6 + 3)


SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


def test_sample_cases_smoke():
    from rtautoplan.dicom.read import read_case
    from rtautoplan.structures.objectives import estimate_dose
    from rtautoplan.structures.rules import apply_rules

    prostate01 = apply_rules(read_case(SAMPLES / "prostate01"), "prostate")
    dose = estimate_dose(prostate01)
    assert evaluate("proknow9", dose, prostate01).total == 9.0  # Rx in the PTV, fall-off outside
    assert evaluate("dose_distribution", dose, prostate01).total < 0
    hn01 = apply_rules(read_case(SAMPLES / "hn01"), "hn")
    dose = estimate_dose(hn01)
    with pytest.raises(ValueError, match="Bladder"):
        evaluate("proknow9", dose, hn01)
    phi = evaluate("table_a2", dose, hn01)
    assert phi.maximum == pytest.approx(204.4) and 0 < phi.relative < 1
    assert set(structure_scores(dose, hn01)) >= {"CTV_7000", "PTV_5400", "zRing_6000", "Parotid_L", "Lens_R"}
