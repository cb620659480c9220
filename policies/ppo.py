"""PPO with a Transformer encoder for proton H&N plans (seed 002, SPEC §2.7–§2.12), CleanRL style: one
file, ``train(Args)``.

* **Environment**: ``ProtonHNEnv`` (Box(50, 104) state, Box(16) actions, Δscore_plan reward, T = 4) over
  ``InHouseProton`` with the cheap engine ``ENGINE`` (coarse dose grid, 12 mm spots, L-BFGS-B capped at
  20 iterations and warm-started within an episode, one minimum-MU round): well under a second per step on
  one core (``benchmarks/ppo_env_step.py``), so training fits on 2 shared cores.
* **Network** (§2.10, Fig. 3): state + learnable positional encoding [M, N+4], a learnable global token
  prepended, a linear projection N+4 → d_model, a pre-LayerNorm Transformer encoder (padding rows masked),
  the critic V(s) on the encoded global token. **Feature selection**: the K = 8 OAR rows with the lowest
  per-structure score (the env's ``select``, recomputed from the state's score column) are the action
  slots; the actor's mean for slot k is an MLP of [global token; encoded row of the k-th selected OAR]
  (2 outputs: a_w, a_D), so each action pair is read off the structure it moves. Diagonal Gaussian with a
  learned state-independent ``log_std`` (randomly initialised around ``log_std_init``).
* **Actions** (§2.8): the Gaussian sample is passed unclipped to the environment, which clips a_w to
  [0, 0.5] and a_D to [−0.5, 0]; log-probabilities are of the unclipped sample (docs/decisions.md). The
  greedy planner plays the clipped mean.
* **PPO** (§2.11): clipped objective μ = 0.3, GAE(γ, λ), value loss α·MSE(A + V_old, V) with α = 0.8,
  entropy β = 0.005, Adam, minibatches of 12, ``update_epochs`` passes per rollout. A time-limit
  truncation (T = 4) bootstraps V(s_T); the state has no clock.
* **Rollouts**: each iteration plays ``n_envs × episodes_per_env`` episodes (§2.11: 2 environment copies
  gathered into one batch). Every episode is a ``Job`` (case and reset seed, noise seed) drawn from the
  trainer's generator, so the batch does not depend on who plays it: ``SerialRollouts`` (in this
  process) and ``ProcessRollouts`` (``n_workers`` processes) give identical batches. ``ROLLOUTS`` maps a
  backend name to its factory (the seam for Ray actors, ``rtautoplan.cluster``).
* **Checkpoint selection**: every ``eval_every`` steps the greedy planner runs the closed loop
  (``rtautoplan.loop``) on the validation cases; the weights with the best mean score gain are kept.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from rtautoplan.policies.env_proton import DVH_POINTS, K_SELECTED, LIMIT_RANGE, M_MAX, PPO_ENGINE, WEIGHT_RANGE

FIRST_RUN = Path(__file__).resolve().parent / "weights" / "ppo_proton_hn.pt"  # eq. 10 reward: ``Args()`` reproduces it
# The planner's weights: FIRST_RUN fine-tuned with the coverage-aware reward (λ = 50, its .json record; the
# command is in docs/results.md), which keeps CTV D99 where FIRST_RUN let it go.
WEIGHTS = FIRST_RUN.with_name("ppo_proton_hn_cov.pt")
# The liver model (seed 002 §2.15): WEIGHTS fine-tuned on liver phantoms (its .json record, docs/results.md).
LIVER_WEIGHTS = FIRST_RUN.with_name("ppo_proton_liver.pt")
SITE_WEIGHTS = {"liver": LIVER_WEIGHTS}  # site → its own model; every other site plans with WEIGHTS
ENGINE = PPO_ENGINE  # the cheap proton engine trained on and planned with (module docstring)
TYPE_COL, SCORE_COL = DVH_POINTS, DVH_POINTS + 2
OAR_TYPE = 1.0  # env_proton.TYPE_CODE[OAR] / 4
SITE_NAMES = {"hn": "H&N", "liver": "liver"}  # phantom sites PPO trains on (``Args.site``)


@dataclass
class Args:
    """SPEC §2.11 unless noted; defaults = the committed run (policies/weights/ppo_proton_hn.json)."""

    seed: int = 0  # torch / numpy / episode seed; same seed → same weights (CPU, one thread)
    total_steps: int = 1_200  # environment steps (the paper: 2 epochs × 30 patients × T = 4 = 240)
    n_envs: int = 2  # environment copies whose episodes form one batch (§2.11)
    episodes_per_env: int = 3  # episodes per copy per rollout ([NOT SPECIFIED]; 24 steps per rollout)
    t_epi: int = 4  # adjustments per episode (T, §2.11)
    update_epochs: int = 4  # passes over each rollout ([NOT SPECIFIED] §2.16)
    batch_size: int = 12  # minibatch (§2.11)
    lr: float = 3e-4  # Adam (the paper: 5e-5 over 300 GPU-hours; ours: CleanRL's, for a 1-hour run)
    gamma: float = 0.99  # ([NOT SPECIFIED] §2.16)
    gae_lambda: float = 0.95  # ([NOT SPECIFIED] §2.16)
    clip: float = 0.3  # μ (§2.11)
    vf_coef: float = 0.8  # α (§2.11)
    ent_coef: float = 0.005  # β (§2.11)
    max_grad_norm: float = 0.5  # gradient-norm clip (CleanRL)
    norm_adv: bool = True  # advantages normalised per minibatch (CleanRL)
    d_model: int = 128  # encoder width (the paper: 512; 128 keeps the weights at 2.4 MB and CPU updates fast)
    n_layers: int = 4  # encoder layers (§2.10)
    n_heads: int = 8  # attention heads (§2.10)
    ffn: int = 256  # feed-forward width (the paper: 1024, with d_model 512)
    log_std_init: float = -2.0  # log σ around which the learned log_std is drawn (σ ≈ 0.14 of a 0.5 range)
    train_seeds: tuple[int, ...] = tuple(range(30))  # H&N phantom seeds trained on (the paper: 30 patients)
    val_seeds: tuple[int, ...] = (900, 901, 902, 903)  # validation phantom seeds (held-out evaluation: ≥ 1000)
    eval_every: int = 240  # steps between validations
    dose_grid_factor: tuple[int, int, int] = ENGINE["dose_grid_factor"]  # TPS dose grid block
    spot_spacing_mm: float = ENGINE["spot_spacing_mm"]  # PBS spot spacing (mm)
    max_iter: int = ENGINE["max_iter"]  # L-BFGS-B iteration cap per solve
    mu_rounds: int = ENGINE["mu_rounds"]  # minimum-MU re-optimisation rounds
    rollout: str = "serial"  # ROLLOUTS backend: serial (this process), process or ray (``n_workers`` of them)
    n_workers: int = 2  # rollout processes or Ray actors of the "process" / "ray" backends
    ray_address: str | None = None  # with rollout="ray": the cluster (auto, HOST:PORT, ray://…); None: a local one
    out: str = str(FIRST_RUN)  # selected weights; the .json record and _validation.png go beside them
    progress: bool = True  # rich progress bar (episode return, validation gain); False: one line per validation
    engine_threads: int = 1  # $RTAUTOPLAN_THREADS of the TPS (same value, same weights)
    wall_budget_s: float | None = None  # stop after this wall time (s) whatever total_steps (record says steps)
    coverage_lambda: float = 0.0  # λ of the coverage-aware reward (env_proton; 0 = eq. 10, the committed run)
    init_weights: str | None = None  # start from these weights (.pt of the same shape) instead of a fresh net
    site: str = "hn"  # phantom site trained and validated on: hn, or liver (seed 002 §2.15's liver model)


def engine_options(args: Args) -> dict:
    return {"dose_grid_factor": tuple(args.dose_grid_factor), "spot_spacing_mm": float(args.spot_spacing_mm),
            "max_iter": int(args.max_iter), "mu_rounds": int(args.mu_rounds),
            "objective_points": ENGINE["objective_points"]}


def make_env(seeds: Sequence[int], engine: dict | None = None, t_epi: int = 4, coverage_lambda: float = 0.0,
             site: str = "hn"):
    """A ProtonHNEnv over its own InHouseProton with ``engine`` options (default ``ENGINE``), the
    coverage-aware reward's λ (0: eq. 10) and the phantom site (hn; liver: seed 002 §2.15)."""
    from rtautoplan.adapters.inhouse_proton import InHouseProton
    from rtautoplan.policies.env_proton import ProtonHNEnv

    return ProtonHNEnv(InHouseProton(**(engine or ENGINE)), case_seeds=tuple(seeds), max_steps=t_epi,
                       coverage_lambda=coverage_lambda, site=site)


