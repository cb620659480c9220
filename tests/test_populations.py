"""Phantom populations (issue 16): v1 re-runs bit-identically, v2 draws the calibrated anatomy;
plan-specific goals bound to a reference plan (seed 004 §4.7 b); the planners' records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rtautoplan.phantom import make_case, populations
from rtautoplan.phantom import hn as hn_phantom
from rtautoplan.phantom import prostate as prostate_phantom
from rtautoplan.phantom.calibration import hn_geometry, median_distance_mm, prostate_geometry

ROOT = Path(__file__).resolve().parents[1]

# sha256 (first 16 hex) of HU + every ROI mask of the generators as they were before populations
# existed (commit b613419), so "v1" is the old generator, bit for bit.
V1_DIGESTS = {("prostate", 0): "76902d112816211e", ("prostate", 1): "ccbd45ee28bcc00b",
              ("prostate", 77): "8d0ba5efb8462e85", ("prostate", 1000): "d6c66a3a2acadcd7",
              ("hn", 0): "d29d5ed020d729e5", ("hn", 1): "26e7cc9d061ec83d", ("hn", 77): "7e75d473c2ff8c59",
              ("hn", 1000): "7a0e69402fa5c621"}


def digest(case) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(case.hu).tobytes())
    for s in sorted(case.structures, key=lambda s: s.roi_name):
        h.update(s.roi_name.encode())
        h.update(np.packbits(s.mask).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("site,seed", sorted(V1_DIGESTS))
def test_v1_is_the_old_generator_bit_for_bit(site, seed):
    case = make_case(site, seed)
    assert digest(case) == V1_DIGESTS[site, seed]
    assert digest(make_case(site, seed, population="v1")) == V1_DIGESTS[site, seed]
    assert case.case_id == f"{site}{seed:02d}"


@pytest.mark.parametrize("site", ["prostate", "hn"])
def test_v2_is_another_patient_reproducibly_and_says_so(site):
    a, b = make_case(site, 1000, population="v2"), make_case(site, 1000, population="v2")
    assert digest(a) == digest(b) != V1_DIGESTS[site, 1000]
    assert a.case_id == f"{site}1000-v2"
    assert populations(site) == ("v1", "v2")


def test_unknown_population_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"no population 'v3' for the prostate phantom; populations: v1, v2"):
        make_case("prostate", 0, population="v3")


def test_v2_prostate_spans_easy_and_hard_overlaps():
    """30 v2 pelves: volumes in the drawn ranges, and both rectum and bladder overlaps spread from
    under the 3.5 % / 5 % cut-offs of Mattes et al. to well above (v1: rectum ≤ 16 %, bladder ≤ 9 %)."""
    rows = [prostate_geometry(make_case("prostate", s, population="v2")) for s in range(2000, 2030)]
    ctv = np.array([r["ctv_cc"] for r in rows])
    rectum, bladder = (np.array([r[k] for r in rows]) for k in ("rectum_in_ptv_pct", "bladder_in_ptv_pct"))
    lo, hi = prostate_phantom.V2["prostate_cc"]
    assert ctv.min() >= 0.8 * lo and ctv.max() <= 1.6 * hi  # gland within its range, plus the vesicles
    assert rectum.min() < 5.0 and rectum.max() > 20.0 and np.mean(rectum > 13.0) > 0.3
    assert bladder.min() < 7.0 and bladder.max() > 25.0


@pytest.mark.slow
def test_v2_hn_parotids_like_the_seed_004_cohort():
    """20 v2 patients: left- and right-proximal parotids both common, most glands overlapping the
    44 Gy PTV by ≤ 21 % (Hunt et al. 2006: 76 %), the sides' overlaps and distances alike."""
    from rtautoplan.policies.env_base import single_level
    from rtautoplan.structures.rules import apply_rules

    rows = [hn_geometry(apply_rules(single_level(make_case("hn", s, population="v2"), 44.0, 22), "hn"), "PTV_4400")
            for s in range(2000, 2020)]
    proximal = [r["proximal"] for r in rows]
    assert 6 <= proximal.count("L") <= 14
    overlap = np.array([[r["LP_in_ptv_pct"], r["RP_in_ptv_pct"]] for r in rows])
    distance = np.array([[r["LP_median_distance_mm"], r["RP_median_distance_mm"]] for r in rows])
    assert 0.55 <= np.mean(overlap <= 21.0) <= 0.9 and overlap.max() > 21.0
    assert abs(overlap[:, 0].mean() - overlap[:, 1].mean()) < 6.0
    assert abs(distance[:, 0].mean() - distance[:, 1].mean()) < 4.0
    lo, hi = hn_phantom.V2["parotid_cc"]
    assert all(0.7 * lo <= r[f"{side}_cc"] <= hi for r in rows for side in ("LP", "RP"))


def test_median_distance_is_zero_inside_and_the_gap_outside():
    case = make_case("prostate", 0)
    target = np.zeros(case.grid.shape, bool)
    target[:, :, :40] = True  # x index < 40
    organ = np.zeros_like(target)
    organ[:, :, 45] = True  # 6 columns from the target's last one (39)
    assert median_distance_mm(case, organ, target) == pytest.approx(6 * case.grid.spacing[2])
    assert median_distance_mm(case, target, target) == 0.0


