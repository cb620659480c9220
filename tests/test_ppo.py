"""PPO + Transformer of seed 002 (policies/ppo.py, SPEC §2.8, §2.10–§2.11): feature selection, GAE, the
loss, action semantics, the cheap environment, reproducible training and rollout backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from rtautoplan.policies import ppo
from rtautoplan.policies.env_proton import DVH_POINTS, M_MAX, rows_of


@pytest.fixture(scope="module")
def env():
    return ppo.make_env((1000,))


def test_network_selects_the_rows_the_environment_adjusts(env):
    """The actor's slots are the env's ``selected`` OARs, in the same order (worst score first)."""
    for reset_seed in (0, 3):
        obs, _ = env.reset(seed=reset_seed)
        idx, valid = ppo.selected_rows(torch.as_tensor(obs)[None])
        rows = rows_of(env.case)
        names = tuple(rows[i].name for i, v in zip(idx[0].tolist(), valid[0].tolist()) if v)
        assert names == env.selected and len(names) == 8


def test_selection_skips_targets_and_marks_missing_slots():
    """Targets and Rings are never selected, however low their score; fewer OARs than K leave empty slots."""
    obs = torch.zeros(1, M_MAX, DVH_POINTS + 4)
    obs[0, :3, ppo.TYPE_COL] = 0.25  # CTVs with the worst scores
    obs[0, :3, ppo.SCORE_COL] = -10.0
    obs[0, 3:6, ppo.TYPE_COL] = 1.0  # three OARs
    obs[0, 3:6, ppo.SCORE_COL] = torch.tensor([-0.1, -0.5, 0.0])
    idx, valid = ppo.selected_rows(obs, k=5)
    assert idx[0, :3].tolist() == [4, 3, 5]
    assert valid[0].tolist() == [True, True, True, False, False]


def test_gae_matches_hand_computation():
    """Eq. 7 with γ = 0.9, λ = 0.5 on a 3-step episode ending in a truncation (V(s_3) = 2 bootstraps)."""
    r, v = np.array([1.0, 0.0, -1.0]), np.array([0.5, 1.0, 0.0, 2.0])
    d = r + 0.9 * v[1:] - v[:-1]  # δ = [1.4, −1.0, 0.8]
    a2 = d[2]
    a1 = d[1] + 0.45 * a2
    a0 = d[0] + 0.45 * a1
    assert np.allclose(ppo.gae(r, v, 0.9, 0.5), [a0, a1, a2])


def test_std_is_state_independent_and_greedy_action_respects_section_2_8():
    torch.manual_seed(0)
    net = ppo.PPONet(d_model=16, n_layers=1, n_heads=2, ffn=16)
    obs = torch.rand(3, M_MAX, DVH_POINTS + 4)
    obs[..., ppo.TYPE_COL] = 1.0
    dist, value = net.dist(obs)
    assert dist.mean.shape == (3, 16) and value.shape == (3,)
    assert torch.equal(dist.stddev[0], dist.stddev[1])
    a = ppo.greedy_action(np.array([0.9, 0.3, -0.2, -0.9] * 4))
    assert a[:4].tolist() == pytest.approx([0.5, 0.0, 0.0, -0.5])


def test_clipped_objective_stops_the_gradient_beyond_the_clip_range():
    """With a ratio already above 1 + μ and a positive advantage the policy term has no gradient."""
    torch.manual_seed(0)
    net = ppo.PPONet(d_model=16, n_layers=1, n_heads=2, ffn=16)
    obs = torch.rand(2, M_MAX, DVH_POINTS + 4)
    obs[..., ppo.TYPE_COL] = 1.0
    args = ppo.Args(vf_coef=0.0, ent_coef=0.0, norm_adv=False)
    with torch.no_grad():
        dist, _ = net.dist(obs)
        actions = dist.mean.clone()
        old = dist.log_prob(actions).sum(-1) - 1.0  # ratio e ≈ 2.7 > 1.3
    loss, stats = ppo.ppo_loss(net, obs, actions, old, torch.ones(2), torch.zeros(2), args)
    net.zero_grad()
    loss.backward()
    assert stats["clipfrac"] == 1.0
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in net.parameters())


def test_cheap_environment_passes_check_env():
    check_env(ppo.make_env((1001,)), skip_render_check=True)


def _tiny(tmp_path, name, **kw):
    return ppo.Args(total_steps=4, n_envs=2, episodes_per_env=1, t_epi=1, batch_size=2, d_model=16, n_layers=1,
                    n_heads=2, ffn=16, train_seeds=(1000,), out=str(tmp_path / name / "w.pt"), progress=False, **kw)


@pytest.mark.slow
def test_short_training_run_is_bit_identical_twice(tmp_path):
    records = [ppo.train(_tiny(tmp_path, n), validate_fn=None) for n in ("a", "b")]
    a, b = (torch.load(tmp_path / n / "w.pt", weights_only=True)["state_dict"] for n in ("a", "b"))
    assert records[0].steps == records[1].steps == 4
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "w.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["process", "ray"])
def test_parallel_rollouts_give_the_serial_batch(tmp_path, backend):
    """Two worker processes (or two Ray actors) play the same jobs to the same trajectories as one process."""
    if backend == "ray":
        pytest.importorskip("ray")
    args = _tiny(tmp_path, "p")
    jobs = [ppo.Job(e, 11 + e, 21 + e) for e in range(2)]
    net = ppo._net_for(args)
    serial = ppo.SerialRollouts(args).play(net.state_dict(), jobs)
    pool = ppo.ROLLOUTS[backend](ppo.Args(**{**args.__dict__, "rollout": backend}))
    try:
        parallel = pool.play(net.state_dict(), jobs)
    finally:
        pool.close()
    for s, p in zip(serial, parallel):
        assert np.array_equal(s.obs, p.obs) and np.array_equal(s.actions, p.actions)
        assert np.array_equal(s.rewards, p.rewards)


def test_train_command_reads_args():
    from rtautoplan.training import parse

    args = parse(ppo.Args, ["--total-steps", "48", "--rollout", "process", "--val-seeds", "900"], "t")
    assert args.total_steps == 48 and args.rollout == "process" and args.val_seeds == (900,)
    assert args.clip == 0.3 and args.vf_coef == 0.8 and args.ent_coef == 0.005


def _fig6_plans():
    """A plan with full coverage (CTVs 1.012–1.03 Rx, PTVs at Rx, OARs at 30 Gy) and the same plan with
    Fig. 6's coverage loss on the highest-dose CTV (coldest 1.2 % of voxels at 0.927–0.985 Rx: D99 < Rx,
    V99 ≈ 98.8 %); returns (case, plan, plan with lost coverage, dose·voxels taken from the CTV)."""
    from rtautoplan.case import Role
    from rtautoplan.phantom import make_case
    from rtautoplan.scoring.base import evaluation_mask
    from rtautoplan.structures.rules import apply_rules

    case = apply_rules(make_case("hn", 1000), "hn")
    gy = np.full(case.structures[0].mask.shape, 5.0)
    for s in case.by_role(Role.OAR):
        gy[evaluation_mask(s)] = 30.0
    for s in sorted(case.by_role(Role.PTV), key=lambda s: s.rx_gy):
        gy[s.mask] = s.rx_gy
    rng = np.random.default_rng(0)
    for s in sorted(case.by_role(Role.CTV), key=lambda s: s.rx_gy):
        gy[s.mask] = s.rx_gy * rng.uniform(1.012, 1.03, s.mask.count)
    top = max(case.by_role(Role.CTV), key=lambda s: s.rx_gy)
    lost, m = gy.copy(), evaluation_mask(top)
    d = lost[m]
    cold = np.argsort(d)[: int(round(0.012 * d.size))]
    new = top.rx_gy * np.linspace(0.927, 0.985, cold.size)
    energy = float((d[cold] - new).sum())
    d[cold] = new
    lost[m] = d
    return case, gy, lost, energy


def test_fig6_lower_oar_dose_bought_with_coverage_gets_a_negative_reward():
    """SPEC §2.14 Fig. 6: the dose taken from the CTV's cold tail spent on sparing a level-3 OAR (Parotid_L,
    Cavity_Oral: the same Gy·voxels off their non-target voxels) is a net loss; spent on a level-1 OAR
    (SpinalCord, Brainstem), which ranks above the targets (§2.4) and is summed, not averaged, it pays."""
    from rtautoplan import scoring
    from rtautoplan.case import Role
    from rtautoplan.policies.ppo_eval import coverage
    from rtautoplan.scoring.base import evaluation_mask

    case, plan, lost, energy = _fig6_plans()
    top = max(case.by_role(Role.CTV), key=lambda s: s.rx_gy).name
    rx, d99, v99 = coverage(lost, case)[top]
    assert d99 < rx and 98.0 < v99 < 99.5 and coverage(plan, case)[top][2] == 100.0
    targets = np.logical_or.reduce([s.mask for s in case.by_role(Role.CTV, Role.PTV)])

    def reward(organ):
        spared = lost.copy()
        idx = np.flatnonzero(evaluation_mask(case.structure(organ)) & ~targets)
        spared.flat[idx] -= energy / idx.size
        assert spared.flat[idx].mean() < plan.flat[idx].mean()
        score = scoring.SCORERS["dose_distribution"]
        return scoring.reward("dose_distribution", score(plan, case), score(spared, case))

    assert reward("Parotid_L") < 0 and reward("Cavity_Oral") < 0
    assert reward("SpinalCord") > 0 and reward("Brainstem") > 0


def test_committed_weights_plan_within_section_2_8(env):
    """The committed planner loads through ``POLICIES`` and its moves stay in §2.8's ranges."""
    from rtautoplan.pipeline import make_policy

    policy = make_policy("ppo", env)
    obs, _ = env.reset(seed=0)
    ranked = policy.rank(obs)
    a = ranked[0][0].reshape(-1, 2)
    assert a.shape == (8, 2) and ranked[0][1] == pytest.approx(1.0)
    assert (a[:, 0] >= 0).all() and (a[:, 0] <= 0.5).all() and (a[:, 1] >= -0.5).all() and (a[:, 1] <= 0).all()
    assert np.allclose(ranked[1][0], ranked[0][0] * 0.5)


