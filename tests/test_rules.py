"""PTV/Gap/Ring generation and the overlap rules of SPEC §2.5 (structures/rules.py).

Every rule has a (case, check) pair below; the check must hold after apply_rules and must fail
when that one rule is replaced by a no-op, so no rule can silently stop working.
"""

from dataclasses import replace

import numpy as np
import pytest
from structure_cases import SPACING, ball, ctv, cuboid, make_case, oar, two_levels

from rtautoplan.case import Role, Structure
from rtautoplan.errors import InputError
from rtautoplan.structures import rules
from rtautoplan.structures.margins import distance_mm, expand
from rtautoplan.structures.rules import SITES, apply_rules, resolve

PLANNED = (Role.CTV, Role.PTV, Role.GAP, Role.RING, Role.OAR)


def crop_case():
    """A CTV touching the brainstem (level 1) on one side and overlapping a parotid (level 3) on the other."""
    return make_case(ctv(70.0, ball((20, 30, 30), 6)), oar("Brainstem", cuboid((0, 20), (36, 45), (20, 40))),
                     oar("Parotid_L", ball((20, 24, 30), 3)))


def check_crop(out):
    """Cropped 1 mm from the brainstem only: the parotid overlap stays in the CTV (rule 8: the parotid loses it)."""
    c, stem, parotid = out.structure("CTV_7000"), out.structure("Brainstem"), out.structure("Parotid_L")
    near = distance_mm(stem.mask, SPACING) <= 1.0
    return (np.array_equal(c.voxels, c.mask & ~near) and not c.voxels[10, 35, 30] and c.voxels[10, 34, 30]
            and (c.voxels & parotid.mask).any() and not (parotid.voxels & c.mask).any()
            and np.array_equal(out.structure("PTV_7000").mask, expand(c.mask, SPACING, 3.0)))


def check_rule_1(out):
    body = out.external.mask
    planned = [s for s in out.structures if s.role in PLANNED]
    return all(not (s.voxels & ~body).any() for s in planned) and out.structure("CTV_7000").voxels.any()


def check_rule_2(out):
    skin = out.structure("Skin")
    targets = out.by_role(Role.CTV, Role.PTV)
    return all(not (t.voxels & skin.mask).any() for t in targets) and np.array_equal(skin.voxels, skin.mask)


def check_rule_3(out):
    high, low = out.structure("CTV_7000"), out.structure("CTV_6000")
    return np.array_equal(low.voxels, low.mask & ~high.mask) and np.array_equal(high.voxels, high.mask)


def check_rule_4(out):
    ptv = out.structure("PTV_7000")
    own, other = out.structure("CTV_7000").mask, out.structure("CTV_6000").mask
    return (ptv.mask & other).any() and not (ptv.voxels & other).any() and not (own & ~ptv.voxels).any()


def check_rule_5(out):
    high, low = out.structure("PTV_7000"), out.structure("PTV_6000")
    return (low.mask & high.mask).any() and not (low.voxels & high.voxels).any()


def check_rule_6(out):
    targets = np.logical_or.reduce([s.mask for s in out.by_role(Role.CTV, Role.PTV)])
    gaps = np.logical_or.reduce([s.mask for s in out.by_role(Role.GAP)])
    rings = out.by_role(Role.RING)
    return all(r.voxels.any() and not (r.voxels & (targets | gaps)).any() for r in rings) and any(
        (r.mask & targets).any() for r in rings)


def check_rule_7(out):
    r7, r6, parotid = out.structure("zRing_7000"), out.structure("zRing_6000"), out.structure("Parotid_L")
    return parotid.mask.any() and np.array_equal(r7.voxels & r6.voxels & parotid.voxels, parotid.mask)


def check_rule_8(out):
    cord, parotid = out.structure("SpinalCord"), out.structure("Parotid_L")
    c, p = out.structure("CTV_7000"), out.structure("PTV_7000")
    return (np.array_equal(cord.voxels, cord.mask) and not ((c.voxels | p.voxels) & cord.mask).any()
            and (p.mask & parotid.mask).any() and not (parotid.voxels & p.mask).any()
            and np.array_equal(p.voxels, p.mask & ~cord.mask))