def selected_rows(obs: torch.Tensor, k: int = K_SELECTED) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) row indices of the k OAR rows with the lowest score (worst first, ties in row order: the
    env's ``select``), and (B, k) bool: the slot has an OAR (False past the case's last OAR)."""
    oar = (obs[..., TYPE_COL] - OAR_TYPE).abs() < 1e-6
    key = torch.where(oar, obs[..., SCORE_COL].double(), torch.full_like(obs[..., SCORE_COL], float("inf")).double())
    order = torch.sort(key, dim=-1, stable=True).indices[..., :k]
    return order, torch.gather(oar, -1, order)


class PPONet(nn.Module):
    """SPEC §2.10 (module docstring): (B, M, N+4) state → (mean (B, 2k), log_std (2k,), V (B,))."""

    def __init__(self, n_rows: int = M_MAX, n_features: int = DVH_POINTS + 4, k: int = K_SELECTED,
                 d_model: int = 128, n_layers: int = 4, n_heads: int = 8, ffn: int = 256, log_std_init: float = -2.0):
        super().__init__()
        self.k = k
        self.pos = nn.Parameter(0.02 * torch.randn(n_rows, n_features))
        self.glob = nn.Parameter(0.02 * torch.randn(1, n_features))
        self.proj = nn.Linear(n_features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, ffn, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.actor = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.Tanh(), nn.Linear(d_model, 2))
        self.critic = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1))
        nn.init.normal_(self.actor[-1].weight, std=0.01)
        with torch.no_grad():  # the initial mean mid-range: w × 1.125, D × 0.875 (no half-clipped start)
            self.actor[-1].bias.copy_(torch.tensor([np.mean(WEIGHT_RANGE), np.mean(LIMIT_RANGE)]))
        self.log_std = nn.Parameter(log_std_init + 0.1 * torch.randn(2 * k))

    def forward(self, obs: torch.Tensor):
        b = obs.shape[0]
        padding = obs[..., TYPE_COL] == 0  # zero rows past the case's structures
        tokens = torch.cat([self.glob.expand(b, -1, -1), obs + self.pos], dim=1)
        mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool), padding], dim=1)
        h = self.norm(self.encoder(self.proj(tokens), src_key_padding_mask=mask))
        g, rows = h[:, 0], h[:, 1:]
        idx, valid = selected_rows(obs, self.k)
        chosen = torch.gather(rows, 1, idx[..., None].expand(-1, -1, rows.shape[-1])) * valid[..., None]
        mean = self.actor(torch.cat([g[:, None].expand(-1, self.k, -1), chosen], -1)).reshape(b, 2 * self.k)
        return mean, self.log_std, self.critic(g)[:, 0]

    def dist(self, obs: torch.Tensor):
        mean, log_std, value = self(obs)
        return torch.distributions.Normal(mean, log_std.exp().expand_as(mean)), value


def greedy_action(mean: np.ndarray) -> np.ndarray:
    """The mean clipped to §2.8's ranges (what the environment would apply)."""
    pairs = np.asarray(mean, np.float32).reshape(-1, 2)
    return np.stack([np.clip(pairs[:, 0], *WEIGHT_RANGE), np.clip(pairs[:, 1], *LIMIT_RANGE)], 1).ravel()