def test_evaluation_table_counts_coverage_and_improvement():
    from rtautoplan.policies import ppo_eval

    def row(policy, seed, after, ctv, d99, v99):
        return {"policy": policy, "case_seed": seed, "before": -1.0, "after": after, "steps": 2, "time_s": 3.0,
                "ctv": ctv, "rx_gy": 70.0, "d99_before": 70.0, "d99_after": d99, "v99_before": 99.0, "v99_after": v99,
                "oar_dmean_change_gy": -1.0}

    rows = [row("ppo", 1000, -0.5, "CTV_7000", 69.4, 99.0), row("ppo", 1001, -1.2, "CTV_7000", 68.0, 96.0),
            row("rule-based", 1000, -0.8, "CTV_7000", 70.0, 99.5), row("rule-based", 1001, -0.9, "CTV_7000", 70.0, 99.5)]
    text = ppo_eval.table(rows)
    assert "| ppo | 2 | -0.850 ± 0.495 | 1/2 |" in text and "| 1/2 | 1/2 | -1.00 |" in text
    assert "| initial L-BFGS | 2 | -1.000 ± 0.000 | – |" in text
    assert ppo_eval.head_to_head(rows).startswith("ppo vs rule-based on 2 cases: eq. 9 score better on 1, worse on 1")