# -- plan-specific goals (relative_loss.bound_goals)

@pytest.fixture(scope="module")
def hn44():
    from rtautoplan.policies.env_base import single_level
    from rtautoplan.structures.rules import apply_rules

    return apply_rules(single_level(make_case("hn", 1), 44.0, 22), "hn")


def test_bound_goals_hold_an_organ_under_its_goal_where_the_reference_left_it(hn44):
    from rtautoplan.scoring.relative_loss import bound_goals, default_goals, score

    oc = hn44.structure("Cavity_Oral").mask
    reference = np.where(hn44.structure("PTV_4400").mask, 44.0, 10.0)  # OC 10 Gy outside the PTV: under 25
    goals = bound_goals(default_goals(hn44), reference, hn44)
    by = {(g.structure, g.metric): g for g in goals}
    assert by["Cavity_Oral", "Dmean"].goal_gy < 25.0  # lowered to the reference's value
    assert by["Parotid_L", "D50%"].goal_gy <= 15.0 and by["PTV_4400", "D95%"].goal_gy == 44.0  # coverage kept
    assert not by["PTV_4400", "D95%"].upper
    worse = np.where(oc & ~hn44.structure("PTV_4400").mask, 16.0, reference)  # OC up by 6 Gy, still < 25
    paper = score(worse, hn44).criteria
    bound = score(worse, hn44, goals=goals).criteria
    oc_term = {c.name: c.score for c in bound}["Cavity_Oral Dmean"]
    assert {c.name: c.score for c in paper}["Cavity_Oral Dmean"] == 0.0  # the §4.3 hinge cannot see it
    assert oc_term > 0.0  # the bound goal does
    assert score(reference, hn44, goals=goals).total <= score(worse, hn44, goals=goals).total - oc_term + 1e-12


def test_bound_goals_keep_a_goal_the_reference_misses(hn44):
    from rtautoplan.scoring.relative_loss import bound_goals, default_goals

    hot = np.full(hn44.grid.shape, 40.0)
    assert bound_goals(default_goals(hn44), hot, hn44) == default_goals(hn44)


def test_hn_env_goal_modes_are_checked():
    from rtautoplan.policies.env_hn_imrt import HNImrtEnv

    with pytest.raises(ValueError, match="goals must be one of"):
        HNImrtEnv(object, goals="clinical")


# -- the trained planners' records

@pytest.mark.parametrize("name", ["acer_prostate", "acer_prostate_seed0", "dqn_prostate", "sarsa_model1",
                                  "sarsa_model2"])
def test_committed_records_name_their_population_and_engine(name):
    record = json.loads((ROOT / "policies" / "weights" / f"{name}.json").read_text())
    assert record["population"] == "v1"
    assert record["engine"]["adapter"] == "inhouse-photon" and record["engine"]["n_beams"] == 7
    assert record["engine"]["dose_grid_factor"] == record["args"]["dose_grid_factor"]


@pytest.mark.parametrize("name", [None, "acer_prostate_v3"])
def test_the_default_acer_planner_was_trained_on_v2_and_says_how(name):
    """The default (None) and the v3 fine-tune of it (issue 16, s4)."""
    from rtautoplan.policies import acer

    path = acer.WEIGHTS if name is None else acer.WEIGHTS.parent / f"{name}.pt"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["population"] == "v2" and record["engine"]["dose_grid_factor"] == [1, 2, 2]
    assert record["command"].startswith("rtautoplan train acer ") and "--population v2" in record["command"]
    assert max(record["args"]["train_seeds"] + record["args"]["val_seeds"]) < 1000  # held-out seeds untouched


def test_new_training_defaults_to_the_calibrated_population():
    from rtautoplan.policies import acer, sarsa

    assert acer.Args().population == "v2" and sarsa.Args().population == "v2" and sarsa.Args().goals == "template"
    assert acer.engine_of(acer.Args())["dose_grid_factor"] == [1, 2, 2]


@pytest.mark.slow
def test_template_goals_bind_on_the_real_environment():
    """goals="template": after reset each OAR goal is the lower of the paper's and the template plan's
    value, so a term is 0 on the template exactly where the template is under the paper's goal."""
    from rtautoplan.policies.sarsa import make_env
    from rtautoplan.scoring.relative_loss import default_goals

    env = make_env(2, (1000,), population="v2", goals="template", max_steps=2)
    env.reset(seed=0, options={"case_seed": 1000})
    goals = {(g.structure, g.metric): g.goal_gy for g in env._planner.score_options["goals"]}
    paper = {(g.structure, g.metric): g.goal_gy for g in default_goals(env.case)}
    for c in env.last_score.criteria:
        key = (c.structure, c.metric)
        if c.structure in ("Parotid_L", "Parotid_R", "Cavity_Oral"):
            assert goals[key] == pytest.approx(min(paper[key], c.value))
            assert (c.score == 0.0) == (c.value <= paper[key])
    env.step(8)  # "Cavity_Oral D+2 Gy" (model 2): loosen the oral cavity's objective
    after = {c.name: c for c in env.last_score.criteria}["Cavity_Oral Dmean"]
    assert (after.score > 0.0) == (after.value > goals["Cavity_Oral", "Dmean"] + 1e-9)