class PPOPolicy:
    """The trained planner (Policy protocol): the clipped Gaussian mean. ``rank`` offers the mean and a
    half-size step (tried when the safety filter rejects the first), each with its density relative to
    the clipped mean's (1 for it)."""

    name = "ppo"

    def __init__(self, net: PPONet, weights_path: Path | None = None):
        self.net = net.eval()
        self.weights_path = weights_path  # the file the weights came from (the audit log's record)

    def rank(self, observation: np.ndarray) -> list[tuple[np.ndarray, float]]:
        obs = torch.as_tensor(np.asarray(observation, np.float32))[None]
        with torch.no_grad():
            dist, _ = self.net.dist(obs)
            first = greedy_action(dist.mean[0].numpy())
            moves = (first, first * 0.5)
            logp = [float(dist.log_prob(torch.as_tensor(a)[None]).sum()) for a in moves]
        return [(a, float(np.exp(lp - logp[0]))) for a, lp in zip(moves, logp)]

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.rank(observation)[0][0]


# --- rollouts -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One episode to play: the env copy (its slot in the batch), reset seed, Gaussian noise seed."""

    env_index: int
    reset_seed: int
    noise_seed: int


@dataclass
class Trajectory:
    """One played episode: states s_0..s_T (T+1, M, N+4), unclipped actions, their log π, V(s_0..s_T),
    rewards, whether s_T is terminal, the TPS wall time per step (s)."""

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    terminal: bool
    step_s: list


