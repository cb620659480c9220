"""Linear SARSA of seed 004 (SPEC §4.4): selector features, eq. 9 update, eq. 11 schedule, a toy
MDP it must learn, and the committed weights."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rtautoplan.policies import sarsa as S

GOALS = np.array([15.0, 15.0, 25.0])  # LP, RP, OC mean-dose goals (Gy), SPEC §4.3


class ToyParotids(gym.Env):
    """A 14-feature stand-in for the H&N environment, pure numpy: the state has the layout of
    SPEC §4.2 eq. 1; action 2i lowers organ i's mean dose by 1 Gy (its D_obj by 2 Gy) and costs
    0.3 Gy of PTV D95, action 2i + 1 raises it; reward L_{t−1} − L_t with the seed-004 hinges."""

    def __init__(self, horizon: int = 20):
        self.observation_space = gym.spaces.Box(0.0, np.inf, (14,), np.float32)
        self.action_space = gym.spaces.Discrete(6)
        self.horizon = horizon

    def _x(self) -> np.ndarray:
        rows = []
        for i in range(3):
            rows += [self.mean[i] + 2.0, self.mean[i], self.d_obj[i], 50.0]
        return np.asarray(rows + [self.d95, self.d95 + 4.0])

    def loss(self) -> float:
        oar = np.maximum(0.0, (self.mean + 2.0 - GOALS) / GOALS) + np.maximum(0.0, (self.mean - GOALS) / GOALS)
        return float(oar.sum() + max(0.0, (44.0 - self.d95) / 44.0))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.mean = np.array([self.np_random.uniform(14, 40), self.np_random.uniform(14, 40),
                              self.np_random.uniform(20, 32)])
        self.d_obj, self.d95, self.t = GOALS.copy(), 44.0, 0
        return self._x(), {}

    def step(self, action):
        before, (organ, up) = self.loss(), divmod(int(action), 2)
        sign = 1.0 if up else -1.0
        self.mean[organ] += sign * 1.0
        self.d_obj[organ] += sign * 2.0
        self.d95 += sign * 0.3
        self.t += 1
        return self._x(), before - self.loss(), False, self.t >= self.horizon, {}


def run_greedy(env: ToyParotids, act, episodes: int = 40) -> float:
    """Mean relative final loss L_T / L_0 over ``episodes`` evaluation episodes."""
    out = []
    for e in range(episodes):
        x, _ = env.reset(seed=10_000 + e)
        L0 = env.loss()
        for _ in range(env.horizon):
            x, _, terminated, truncated, _ = env.step(act(x))
            if terminated or truncated:
                break
        out.append(env.loss() / L0)
    return float(np.mean(out))


def toy_train(seed: int, steps: int = 4_000) -> np.ndarray:
    args = S.Args(model=1, seed=seed, total_steps=steps, alpha=0.1, gamma=0.9, eps_inf=0.05)
    env, rng, W, t = ToyParotids(), np.random.default_rng(seed), np.zeros((6, 14)), 0
    while t < steps:
        t, _ = S.sarsa_episode(env, W, t, args, rng)
    return W


def test_selector_features_equal_matrix_form():
    rng = np.random.default_rng(1)
    W, x = rng.normal(size=(12, 14)), rng.uniform(0, 50, 14)
    theta = W.ravel()
    for a in range(12):
        phi = S.selector_features(x, a, 12)
        assert phi.shape == (12 * 14,)
        assert np.count_nonzero(phi[:a * 14]) == 0 and np.count_nonzero(phi[(a + 1) * 14:]) == 0
        assert theta @ phi == pytest.approx(np.eye(12)[a] @ W @ S.features(x))
        assert S.q_values(W, x)[a] == pytest.approx(theta @ phi)


def test_feature_scaling_is_documented_diagonal():
    assert S.SCALE.shape == (14,) and S.DIM_X == 14
    assert S.SCALE[3] == S.SCALE[7] == S.SCALE[11] == 100.0  # V_obj in %
    assert S.SCALE[1] == S.SCALE[5] == 44.0  # LP and RP mean: same scale, so eq. 14's slope is unchanged


def test_one_sarsa_update_by_hand():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(6, 14))
    x, x_next = rng.uniform(0, 50, 14), rng.uniform(0, 50, 14)
    a, a_next, r, alpha, gamma = 3, 5, 0.2, 0.1, 0.9
    xs, xs_next = x / S.SCALE, x_next / S.SCALE
    delta = r + gamma * sum(W[a_next, k] * xs_next[k] for k in range(14)) - sum(W[a, k] * xs[k] for k in range(14))
    alpha_t = alpha / sum(v * v for v in xs)  # normalised step (sarsa module docstring)
    expected = W.copy()
    for k in range(14):
        expected[a, k] += alpha_t * delta * xs[k]
    got = W.copy()
    assert S.sarsa_update(got, x, a, r, x_next, a_next, alpha, gamma) == pytest.approx(delta)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # the θ form of eq. 9 gives the same θ
    theta = W.ravel() + alpha_t * delta * S.selector_features(x, a, 6)
    np.testing.assert_allclose(got.ravel(), theta, rtol=1e-12)
    # terminal: no bootstrap
    term = W.copy()
    S.sarsa_update(term, x, a, r, None, None, alpha, gamma)
    np.testing.assert_allclose(term[a], W[a] + alpha_t * (r - W[a] @ xs) * xs)


def test_epsilon_schedule_endpoints():
    N, eps_inf = 24_000, 0.05
    assert S.epsilon(0, N, eps_inf) == pytest.approx(1.0)
    assert S.epsilon(N, N, eps_inf) == pytest.approx(eps_inf)
    assert S.epsilon(2 * N, N, eps_inf) == pytest.approx(eps_inf)
    values = [S.epsilon(t, N, eps_inf) for t in range(0, N + 1, 1000)]
    assert all(b < a for a, b in zip(values, values[1:]))


def test_epsilon_greedy_is_greedy_at_zero_and_uniform_at_one():
    W, x, rng = np.zeros((6, 14)), np.ones(14), np.random.default_rng(0)
    W[4, 0] = 1.0
    assert all(S.epsilon_greedy(W, x, 0.0, rng) == 4 for _ in range(20))
    draws = [S.epsilon_greedy(W, x, 1.0, rng) for _ in range(600)]
    assert set(draws) == set(range(6)) and min(np.bincount(draws)) > 60


def test_masked_epsilon_greedy_draws_only_moving_actions():
    W, x, rng = np.zeros((6, 14)), np.ones(14), np.random.default_rng(0)
    W[4, 0], W[2, 0] = 1.0, 0.5
    mask = np.array([True, False, True, False, False, True])  # the best action, 4, is clamped
    assert S.greedy(W, x, mask) == 2 and S.greedy(W, x) == 4
    assert all(S.epsilon_greedy(W, x, 0.0, rng, mask) == 2 for _ in range(20))
    assert set(S.epsilon_greedy(W, x, 1.0, rng, mask) for _ in range(300)) == {0, 2, 5}


def test_sarsa_learns_toy_parotid_mdp():
    W = toy_train(seed=0)
    env = ToyParotids()
    learned = run_greedy(env, lambda x: int(np.argmax(S.q_values(W, x))))
    rng = np.random.default_rng(0)
    random = run_greedy(env, lambda x: int(rng.integers(6)))
    assert learned < 0.6, learned
    assert learned < random - 0.3, (learned, random)
    # "lower LP" (action 0) beats "lower RP" (2) when only LP is high, and vice versa
    policy = S.SarsaPolicy(W, 1)
    env.reset(seed=0)
    env.mean[:] = (38.0, 14.0, 24.0)
    assert policy.act(env._x()) == 0
    env.mean[:] = (14.0, 38.0, 24.0)
    assert policy.act(env._x()) == 2


def test_same_seed_same_weights():
    np.testing.assert_array_equal(toy_train(seed=3, steps=600), toy_train(seed=3, steps=600))
    assert not np.array_equal(toy_train(seed=3, steps=600), toy_train(seed=4, steps=600))


def test_policy_rank_is_q_order():
    W = np.random.default_rng(5).normal(size=(12, 14))
    policy, x = S.SarsaPolicy(W, 2), np.random.default_rng(6).uniform(0, 50, 14)
    ranked = policy.rank(x)
    assert [a for a, _ in ranked] == list(np.argsort(-S.q_values(W, x)))
    assert ranked[0][0] == policy.act(x)
    with pytest.raises(ValueError):
        S.SarsaPolicy(W, 1)


@pytest.mark.parametrize("model", [1, 2])
def test_committed_weights_load_and_act(model):
    policy = S.load(model=model)
    assert policy.W.shape == (6 * model, 14) and np.all(np.isfinite(policy.W)) and np.any(policy.W != 0)
    x = np.array([40, 34, 15, 50, 12.6, 19.6, 15, 50, 20.4, 22, 25, 50, 40.4, 44.3], float)
    assert 0 <= policy.act(x) < 6 * model
    q = [v for _, v in policy.rank(x)]
    assert q == sorted(q, reverse=True)


def test_training_split_balance_matches_generator():
    assert S.balance(S.TRAIN_SEEDS) == {"left": 21, "right": 19}
    assert not set(S.TRAIN_SEEDS) & set(S.VAL_SEEDS) and not set(S.TEST_SEEDS) & (set(S.TRAIN_SEEDS) | set(S.VAL_SEEDS))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3])
def test_tumour_side_matches_phantom(seed):
    from rtautoplan.phantom import make_case

    case = make_case("hn", seed)
    ctv = case.structure("CTV_7000").mask
    x_mm = np.broadcast_to(case.grid.centres()[0], ctv.shape)[ctv].mean()  # +x = patient left (phantom/hn.py)
    assert S.tumour_side(seed) == ("left" if x_mm > 0 else "right")


@pytest.mark.slow
def test_train_on_real_env_is_reproducible():
    args = S.Args(model=2, total_steps=12, val_every=12, train_seeds=(0,), val_seeds=(40,), max_steps=6, progress=False)
    first, second = S.train(args), S.train(args)
    assert first.iterations == 12 and first.episodes == 2 and len(first.validation) == 1
    np.testing.assert_array_equal(first.W_final, second.W_final)
    assert np.any(first.W_final != 0)