CASES = {
    "crop": (crop_case, check_crop),
    "1": (lambda: make_case(ctv(70.0, ball((20, 30, 30), 6)), oar("Parotid_L", ball((20, 30, 40), 5)),
                            external=cuboid((0, 20), (0, 60), (0, 33))), check_rule_1),
    "2": (lambda: make_case(ctv(70.0, ball((20, 30, 30), 6)), oar("Skin", cuboid((0, 20), (0, 60), (34, 37)))),
          check_rule_2),
    "3": (lambda: make_case(ctv(70.0, ball((20, 30, 26), 6)), ctv(60.0, ball((20, 30, 34), 6)), levels=(70.0, 60.0)),
          check_rule_3),
    "4": (two_levels, check_rule_4),
    "5": (two_levels, check_rule_5),
    "6": (two_levels, check_rule_6),
    "7": (lambda: two_levels(oar("Parotid_L", ball((20, 45, 28), 4))), check_rule_7),
    "8": (lambda: make_case(ctv(70.0, ball((20, 30, 30), 6)), oar("SpinalCord", cuboid((0, 20), (22, 28), (34, 40))),
                            oar("Parotid_L", ball((20, 30, 20), 4))), check_rule_8),
}


def run(rule_id):
    build, check = CASES[rule_id]
    return check(apply_rules(build(), "hn", ctv_oar_crop_mm=1.0 if rule_id == "crop" else None))


@pytest.mark.parametrize("rule_id", list(CASES))
def test_rule_holds(rule_id):
    assert run(rule_id)


@pytest.mark.parametrize("rule_id", [r for r in CASES if r != "7"])  # rule 7 is a no-op by design
def test_rule_check_fails_when_rule_skipped(rule_id, monkeypatch):
    skipped = tuple(replace(r, apply=lambda p: []) if r.id == rule_id else r for r in rules.RULES)
    monkeypatch.setattr(rules, "RULES", skipped)
    assert not run(rule_id)


def test_rule_table_is_in_numeric_order():
    assert [r.id for r in rules.RULES] == ["crop", "1", "2", "3", "4", "5", "6", "7", "8"]


def test_crop_is_off_by_default():
    out = apply_rules(crop_case(), "hn")
    c = out.structure("CTV_7000")
    assert np.array_equal(c.voxels, c.mask & ~out.structure("Brainstem").mask)  # rule 8 only


def test_rule_7_logs_nothing_between_rings_and_oars():
    result = resolve(CASES["7"][0](), "hn")
    rings_oars = {"zRing_7000", "zRing_6000", "Parotid_L"}
    assert not [e for e in result.log if e.structure in rings_oars and e.lost_to in rings_oars]


def test_rule_8_log_and_explain():
    result = resolve(CASES["8"][0](), "hn")
    entries = {(e.rule, e.structure, e.lost_to) for e in result.log}
    assert {("8", "CTV_7000", "SpinalCord"), ("8", "PTV_7000", "SpinalCord"), ("8", "Parotid_L", "PTV_7000")} <= entries
    assert all(e.voxels_removed > 0 for e in result.log)
    assert any("Parotid_L lost" in line and "to PTV_7000" in line for line in result.explain())


def test_generated_structures():
    out = apply_rules(two_levels(), "hn")
    names = [s.name for s in out.structures]
    assert names == ["External", "CTV_7000", "CTV_6000", "PTV_7000", "zGap_7000", "zRing_7000",
                     "PTV_6000", "zGap_6000", "zRing_6000"]
    for name, role, level, rx in [("PTV_7000", Role.PTV, 2, 70.0), ("zGap_7000", Role.GAP, None, 70.0),
                                  ("zRing_6000", Role.RING, 3, 60.0)]:
        s = out.structure(name)
        assert (s.role, s.level, s.rx_gy, s.roi_name) == (role, level, rx, "")
    colours = [s.color for s in out.structures if not s.roi_name]
    assert len(set(colours)) == len(colours)
    assert np.array_equal(out.structure("PTV_6000").mask, expand(out.structure("CTV_6000").mask, SPACING, 3.0))