def play(env, net: PPONet, job: Job, t_epi: int) -> Trajectory:
    """Sample one episode from π (noise from ``job.noise_seed``, so the draw does not depend on the process)."""
    noise = np.random.default_rng(job.noise_seed)
    obs, _ = env.reset(seed=job.reset_seed)
    s, a, logp, v, r, step_s, terminal = [obs], [], [], [], [], [], False
    with torch.no_grad():
        for _ in range(t_epi):
            dist, value = net.dist(torch.as_tensor(s[-1])[None])
            action = dist.mean[0] + dist.stddev[0] * torch.as_tensor(noise.standard_normal(dist.mean.shape[1]),
                                                                     dtype=torch.float32)
            logp.append(float(dist.log_prob(action[None]).sum())), v.append(float(value[0]))
            obs, reward, terminal, truncated, _ = env.step(action.numpy())
            s.append(obs), a.append(action.numpy()), r.append(reward), step_s.append(env.last_step_s)
            if terminal or truncated:
                break
        v.append(0.0 if terminal else float(net.dist(torch.as_tensor(s[-1])[None])[1][0]))
    return Trajectory(np.stack(s), np.stack(a), np.array(logp, np.float32), np.array(v, np.float32),
                      np.array(r, np.float32), bool(terminal), step_s)


class Rollouts(Protocol):
    """Plays jobs with given weights; results in job order, whoever plays them."""

    def play(self, state_dict: dict, jobs: Sequence[Job]) -> list[Trajectory]: ...

    def close(self) -> None: ...


def _net_for(args: Args) -> PPONet:
    return PPONet(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, ffn=args.ffn,
                  log_std_init=args.log_std_init)


class SerialRollouts:
    """``args.n_envs`` environments in this process."""

    def __init__(self, args: Args):
        self.args = args
        self.envs = [make_env(args.train_seeds, engine_options(args), args.t_epi, args.coverage_lambda, args.site)
                     for _ in range(args.n_envs)]
        self.net = _net_for(args)

    def play(self, state_dict: dict, jobs: Sequence[Job]) -> list[Trajectory]:
        self.net.load_state_dict(state_dict)
        return [play(self.envs[j.env_index % len(self.envs)], self.net, j, self.args.t_epi) for j in jobs]

    def close(self) -> None:
        pass


_WORKER: dict = {}


