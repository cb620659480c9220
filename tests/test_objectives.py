"""Initial objectives: rules 9–11 of SPEC §2.5 and the fixed targets of §2.6 (structures/objectives.py)."""

import numpy as np
import pytest
from structure_cases import SHAPE, SPACING, ball, ctv, cuboid, make_case, oar, two_levels

from rtautoplan.case import Role
from rtautoplan.errors import InputError
from rtautoplan.plan import ObjectiveKind
from rtautoplan.structures.margins import distance_mm
from rtautoplan.structures.objectives import estimate_dose, objectives_for
from rtautoplan.structures.rules import apply_rules

DMIN, DMAX, DMEAN = ObjectiveKind.DMIN, ObjectiveKind.DMAX, ObjectiveKind.DMEAN
OARS = ("SpinalCord", "Parotid_L", "Bone_Mandible", "Glnd_Submand_R")


def planned(*extra):
    """Two levels, four OARs around them (levels 1 and 3, Dmax and Dmean), plus extra structures."""
    organs = (oar("SpinalCord", cuboid((0, 20), (44, 48), (26, 30)), level=1), oar("Parotid_L", ball((20, 14, 28), 4)),
              oar("Bone_Mandible", cuboid((4, 8), (20, 40), (50, 54))), oar("Glnd_Submand_R", ball((20, 30, 8), 3)))
    return apply_rules(two_levels(*organs, *extra), "hn")


def by_name(objectives):
    return {(o.structure, o.kind): o for o in objectives}


def test_rule_10_fixed_target_objectives_exact():
    got = by_name(objectives_for(planned(), np.random.default_rng(0)))
    expected = {  # SPEC §2.6, Rx_max = 70 Gy
        ("CTV_7000", DMIN): (1.02 * 70, 2.0), ("CTV_7000", DMAX): (1.03 * 70, 2.0),
        ("CTV_6000", DMIN): (1.02 * 60, 2.0), ("CTV_6000", DMAX): (1.03 * 70, 2.0),
        ("PTV_7000", DMIN): (0.97 * 70, 1.0), ("PTV_7000", DMAX): (1.02 * 70, 1.0),
        ("PTV_6000", DMIN): (0.97 * 60, 1.0), ("PTV_6000", DMAX): (1.02 * 70, 1.0),
        ("zRing_7000", DMAX): (0.93 * 70, 1.0), ("zRing_6000", DMAX): (0.93 * 60, 1.0),
    }
    for key, (dose, weight) in expected.items():
        o = got.pop(key)
        assert (o.dose_gy, o.weight, o.adjustable, o.volume) == pytest.approx((dose, weight, False, None)), key
    assert all(o.adjustable for o in got.values()) and {s for s, _ in got} == set(OARS)


def test_rule_9_dmax_or_dmean_per_oar():
    objectives = objectives_for(planned(oar("MyGland", ball((20, 46, 10), 3))), np.random.default_rng(0))
    kinds = {o.structure: o.kind for o in objectives if o.adjustable}
    assert kinds == {"SpinalCord": DMAX, "Bone_Mandible": DMAX, "Parotid_L": DMEAN, "Glnd_Submand_R": DMEAN,
                     "MyGland": DMEAN}  # an organ outside the table defaults to Dmean


def test_order_targets_rings_then_oars_by_level_and_name():
    names = [o.structure for o in objectives_for(planned(), np.random.default_rng(0))]
    assert names == ["CTV_7000", "CTV_7000", "PTV_7000", "PTV_7000", "CTV_6000", "CTV_6000", "PTV_6000", "PTV_6000",
                     "zRing_7000", "zRing_6000", "SpinalCord", "Bone_Mandible", "Glnd_Submand_R", "Parotid_L"]


def test_rule_11_limits_from_reference_dose():
    case = planned()
    reference = np.random.default_rng(5).uniform(0.0, 60.0, SHAPE)
    objectives = objectives_for(case, np.random.default_rng(1), reference)
    factors = []
    for o in (o for o in objectives if o.adjustable):
        voxels = reference[case.structure(o.structure).voxels]
        metric = voxels.max() if o.kind is DMAX else voxels.mean()
        factors.append(o.dose_gy / metric)
        assert o.weight == 1.0
    assert all(1.1 <= f <= 1.3 for f in factors) and len(set(np.round(factors, 9))) == len(factors)
    assert objectives == objectives_for(case, np.random.default_rng(1), reference)  # reproducible per seed
    assert objectives != objectives_for(case, np.random.default_rng(2), reference)


def test_rule_11_fallback_uses_estimate_dose():
    case = planned()
    estimate = estimate_dose(case)
    fallback = objectives_for(case, np.random.default_rng(3))
    assert fallback == objectives_for(case, np.random.default_rng(3), estimate)
    cord = next(o for o in fallback if o.structure == "SpinalCord")
    assert 1.1 <= cord.dose_gy / estimate[case.structure("SpinalCord").voxels].max() <= 1.3


def test_estimate_dose_falloff():
    case = planned()
    dose = estimate_dose(case)
    ptv70, ptv60 = case.structure("PTV_7000").mask, case.structure("PTV_6000").mask
    assert np.allclose(dose[ptv70], 70.0) and dose[ptv60].min() == 60.0 and dose.min() > 0
    d70, d60 = distance_mm(ptv70, SPACING), distance_mm(ptv60, SPACING)
    assert np.allclose(dose, np.maximum(70 * np.exp(-d70 / 20.0), 60 * np.exp(-d60 / 20.0)))


def test_oar_with_empty_planning_mask_gets_no_objective():
    case = planned(oar("Larynx", ball((20, 30, 22), 2)))  # inside PTV_7000: loses all of it (rule 8)
    assert not case.structure("Larynx").voxels.any()
    assert "Larynx" not in {o.structure for o in objectives_for(case, np.random.default_rng(0))}


def test_needs_rules_and_a_matching_dose_grid():
    raw = make_case(ctv(70.0, ball((20, 30, 30), 5)))
    with pytest.raises(ValueError, match="apply_rules"):
        objectives_for(raw, np.random.default_rng(0))
    with pytest.raises(InputError, match="differs from the case grid"):
        objectives_for(apply_rules(raw), np.random.default_rng(0), np.zeros((3, 3, 3)))
    assert {o.structure for o in objectives_for(apply_rules(raw), np.random.default_rng(0))} == {
        "CTV_7000", "PTV_7000", "zRing_7000"}
    assert Role.RING in {s.role for s in apply_rules(raw).structures}