@pytest.mark.parametrize("site", list(SITES))
def test_gap_and_ring_are_shells(site):
    margins = SITES[site]
    out = apply_rules(make_case(ctv(70.0, ball((20, 30, 30), 4))), site)
    ptv, gap, ring = (out.structure(n).mask for n in ("PTV_7000", "zGap_7000", "zRing_7000"))
    d = distance_mm(ptv, SPACING)
    assert np.array_equal(ptv, expand(out.structure("CTV_7000").mask, SPACING, margins.ptv_mm))
    assert not (gap & ptv).any() and not (ring & expand(ptv, SPACING, margins.gap_mm)).any()
    assert np.array_equal(gap, (d > 0) & (d <= margins.gap_mm))
    assert np.array_equal(ring, (d > margins.gap_mm) & (d <= margins.gap_mm + margins.ring_mm))
    assert d[ring].max() > margins.gap_mm + margins.ring_mm - 1.0 and d[gap].max() > margins.gap_mm - 1.0


def test_input_masks_never_change_and_input_ptv_is_kept():
    drawn_ptv = Structure("PTV_7000", ball((20, 30, 30), 9), Role.PTV, 2, 70.0, roi_name="PTV70")
    case = make_case(ctv(70.0, ball((20, 30, 30), 6)), drawn_ptv, oar("Parotid_L", ball((20, 30, 38), 4)),
                     external=cuboid((0, 20), (0, 60), (0, 40)))
    before = [s.mask.to_full() for s in case.structures]
    out = apply_rules(case, "hn")
    assert all(np.array_equal(b, s.mask) for b, s in zip(before, case.structures))
    assert all(s.mask is o.mask for s, o in zip(case.structures, out.structures))
    assert [s.name for s in out.by_role(Role.PTV)] == ["PTV_7000"] and out.structure("PTV_7000").mask is drawn_ptv.mask
    assert not any(s.voxels.crop.flags.writeable for s in out.structures)  # values: never edited after the rules
    assert out.external.planning_mask is None


def test_rerun_is_idempotent():
    once = apply_rules(two_levels(oar("SpinalCord", cuboid((0, 20), (22, 28), (25, 31)))), "hn")
    twice = apply_rules(once, "hn")
    assert sorted(s.name for s in once.structures) == sorted(s.name for s in twice.structures)
    assert all(np.array_equal(s.voxels, twice.structure(s.name).voxels) for s in once.structures)


def test_previous_output_read_back_as_other_is_replaced():
    stale = Structure("zRing_7000", ball((20, 30, 30), 3), Role.OTHER, roi_name="zRing_7000")
    result = resolve(make_case(ctv(70.0, ball((20, 30, 30), 5)), stale), "hn")
    assert [s.name for s in result.case.structures].count("zRing_7000") == 1
    assert result.case.structure("zRing_7000").role is Role.RING
    assert result.log[0].rule == "replaced"


def test_other_structures_untouched_and_gtv_clipped():
    couch = Structure("Couch", cuboid((0, 20), (55, 60), (0, 60)), Role.OTHER, roi_name="Couch")
    gtv = Structure("GTV", ball((20, 30, 36), 4), Role.GTV, roi_name="GTV")
    out = apply_rules(make_case(ctv(70.0, ball((20, 30, 30), 6)), couch, gtv,
                                external=cuboid((0, 20), (0, 50), (0, 38))), "hn")
    assert out.structure("Couch").planning_mask is None
    assert np.array_equal(out.structure("GTV").voxels, gtv.mask & out.external.mask)


def test_undosed_target_belongs_to_the_single_level():
    plain = Structure("CTV", ball((20, 30, 30), 5), Role.CTV, 2, roi_name="CTV")
    out = apply_rules(make_case(plain), "hn")
    assert out.structure("CTV").rx_gy == 70.0 and out.has("zRing_7000")


def test_errors_are_specific():
    with pytest.raises(InputError, match="unknown site 'lung'.*hn, liver, prostate"):
        apply_rules(two_levels(), "lung")
    with pytest.raises(InputError, match="prescription level 50 Gy.*CTV_5000"):
        apply_rules(make_case(ctv(70.0, ball((20, 30, 30), 5)), levels=(70.0, 50.0)), "hn")
    with pytest.raises(InputError, match="CTV_5000 matches no prescription level"):
        apply_rules(make_case(ctv(70.0, ball((20, 30, 30), 5)), ctv(50.0, ball((20, 30, 40), 4))), "hn")