def _worker_init(args: Args) -> None:
    _worker_setup(args)
    _WORKER["rollouts"] = SerialRollouts(Args(**{**asdict(args), "n_envs": 1}))


def _worker_play(state_dict: dict, job: Job) -> Trajectory:
    return _WORKER["rollouts"].play(state_dict, [Job(0, job.reset_seed, job.noise_seed)])[0]


class ProcessRollouts:
    """``args.n_workers`` spawned processes, one environment each; jobs mapped in order."""

    def __init__(self, args: Args):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(args.n_workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(args,))

    def play(self, state_dict: dict, jobs: Sequence[Job]) -> list[Trajectory]:
        return list(self.pool.map(_worker_play, [state_dict] * len(jobs), jobs))

    def close(self) -> None:
        self.pool.shutdown()


def _worker_setup(args: Args) -> None:
    os.environ["RTAUTOPLAN_THREADS"] = str(args.engine_threads)
    torch.set_num_threads(1)


def _play_job(rollouts: SerialRollouts, state_dict: dict, job: Job) -> Trajectory:
    return rollouts.play(state_dict, [Job(0, job.reset_seed, job.noise_seed)])[0]


class RayRollouts:
    """``args.n_workers`` Ray actors (``policies.workers.RayWorkers``, on ``args.ray_address`` or a local
    cluster), one environment each; jobs dealt in order, so the batch is the serial one (docs/cluster.md)."""

    def __init__(self, args: Args):
        from functools import partial

        from rtautoplan.policies.workers import RayWorkers

        single = Args(**{**asdict(args), "n_envs": 1})
        self.workers = RayWorkers([partial(SerialRollouts, single)] * args.n_workers, partial(_worker_setup, args),
                                  args.ray_address)

    def play(self, state_dict: dict, jobs: Sequence[Job]) -> list[Trajectory]:
        n = len(self.workers.actors)
        return self.workers.run([(i % n, _play_job, (state_dict, job)) for i, job in enumerate(jobs)])

    def close(self) -> None:
        self.workers.close()


# Backend name → factory(args) -> Rollouts.
ROLLOUTS: dict[str, Callable[[Args], Rollouts]] = {"serial": SerialRollouts, "process": ProcessRollouts,
                                                    "ray": RayRollouts}


# --- PPO --------------------------------------------------------------------------------------------------

def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Â_t (eq. 7) of one episode: values V(s_0..s_T) with V(s_T) = 0 at a terminal state."""
    adv, last = np.zeros(len(rewards), np.float32), 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * values[t + 1] - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def ppo_loss(net: PPONet, obs, actions, old_logp, adv, returns, args: Args) -> tuple[torch.Tensor, dict]:
    """L_PPO (eq. 6) of a minibatch: clipped policy loss + α·MSE(returns, V) − β·H."""
    dist, value = net.dist(obs)
    logp = dist.log_prob(actions).sum(-1)
    ratio = (logp - old_logp).exp()
    if args.norm_adv and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy = -torch.min(adv * ratio, adv * ratio.clamp(1 - args.clip, 1 + args.clip)).mean()
    v_loss = ((value - returns) ** 2).mean()
    entropy = dist.entropy().sum(-1).mean()
    loss = policy + args.vf_coef * v_loss - args.ent_coef * entropy
    return loss, {"policy": policy.item(), "value": v_loss.item(), "entropy": entropy.item(),
                  "clipfrac": float(((ratio - 1).abs() > args.clip).float().mean())}


def update(net: PPONet, opt, trajectories: Sequence[Trajectory], args: Args, gen: torch.Generator) -> dict:
    """``update_epochs`` passes of minibatches of ``batch_size`` over the rollout."""
    obs = torch.as_tensor(np.concatenate([t.obs[:len(t.rewards)] for t in trajectories]))
    actions = torch.as_tensor(np.concatenate([t.actions for t in trajectories]))
    old_logp = torch.as_tensor(np.concatenate([t.logp for t in trajectories]))
    adv = np.concatenate([gae(t.rewards, t.values, args.gamma, args.gae_lambda) for t in trajectories])
    returns = torch.as_tensor(adv + np.concatenate([t.values[:-1] for t in trajectories]))
    adv = torch.as_tensor(adv)
    stats = {}
    for _ in range(args.update_epochs):
        order = torch.randperm(len(obs), generator=gen)
        for start in range(0, len(obs), args.batch_size):
            mb = order[start:start + args.batch_size]
            loss, stats = ppo_loss(net, obs[mb], actions[mb], old_logp[mb], adv[mb], returns[mb], args)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
            opt.step()
    return stats


def validate(env, net: PPONet, seeds: Sequence[int], max_steps: int) -> float:
    """Mean score gain (best plan of the closed loop − initial plan, eq. 9) of the greedy planner; with the
    env's coverage-aware reward (λ > 0) minus λ·(its ``coverage_deficit`` change), as the reward counts it."""
    from rtautoplan.loop import run_loop
    from rtautoplan.policies.env_proton import coverage_deficit

    policy, gains, lam = PPOPolicy(net), [], float(getattr(env, "coverage_lambda", 0.0))
    for case_seed in seeds:
        loop = run_loop(env, policy, max_steps, seed=10_000 + int(case_seed), options={"case_seed": int(case_seed)})
        gain = float(loop.best_score.total) - float(loop.initial_score.total)
        if lam:
            gain -= lam * (coverage_deficit(loop.best_dose.gy, env.case) - coverage_deficit(loop.initial_dose.gy, env.case))
        gains.append(gain)
    net.train()
    return float(np.mean(gains))