def test_coverage_deficit_counts_each_ctv_below_99_percent_of_its_rx():
    """Σ_CTV max(0, 0.99 − D99/Rx): 0 for the Fig. 6 plan at Rx, the top CTV's shortfall for the cold-tail one."""
    from rtautoplan.case import Role
    from rtautoplan.policies.env_proton import coverage_deficit
    from rtautoplan.policies.ppo_eval import coverage

    case, plan, lost, _ = _fig6_plans()
    expected = sum(max(0.0, 0.99 - d99 / rx) for rx, d99, _ in coverage(lost, case).values())
    top = max(case.by_role(Role.CTV), key=lambda s: s.rx_gy).name
    rx, d99, _ = coverage(lost, case)[top]
    assert d99 / rx < 0.99 and coverage_deficit(lost, case) == pytest.approx(expected) and expected > 0
    cold = plan.copy()
    for s in sorted(case.by_role(Role.CTV), key=lambda s: s.rx_gy):  # nested CTVs: the higher Rx last
        cold[s.mask] = 0.95 * s.rx_gy
    assert coverage_deficit(cold, case) == pytest.approx(0.04 * len(case.by_role(Role.CTV)), abs=1e-6)
    assert coverage_deficit(cold, case, floor=0.9) == 0.0


def test_coverage_aware_reward_subtracts_lambda_times_the_deficit_change(env):
    """Same reset, same action: the λ = 50 reward is eq. 10's minus 50 × the change of the coverage deficit,
    and the deficit the env holds is the one of its dose."""
    from rtautoplan.policies.env_proton import coverage_deficit

    covered = ppo.make_env((1000,), coverage_lambda=50.0)
    action = np.tile([0.5, -0.5], 8)  # every selected OAR: w × 1.5, D × 0.5: pulls dose off the targets' edge
    rewards, deficits = [], []
    for e in (env, covered):
        e.reset(seed=7)
        before = e.coverage_deficit
        assert before == pytest.approx(coverage_deficit(e.last_dose.gy, e.case))
        rewards.append(e.step(action)[1])
        deficits.append((before, e.coverage_deficit))
    assert deficits[0] == pytest.approx(deficits[1]) and deficits[1][1] > deficits[1][0]
    assert rewards[1] == pytest.approx(rewards[0] - 50.0 * (deficits[1][1] - deficits[1][0]), abs=1e-9)
    with pytest.raises(ValueError, match="coverage_lambda"):
        ppo.make_env((1000,), coverage_lambda=-1.0)


