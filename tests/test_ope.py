"""Off-policy evaluation (SPEC §5.5): the estimators on logs whose true value is known, and
``rtautoplan ope`` on logged episodes of the ACER planner's shape (holds for any trained weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtautoplan.cli import main
from rtautoplan.ope import ESTIMATORS, Episodes, acer_target, estimates, evaluate, kept_rewards, read_logs, within
from rtautoplan.policies.behaviour import EpsilonSoft

A, T, D = 3, 3, 20


def bandit_chain(n: int, seed: int = 0) -> tuple[Episodes, np.ndarray, float]:
    """T steps, A actions, reward 1 for action 0 when the state's first feature is above 0.5 else for
    action 1; behaviour ε-greedy on action 2 (ε = 0.6), target π = (0.6, 0.3, 0.1): true value known."""
    rng = np.random.default_rng(seed)
    states = rng.random((n, T, D))
    mu_dist = np.array([0.2, 0.2, 0.6])
    actions = rng.choice(A, size=(n, T), p=mu_dist)
    good = np.where(states[..., 0] > 0.5, 0, 1)
    rewards = (actions == good).astype(float)
    pi = np.broadcast_to(np.array([0.6, 0.3, 0.1]), (n, T, A)).copy()
    truth = T * (0.5 * 0.6 + 0.5 * 0.3)
    ep = Episodes(states, actions, mu_dist[actions], rewards, np.ones((n, T), bool), np.ones((n, T, A), bool),
                  np.zeros(n), tuple(range(n)))
    return ep, pi, truth


def test_every_estimator_recovers_a_known_value_and_its_ci_covers_it():
    ep, pi, truth = bandit_chain(3000)
    result = evaluate(ep, pi, A, n_boot=200)
    for name in ESTIMATORS:
        lo, hi = result[name]["ci95"]
        assert within(result[name]["estimate"], truth), (name, result[name], truth)
        assert lo <= truth <= hi, (name, result[name], truth)
    assert result["effective sample size"] < 3000


def test_the_estimators_tell_a_better_policy_from_a_worse_one():
    ep, _, _ = bandit_chain(2000, seed=1)
    good = np.where(ep.states[..., 0:1] > 0.5, [0.9, 0.05, 0.05], [0.05, 0.9, 0.05])
    bad = np.broadcast_to([0.05, 0.05, 0.9], good.shape)
    high, low = estimates(ep, good, A), estimates(ep, bad, A)
    assert all(high[k] > low[k] + 1.0 for k in ("WIS", "PDIS", "DR", "WDR"))


def test_on_policy_logs_give_the_mean_return():
    ep, pi, _ = bandit_chain(500)
    mu = np.broadcast_to(ep.mu[..., None], pi.shape) * 0 + np.array([0.2, 0.2, 0.6])
    e = estimates(ep, mu, A)
    for k in ("IS", "WIS", "PDIS"):
        assert e[k] == pytest.approx(ep.returns.mean())


def _acer_shaped_logs(folder, n=12, steps=4, seed=0):
    """Episode logs of seed 000's shape (300-value states, 18 actions), actions drawn from ACER's own π."""
    rng = np.random.default_rng(seed)
    states = np.sort(rng.random((n, steps, 3, 100)), axis=-1)[..., ::-1].reshape(n, steps, 300)
    blank = Episodes(states, np.zeros((n, steps), int), np.ones((n, steps)), np.zeros((n, steps)),
                     np.ones((n, steps), bool), np.ones((n, steps, 18), bool), np.zeros(n), tuple(range(n)))
    pi = acer_target(blank)
    folder.mkdir()
    for i in range(n):
        log = {"case_seed": i, "initial score": 5.0, "steps": []}
        for t in range(steps):
            a = int(rng.choice(18, p=pi[i, t]))
            log["steps"].append({"step": t + 1, "accepted": True, "action_id": a, "mu": float(pi[i, t, a]),
                                 "reward": float(rng.integers(-1, 3)), "state": states[i, t].tolist(),
                                 "available": list(range(18))})
        (folder / f"episode_{i}.json").write_text(json.dumps(log))
    return folder


def test_ope_command_on_acer_shaped_logs_drawn_from_acer_itself(tmp_path, capsys):
    logs = _acer_shaped_logs(tmp_path / "logs")
    assert main(["ope", "--logs", str(logs), "--policy", "acer", "--bootstrap", "50",
                 "--json", str(tmp_path / "ope.json"), "--measured", str(logs)]) == 0
    result = json.loads((tmp_path / "ope.json").read_text())
    mean = read_logs(logs).returns.mean()
    for k in ("IS", "WIS", "PDIS"):  # μ = π: every weight is 1
        assert result[k]["estimate"] == pytest.approx(mean, abs=1e-3)
    assert result["effective sample size"] == pytest.approx(12)
    assert "measured" in capsys.readouterr().out


def test_ope_refuses_unusable_input(tmp_path, capsys):
    assert main(["ope", "--logs", str(tmp_path / "none"), "--policy", "acer"]) == 2
    logs = _acer_shaped_logs(tmp_path / "logs", n=2, steps=2)
    assert main(["ope", "--logs", str(logs), "--policy", "rule-based"]) == 2
    log = json.loads((logs / "episode_0.json").read_text())
    log["steps"][0]["mu"] = 0.0
    (logs / "episode_0.json").write_text(json.dumps(log))
    assert main(["ope", "--logs", str(logs), "--policy", "acer"]) == 2
    err = capsys.readouterr().err
    assert "full support" in err and "episode_0.json" in err


def test_kept_plan_rewards_sum_to_the_gain_of_the_best_plan():
    r = kept_rewards(6.0, [7.0, 5.0, 8.0, 6.0])
    assert r.tolist() == [1.0, 0.0, 1.0, 0.0] and r.sum() == 8.0 - 6.0
    assert kept_rewards(6.0, [5.0, 4.0]).tolist() == [0.0, 0.0]  # never below the initial plan


def test_read_logs_cuts_at_the_horizon_and_takes_the_kept_plan_value(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    steps = [{"step": t + 1, "accepted": True, "action_id": 1, "mu": 0.5, "reward": r, "score": 6.0 + sum(rs[:t + 1]),
              "state": [0.0] * 4} for t, (r, rs) in enumerate(zip([1.0, -2.0, 2.0], [[1.0, -2.0, 2.0]] * 3))]
    (folder / "episode.json").write_text(json.dumps({"initial score": 6.0, "steps": steps}))
    assert read_logs(folder).returns.tolist() == [1.0]  # ψ: 7, 5, 7
    assert read_logs(folder, value="kept").returns.tolist() == [1.0]  # best: 7, 7, 7
    assert read_logs(folder, horizon=2).returns.tolist() == [-1.0]
    assert read_logs(folder, horizon=2, value="kept").rewards[0, :2].tolist() == [1.0, 0.0]
    with pytest.raises(Exception, match="value definition"):
        read_logs(folder, value="final")


class _Moving:
    """Four actions, the last of which moves nothing."""

    def action_mask(self):
        return np.array([True, True, True, False])


class _Peaked:
    name = "peaked"

    def probabilities(self, observation):
        return np.array([0.97, 0.02, 0.01, 0.0])


def test_epsilon_soft_has_full_support_on_the_moving_actions_and_draws_by_mu():
    behaviour = EpsilonSoft(_Peaked(), _Moving(), epsilon=0.3, seed=1)
    mu = behaviour.probabilities(None)
    assert mu.sum() == pytest.approx(1.0) and mu[3] == 0.0 and np.all(mu[:3] >= 0.1 - 1e-12)
    assert mu[0] == pytest.approx(0.7 * 0.97 + 0.1)
    draws = [behaviour.rank(None)[0] for _ in range(4000)]
    assert all(v == pytest.approx(mu[a]) for a, v in draws)
    freq = np.bincount([a for a, _ in draws], minlength=4) / len(draws)
    assert np.allclose(freq, mu, atol=0.03)
    with pytest.raises(ValueError, match="full support"):
        EpsilonSoft(_Peaked(), _Moving(), epsilon=0.0)


def test_ope_command_cuts_at_the_horizon_and_refuses_a_kept_value_without_scores(tmp_path, capsys):
    logs = _acer_shaped_logs(tmp_path / "logs", n=4, steps=3)
    assert main(["ope", "--logs", str(logs), "--policy", "acer", "--bootstrap", "5", "--horizon", "1",
                 "--json", str(tmp_path / "ope.json")]) == 0
    result = json.loads((tmp_path / "ope.json").read_text())
    first = np.mean([json.loads(p.read_text())["steps"][0]["reward"] for p in sorted(logs.glob("*.json"))])
    assert result["horizon"] == 1 and result["IS"]["estimate"] == pytest.approx(first, abs=1e-3)  # μ = π
    assert main(["ope", "--logs", str(logs), "--policy", "acer", "--value", "kept"]) == 2
    assert main(["ope", "--logs", str(logs), "--policy", "acer", "--horizon", "0"]) == 2
    err = capsys.readouterr().err
    assert "gain is unknown" in err and "T ≥ 1" in err