@dataclass
class TrainRecord:
    """What ``train`` did: the selected weights, with what, the engine and population it saw, the curve."""

    weights: str
    args: dict
    seed: int
    steps: int
    episodes: int
    wall_s: float
    best_step: int
    best_validation: float
    engine: dict
    population: str
    step_s_mean: float  # mean TPS time of one environment step (optimise + score, s)
    validation: list = field(default_factory=list)
    """[(step, validation mean score gain, mean training return of the last 24 episodes)]"""
    torch_version: str = torch.__version__


def train(args: Args, validate_fn=validate) -> TrainRecord:
    """Train PPO (module docstring); write the selected weights, the JSON record and the curve PNG."""
    from rtautoplan.policies.acer_parts import TrainProgress

    if args.site not in SITE_NAMES:
        from rtautoplan.errors import InputError

        raise InputError("--site", f"{args.site!r} has no PPO phantom population", f"Use --site {' or '.join(SITE_NAMES)}")
    os.environ["RTAUTOPLAN_THREADS"] = str(args.engine_threads)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.rollout not in ROLLOUTS:
        raise ValueError(f"rollout backend {args.rollout!r} unknown; available: {sorted(ROLLOUTS)}")
    net = _net_for(args)
    if args.init_weights is not None:
        net.load_state_dict(load_net(args.init_weights).state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, eps=1e-5)
    rollouts = ROLLOUTS[args.rollout](args)
    val_env = (make_env(args.val_seeds, engine_options(args), args.t_epi, args.coverage_lambda, args.site)
               if validate_fn is not None else None)
    returns, curve, step_s = [], [], []
    best = (-np.inf, 0, copy.deepcopy(net.state_dict()))
    steps = episodes = 0
    next_eval = args.eval_every
    start = time.perf_counter()
    try:
        with TrainProgress(args, label="PPO", total=args.total_steps, val_name="val Δscore") as bar:
            while steps < args.total_steps and (args.wall_budget_s is None
                                                 or time.perf_counter() - start < args.wall_budget_s):
                jobs = [Job(e, int(rng.integers(2**31)), int(rng.integers(2**31)))
                        for _ in range(args.episodes_per_env) for e in range(args.n_envs)]
                trajectories = rollouts.play(net.state_dict(), jobs)
                update(net, opt, trajectories, args, gen)
                for t in trajectories:
                    returns.append(float(t.rewards.sum())), step_s.extend(t.step_s)
                steps += sum(len(t.rewards) for t in trajectories)
                episodes += len(trajectories)
                if validate_fn is not None and steps >= next_eval:
                    next_eval += args.eval_every
                    score = validate_fn(val_env, net, args.val_seeds, args.t_epi)
                    curve.append((steps, score, float(np.mean(returns[-24:]))))
                    if score >= best[0]:
                        best = (score, steps, copy.deepcopy(net.state_dict()))
                    _save(args, best[2], _record(args, steps, episodes, start, best, curve, step_s))
                    if not args.progress:
                        print(f"step {steps} episodes {episodes} wall {time.perf_counter() - start:.0f} s  validation "
                              f"Δscore {score:.3f}  return {curve[-1][2]:.3f}  best {best[0]:.3f} at {best[1]}",
                              flush=True)
                bar.show(steps, float(np.mean(returns[-24:])), curve[-1][1] if curve else float("nan"))
    finally:
        rollouts.close()
    if validate_fn is None:
        best = (float("nan"), steps, net.state_dict())
    record = _record(args, steps, episodes, start, best, curve, step_s)
    _save(args, best[2], record)
    return record