def test_loop_coverage_guard_rolls_back_a_step_that_buys_score_with_ctv_d99(env):
    """The aggressive move above raises eq. 9 but takes a CTV's D99 under 99 % Rx: the loop keeps it without
    the guard and rolls it back (rule "coverage floor") with ``coverage_guard=0.99``, for any planner."""
    from rtautoplan.loop import run_loop

    class Constant:
        name = "constant"

        def act(self, observation):
            return np.tile([0.5, -0.5], 8)

    kept = run_loop(env, Constant(), 1, seed=7, options={"case_seed": 1000})
    assert kept.steps[0].accepted and kept.best_step == 1 and env.coverage_deficit > 0
    guarded = run_loop(env, Constant(), 1, seed=7, options={"case_seed": 1000}, coverage_guard=0.99)
    step = guarded.steps[0]
    assert not step.accepted and step.rule == "coverage floor" and "D99" in step.reason
    assert guarded.best_step == 0 and env.coverage_deficit == 0.0


def test_default_weights_are_the_coverage_run_and_default_args_the_first_run():
    """The planner loads the coverage-aware fine-tuning (its record: λ = 50 from the first run's weights);
    ``Args()`` still reproduces the first, eq. 10 run into its own file."""
    import json

    record = json.loads(ppo.WEIGHTS.with_suffix(".json").read_text())
    assert record["args"]["coverage_lambda"] == 50.0
    assert record["args"]["init_weights"] == "policies/weights/ppo_proton_hn.pt"
    assert ppo.FIRST_RUN.name == "ppo_proton_hn.pt" and ppo.Args().out == str(ppo.FIRST_RUN)
    assert ppo.Args().coverage_lambda == 0.0 and ppo.Args().init_weights is None


