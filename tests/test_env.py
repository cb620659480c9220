"""The RL planning environments (policies/env*.py): parameter ↔ objective mappings, the checkers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.adapters.inhouse_proton import InHouseProton
from rtautoplan.case import Role
from rtautoplan.plan import Dose, ObjectiveKind as K
from rtautoplan.policies import env_carbon as C, env_hn_imrt as H, env_proton as P, tpp as T
from rtautoplan.policies.env import ENVS, CarbonHNEnv, HNImrtEnv, ProstateEnv, ProtonHNEnv
from rtautoplan.scoring import Criterion, Score

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's advice on unbounded/asymmetric Boxes


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dij")


def photon(cache):
    return InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=40, cache_dir=cache)


class FlatTPS:
    """A stand-in TPS: the prescription in the targets, 20 % of it elsewhere (Gy)."""

    name, modality = "flat", None

    def prepare(self, case, beams=None):
        self.case, self.calls = case, 0

    def optimize(self, objectives):
        self.calls += 1
        rx = self.case.prescription.rx_max
        targets = np.logical_or.reduce([s.mask for s in self.case.structures if s.role.is_target])
        return Dose(self.case.grid, np.where(targets, rx, 0.2 * rx).astype(np.float32))


def all_passed(dose_gy, case, **options):
    return Score("relative_loss", 0.0, 0.0, (Criterion("x", "PTV", "D95%", 44.0, "Gy", "", 0.0, 0.0, True),), False)


# ------------------------------------------------------------------ seed 000: TPPs and Table 1


def test_table_1_moves_and_clamps():
    t = T.trivial()
    assert t == T.Tpp(1, 1, 0.1, 1, 1, 1, 1, 1, 1)  # SPEC §1.12
    assert [T.action_name(a) for a in (0, 1, 2, 5, 17)] == ["lam_ptv+", "lam_ptv-", "t_ptv+", "v_ptv-", "v_rec-"]
    assert T.apply_action(t, 0).lam_ptv == pytest.approx(1.65) and T.apply_action(t, 1).lam_ptv == pytest.approx(0.6)
    assert T.apply_action(t, 2).t_ptv == pytest.approx(1.01)
    assert T.apply_action(t, 3).t_ptv == 1.0  # max(1, 0.91·t)
    assert T.apply_action(T.Tpp(1, 1.19, 0.1, 1, 1, 1, 1, 1, 1), 2).t_ptv == 1.2  # min(1.2, 1.01·t)
    assert T.apply_action(T.Tpp(1, 1, 0.28, 1, 1, 1, 1, 1, 1), 4).v_ptv == 0.3  # min(0.3, 1.25·V)
    assert T.apply_action(t, 5).v_ptv == pytest.approx(0.08)
    assert T.apply_action(t, 8).t_bla == 1.0 and T.apply_action(t, 9).t_bla == pytest.approx(0.6)  # t_OAR ≤ 1
    assert T.apply_action(t, 16).v_rec == 1.0 and T.apply_action(t, 17).v_rec == pytest.approx(0.8)  # V_OAR ≤ 1
    assert T.apply_action(t, 12).lam_rec == pytest.approx(1.65)
    moved = T.apply_action(t, 13)
    assert [n for n in T.NAMES if getattr(moved, n) != getattr(t, n)] == ["lam_rec"]  # one TPP per action
    with pytest.raises(ValueError):
        T.apply_action(t, 18)


def test_random_tpps_inside_the_ranges():
    a, b = T.random_tpp(np.random.default_rng(3)), T.random_tpp(np.random.default_rng(3))
    assert a == b
    for tpp in (T.random_tpp(np.random.default_rng(s)) for s in range(20)):
        for name, v in tpp.as_dict().items():
            lo, hi = T.RANDOM_RANGES[T.KIND[name]]
            assert lo <= v <= hi


def test_prostate_env_checker_and_reward(cache):
    env = ProstateEnv(photon(cache), case_seeds=(1, 2))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=4, options={"init": "trivial", "case_seed": 1})
    assert obs.shape == (3, 100) and info["parameters"] == T.trivial().as_dict() and info["case_id"] == "prostate01"
    objectives = env.objectives
    assert [(o.structure, o.kind) for o in objectives] == [("PTV_7800", K.DMIN), ("PTV_7800", K.DV_MAX),
                                                          ("Bladder", K.DV_MAX), ("Rectum", K.DV_MAX),
                                                          ("zRing_7800", K.DMAX)]  # the fixed NTO
    assert objectives[-1].dose_gy == pytest.approx(0.93 * 78.0) and not objectives[-1].adjustable
    assert objectives[1].dose_gy == pytest.approx(78.0) and objectives[1].volume == pytest.approx(0.1)
    from rtautoplan import dvh

    ptv = np.flatnonzero(env.case.structure("PTV_7800").mask)
    assert dvh.d_percent(env.last_dose.gy, ptv, 95.0) == pytest.approx(78.0, rel=1e-3)  # D95 = d_p (SPEC §1.3)
    before = env.last_score.total
    obs, reward, terminated, truncated, info = env.step(9)  # t_BLA × 0.6
    assert info["action"] == {"index": 9, "name": "t_bla-"} and info["parameters"]["t_bla"] == pytest.approx(0.6)
    assert reward == pytest.approx(env.last_score.total - before)  # Δψ (SPEC §1.8)
    assert obs in env.observation_space and not truncated


# ------------------------------------------------------------------ seed 004


def test_hn_imrt_actions_and_template():
    p = H.template_positions()
    assert p["Parotid_L"] == H.Position(15.0, 50.0) and p["Cavity_Oral"] == H.Position(25.0, 50.0)
    assert H.n_actions(1) == 6 and H.n_actions(2) == 12
    assert H.apply_action(p, 1, 1)["Parotid_L"].d_gy == 13.0  # −2 Gy
    assert H.apply_action(p, 4, 1)["Cavity_Oral"].d_gy == 27.0  # +2 Gy
    assert H.apply_action(p, 6, 2)["Parotid_R"].v_pct == 55.0  # +5 %
    low = {**p, "Parotid_L": H.Position(1.0, 5.0)}
    assert H.apply_action(low, 1, 2)["Parotid_L"].d_gy == 0.0 and H.apply_action(low, 3, 2)["Parotid_L"].v_pct == 5.0
    assert H.action_name(11, 2) == "Cavity_Oral V-5 %"


def test_hn_imrt_parotid_limit_is_the_far_end_of_the_action_space():
    limit = H.parotid_limit_positions()
    assert limit["Parotid_L"] == limit["Parotid_R"] == H.Position(H.D_BOUNDS_GY[0], H.V_BOUNDS_PCT[1])
    assert limit["Cavity_Oral"] == H.template_positions()["Cavity_Oral"]
    assert all(H.apply_action(limit, a, 2) == limit for a in (1, 2, 5, 6))  # parotid D −2 Gy, V +5 %: clamped
    assert all(H.apply_action(limit, a, 2) != limit for a in (0, 3, 4, 7))


def test_hn_imrt_env_checker(cache):
    env = HNImrtEnv(photon(cache), model=2, case_seeds=(1,))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (14,) and tuple(obs[[2, 3, 6, 7, 10, 11]]) == (15.0, 50.0, 15.0, 50.0, 25.0, 50.0)
    tuned = [o for o in env.objectives if o.adjustable]
    assert [(o.structure, o.kind, o.dose_gy, o.volume) for o in tuned] == [
        ("Parotid_L", K.DV_MAX, 15.0, 0.5), ("Parotid_R", K.DV_MAX, 15.0, 0.5), ("Cavity_Oral", K.DV_MAX, 25.0, 0.5)]
    assert env.case.prescription.rx_max == 44.0 and env.case.has("PTV_4400")
    before = env.last_score.total
    obs, reward, *_ = env.step(1)
    assert obs[2] == 13.0 and reward == pytest.approx(before - env.last_score.total)  # L_{t−1} − L_t (SPEC §4.3)


def test_hn_imrt_terminates_when_all_goals_met():
    env = HNImrtEnv(FlatTPS, case_seeds=(1,), scorer=all_passed)
    env.reset(seed=0)
    assert env.step(0)[2] is True


# ------------------------------------------------------------------ seed 002


def test_proton_selection_and_update_rule():
    scores = {"A": -0.1, "B": -2.0, "C": 0.0, "D": -2.0}
    assert P.select(scores, ["A", "B", "C", "D"], 3) == ("B", "D", "A")  # worst first, stable
    params = {"A": (1.0, 20.0), "B": (1.0, 30.0), "C": (2.0, 10.0)}
    new, applied = P.apply_action(params, ("B", "A"), np.array([0.2, -0.1, 0.9, 0.3]))
    assert new["B"] == pytest.approx((1.2, 27.0)) and new["A"] == pytest.approx((1.5, 20.0))  # clipped (SPEC §2.8)
    assert new["C"] == params["C"] and applied == {"B": pytest.approx((0.2, -0.1)), "A": (0.5, 0.0)}


def test_proton_env_checker(cache):
    tps = InHouseProton(n_beams=2, dose_grid_factor=(2, 4, 4), spot_spacing_mm=8.0, max_iter=20, cache_dir=cache)
    env = ProtonHNEnv(tps, case_seeds=(1,))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=2)
    assert obs.shape == (P.M_MAX, P.DVH_POINTS + 4) and env.action_space.shape == (2 * P.K_SELECTED,)
    rows = P.rows_of(env.case)
    assert np.all(obs[len(rows):] == 0) and np.all(obs[:len(rows), P.DVH_POINTS] > 0)  # padding rows, type codes
    assert len(info["selected"]) == P.K_SELECTED and set(info["selected"]) <= set(env.params)
    worst = info["selected"][0]
    w, d = env.params[worst]
    action = np.tile(np.array([0.5, -0.5], np.float32), P.K_SELECTED)
    before = env.last_score.total
    _, reward, terminated, truncated, info = env.step(action)
    assert env.params[worst] == pytest.approx((1.5 * w, 0.5 * d)) and info["action"][worst] == (0.5, -0.5)
    assert reward == pytest.approx(env.last_score.total - before) and not terminated and not truncated


# ------------------------------------------------------------------ seed 003


def test_carbon_parameters_and_map():
    assert len(C.PARAMETERS) == 45 and len(set(C.AGENTS)) == 45  # SPEC §3.3
    p = C.PARAMETERS[0]
    assert C.value(p, -5, 70.0) == pytest.approx(70.0) and C.value(p, 5, 70.0) == pytest.approx(77.0)
    assert C.value(p, 0, 70.0) == pytest.approx(73.5) and C.value(p, 9, 70.0) == C.value(p, 5, 70.0)
    assert list(C.step_index(np.array([5, -5, 0]), np.array([1, -1, 1]))) == [5, -5, 1]  # clipped to [−b, b]
    from rtautoplan.adapters.phoenix_api.engine import BOUNDS

    for p in C.PARAMETERS:  # every value the map can give is accepted by the PHOENIX API
        lo, hi = BOUNDS["weight" if p.field == "weight" else "obj_value"]
        scale = 100.0 if p.field == "volume" else 1.0
        assert lo <= scale * C.value(p, -5, 70.0) < scale * C.value(p, 5, 70.0) <= hi
    assert C.value(C.PARAMETERS[9], 0, 70.0) == 45.0  # Brainstem obj_value midpoint = its Table A2 goal


def test_carbon_parallel_api():
    from pettingzoo.test import parallel_api_test

    from rtautoplan.adapters.phoenix import PhoenixAdapter
    from rtautoplan.adapters.phoenix_api import PhoenixServer

    with PhoenixServer(workers=1, dose_grid_mm=8.0, spot_spacing_mm=6.0) as server:
        env = CarbonHNEnv(lambda: PhoenixAdapter(server=server, max_iterations=30), case_seeds=(1,), max_steps=3)
        parallel_api_test(env, num_cycles=10)
        obs, infos = env.reset(seed=1)
        agent = env.agents[0]
        assert obs[agent].shape == (19, 150) and len(env.agents) == 45
        assert infos[agent]["parameters"][agent] == pytest.approx(73.5)  # CTV Max obj_value at the midpoint, 70 Gy(RBE)
        # every level planned (issue 12): 4 CTV objectives on each of 3 CTVs, 18 OAR Max, the Gap NTOs
        kinds = [o.kind for o in env.objectives if o.structure.startswith("CTV_")]
        gaps = [o for o in env.objectives if o.structure.startswith("zGap_")]
        assert len(kinds) == 12 and len(env.objectives) == 12 + 18 + len(gaps) and 1 <= len(gaps) <= 3
        assert env.case.prescription.rx_max == 70.0
        _, rewards, terms, truncs, infos = env.step({a: 2 for a in env.agents})
        assert rewards[agent] == pytest.approx(env.last_score.total - 0.5 * env.last_score.maximum)  # SPEC §3.4
        assert not any(terms.values()) and env.x.tolist() == [1] * 45
        for _ in range(2):
            _, _, _, truncs, _ = env.step({})
        assert all(truncs.values()) and env.agents == []


HN01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"


def test_carbon_env_plans_every_level_of_hn01():
    """hn01's three levels (70/60/54 Gy(RBE)) stay: every input ROI with its drawn mask, each CTV with
    the 4 Table A1 CTV objectives at its own Rx (midpoint parameters: Max 1.05, Min 0.95, Uniform and
    DVHmin 1.00 × Rx), the CTV state row and the score rows of each CTV. (Before issue 12 the env kept
    CTV_7000 only; coarse dose grid and 30 iterations: this checks the set-up, not the plan.)"""
    from rtautoplan.adapters.phoenix import PhoenixAdapter
    from rtautoplan.adapters.phoenix_api import PhoenixServer
    from rtautoplan.dicom.read import read_case

    raw = read_case(HN01)
    with PhoenixServer(workers=1, dose_grid_mm=8.0, spot_spacing_mm=6.0) as server:
        env = CarbonHNEnv(lambda: PhoenixAdapter(server=server, max_iterations=30), case=raw, max_steps=1)
        obs, _ = env.reset(seed=0)
    case = env.case
    assert {s.name for s in raw.structures} <= {s.name for s in case.structures}
    for s in raw.structures:
        assert np.array_equal(case.structure(s.name).mask, s.mask), s.name
    assert [(lv.target, lv.dose_gy) for lv in case.prescription.levels] == [
        ("CTV_7000", 70.0), ("CTV_6000", 60.0), ("CTV_5400", 54.0)]
    assert C.ctv_levels(case) == (("CTV_7000", 70.0), ("CTV_6000", 60.0), ("CTV_5400", 54.0))
    doses = {(o.structure, o.kind): o.dose_gy for o in env.objectives}
    for name, rx in C.ctv_levels(case):
        assert [doses[(name, k)] for k in (K.DMAX, K.DMIN, K.UNIFORM, K.DVH_MIN)] == pytest.approx(
            [1.05 * rx, 0.95 * rx, rx, rx])
        assert case.structure(name).voxels.any()
    assert len(env.agents) == 45 and obs[env.agents[0]][0].max() == pytest.approx(1.0)  # the CTV row
    scored = {c.structure for c in env.last_score.scored if c.metric == "V95%"}
    assert scored == {"CTV_7000", "CTV_6000", "CTV_5400"}


def test_carbon_without_ctv_is_an_input_error():
    """Seed 003 plans CTVs: a case whose targets are PTVs only (or a level without a CTV) stops with
    an InputError naming the case and the fix."""
    from dataclasses import replace

    from rtautoplan.errors import InputError
    from rtautoplan.phantom import make_case

    case = make_case("hn", 1)
    ptv_only = case.with_structures(tuple(replace(s, role=Role.PTV, name=s.name.replace("CTV", "PTV"))
                                          if s.role is Role.CTV else s for s in case.structures))
    ptv_only = replace(ptv_only, prescription=replace(ptv_only.prescription, levels=tuple(
        replace(lv, target=lv.target.replace("CTV", "PTV")) for lv in case.prescription.levels)))
    env = CarbonHNEnv(FlatTPS, case=ptv_only)
    with pytest.raises(InputError, match="CTV") as error:
        env.reset(seed=0)
    assert error.value.where == f"case {case.case_id!r}" and "Contour the CTV" in error.value.fix
    no_5400 = case.with_structures(tuple(s for s in case.structures if s.name != "CTV_5400"))
    with pytest.raises(InputError, match="54 Gy.*no CTV"):
        CarbonHNEnv(FlatTPS, case=no_5400).reset(seed=0)


@pytest.mark.slow
def test_carbon_plan_of_hn01_is_clinically_acceptable():
    """The default carbon setup (rule-based planner, PHOENIX simulator) on hn01, measured on the plan's
    dose after normalising CTV_7000 to D95 = 70 Gy(RBE): every CTV D98 ≥ 95 % of its Rx and no voxel
    outside the CTVs/PTVs above 107 % of Rx_max (issue 12)."""
    from rtautoplan.dicom.read import read_case
    from rtautoplan.dvh import d98, d_percent
    from rtautoplan.pipeline import plan_case

    raw = read_case(HN01)
    case, result = plan_case(raw, "hn", "carbon")
    gy = result.plan.dose.gy
    gy = gy * 70.0 / d_percent(gy, raw.structure("CTV_7000").mask, 95.0)
    for name, rx in (("CTV_7000", 70.0), ("CTV_6000", 60.0), ("CTV_5400", 54.0)):
        assert d98(gy, case.structure(name).mask) >= 0.95 * rx, name
    targets = np.logical_or.reduce([s.mask for s in case.by_role(Role.CTV, Role.PTV)])
    assert gy[~targets].max() <= 1.07 * 70.0


def test_registry():
    assert ENVS == {"prostate": ProstateEnv, "hn_imrt": HNImrtEnv, "proton_hn": ProtonHNEnv, "carbon_hn": CarbonHNEnv}
    assert math.isclose(C.value(C.PARAMETERS[7], 0, 70.0), 0.95)