def _record(args, steps, episodes, start, best, curve, step_s) -> TrainRecord:
    from rtautoplan.training import jsonable

    seeds = args.train_seeds
    population = (f"{SITE_NAMES[args.site]} phantom variants, seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}), validation "
                  f"{', '.join(str(s) for s in args.val_seeds)}")
    return TrainRecord(jsonable({"out": args.out})["out"], jsonable(asdict(args)), args.seed, steps, episodes,
                       time.perf_counter() - start, best[1], float(best[0]),
                       {"adapter": "inhouse-proton", **jsonable(engine_options(args))}, population,
                       float(np.mean(step_s)) if step_s else float("nan"), list(curve))


def _save(args: Args, state_dict, record: TrainRecord) -> None:
    """Weights (.pt, with the network shape), record (.json), validation curve (.png)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "ffn": args.ffn}
    torch.save({"state_dict": state_dict, "shape": shape}, out)
    out.with_suffix(".json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    if record.validation:
        plot_validation(record, out.with_name(out.stem + "_validation.png"))


def plot_validation(record: TrainRecord, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    step, score, ret = zip(*record.validation)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lam = record.args.get("coverage_lambda", 0.0)
    gain = f"eq. 9 gain − {lam:g}·ΔC" if lam else "eq. 9 gain"
    ax.plot(step, score, "o-", label=f"validation: mean {gain} of the greedy loop")
    ax.plot(step, ret, label="training return (last 24 episodes)")
    ax.axvline(record.best_step, ls="--", c="grey", label=f"selected: step {record.best_step}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("Δ score_plan")
    ax.set_title(f"PPO + Transformer, proton {SITE_NAMES[record.args.get('site', 'hn')]} phantoms")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def load_net(path: str | Path = WEIGHTS) -> PPONet:
    if not Path(path).exists():
        raise FileNotFoundError(f"no PPO weights at {path}; train them with `rtautoplan train ppo`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = PPONet(**blob["shape"])
    net.load_state_dict(blob["state_dict"])
    return net


def weights_for(site: str) -> Path:
    """The committed weights the PPO planner uses on ``site`` (``SITE_WEIGHTS``, else ``WEIGHTS``)."""
    return SITE_WEIGHTS.get(site, WEIGHTS)


def load(env=None, seed: int = 0, path: str | Path | None = None) -> PPOPolicy:
    """The committed PPO planner for ``env``'s site (``weights_for``: liver → ``LIVER_WEIGHTS``, else
    ``WEIGHTS``), or the weights at ``path``; ``seed`` is accepted for the ``POLICIES`` factory signature
    (the greedy policy needs none)."""
    path = Path(path) if path is not None else weights_for(getattr(env, "site", "hn"))
    return PPOPolicy(load_net(path), path)