def test_evaluate_command_reads_the_table_options():
    from pathlib import Path

    from rtautoplan.cli import parser

    args = parser().parse_args(["evaluate", "--policy", "ppo", "--site", "hn", "--modality", "proton", "--planners",
                                "ppo", "rule-based", "--weights", "w.pt", "--coverage-guard", "0.99"])
    assert args.planners == ["ppo", "rule-based"] and args.weights == Path("w.pt") and args.coverage_guard == 0.99
    assert parser().parse_args(["evaluate"]).coverage_guard is None


def test_proton_hn_plans_with_ppo_and_the_coverage_guard_when_asked():
    """``plan --modality proton --policy ppo`` on H&N: PPO with its committed weights, on its engine, with the
    loop's CTV D99 guard at 99 % Rx; the default stays the rule-based setup (no guard, the finer engine), since
    PPO's leaving plan on hn01 spares the OARs less (docs/decisions.md)."""
    from rtautoplan.phantom import make_case
    from rtautoplan.pipeline import PPO_HN, prepare, setup_for

    assert setup_for("hn", "proton", "ppo") is PPO_HN
    assert PPO_HN.adapter_options == ppo.ENGINE and PPO_HN.max_steps == 4 and PPO_HN.coverage_guard == 0.99
    rule = setup_for("hn", "proton")
    assert rule.policy == "rule-based" and rule.coverage_guard is None and rule.max_steps == 8
    case = make_case("hn", 1000)
    planning = prepare(case, "hn", "proton", policy="ppo")
    assert planning.coverage_guard == 0.99 and planning.planner.name == "ppo"
    assert planning.planner.weights_path == ppo.WEIGHTS and planning.env.tps.spot_spacing_mm == ppo.ENGINE["spot_spacing_mm"]
    default = prepare(case, "hn", "proton")
    assert default.coverage_guard is None and default.planner.name == "rule-based"


def test_liver_sites_plan_with_the_liver_model_trained_on_liver_phantoms(capsys):
    """Seed 002 §2.15's liver model: its record says liver phantoms 0–19, validation 900–903, the coverage
    run's reward, fine-tuned from the H&N planner; a liver environment loads it, an H&N one the H&N weights;
    a site without phantoms stops ``train ppo`` in one line."""
    import json

    from rtautoplan.cli import main

    record = json.loads(ppo.LIVER_WEIGHTS.with_suffix(".json").read_text())
    args = record["args"]
    assert args["site"] == "liver" and args["train_seeds"] == list(range(20)) and args["val_seeds"] == [900, 901, 902, 903]
    assert args["coverage_lambda"] == 50.0 and args["init_weights"] == "policies/weights/ppo_proton_hn_cov.pt"
    assert record["population"].startswith("liver phantom variants, seeds 0–19")
    assert ppo.load(ppo.make_env((1000,), site="liver")).weights_path == ppo.LIVER_WEIGHTS
    assert ppo.load(ppo.make_env((1000,))).weights_path == ppo.WEIGHTS
    from rtautoplan.pipeline import setup_for

    liver = setup_for("liver", "proton", "ppo")  # --policy ppo: the engine it was trained on, the guard
    assert liver.env_options == {"site": "liver"} and liver.adapter_options == ppo.ENGINE and liver.coverage_guard == 0.99
    assert setup_for("liver", "proton").policy == "rule-based"  # the liver model does not beat it (docs/results.md)
    assert main(["train", "ppo", "--site", "lung", "--total-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "'lung' has no PPO phantom population" in err and "Traceback" not in err
