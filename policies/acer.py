"""ACER virtual treatment planner of seed 000 (SPEC §1.9–§1.12), CleanRL style: one file, ``train(Args)``.

* **Network** (§1.9): DVH (300) → Linear 32 → ReLU → LSTM 32 → policy head (softmax, 18) and Q head
  (18): 19 268 parameters. The LSTM state is reset at the start of every episode (§1.6 preferred).
* **Retrace** (§1.10 eq. 5): Q_ret(t) = r_t + γ ρ̄_{t+1} [Q_ret(t+1) − Q(a_{t+1}, s_{t+1})] + γ V(s_{t+1}),
  Q_ret = r_t at a terminal step; at a truncated one bootstrap V(s_T) (``bootstrap_truncated=True``) or Q_ret = r_t
  (False: s_T of a truncated episode is never a critic target, and bootstrapping from it let Q diverge on the toy
  task). ρ̄ = min(1, ρ) (reference ACER, Wang et al. 2016; default) or min(c, ρ) (the paper's text,
  ``retrace_c=True``); ρ̄ = 1 on-policy.
* **Policy gradient** (§1.10 eq. 6): truncated importance sampling min(c, ρ_t) ∇log π(a_t)[Q_ret − V]
  plus the bias correction E_{a∼π}[1 − c/ρ(a)]₊ ∇log π(a)[Q(a) − V], c = 10; entropy bonus β = 0.001;
  critic loss ½(Q_ret − Q(a_t))². Trust region (eq. 7) off (the paper's setting), not implemented.
* **Schedule** (§1.11): an actor plays one whole episode with the current weights (random TPPs on the
  training case), stores it in replay (t_rep = 100 k steps), makes one on-policy update on it, then
  n ∼ Poisson(p = 4) off-policy updates, each on ≥ t_B = 16 replayed steps (whole episodes), once
  replay holds t_s = 2 000 steps. RMSprop (lr 7e-4, α 0.99, ε 1e-5, Atari-57 ACER values §1.10).
* **Actors**: ``n_actors`` environments (own TPS and episode stream) played in turn, in this process or as
  Ray actors (``actors="ray"``, ``policies/workers.py``); same seed → same weights on CPU, either way. **Environment**: ``ProstateEnv(InHousePhoton(warm_start=False))``,
  binary Δψ, masked π.
* **Checkpoint selection** (§1.11): every t_eval steps the greedy policy plans the validation cases
  (binary ψ); the best weights are kept (ties: the later), not the last ones.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from rtautoplan.policies.acer_parts import TrainProgress
from rtautoplan.policies.workers import deterministic, env_spaces, env_workers, given
from rtautoplan.training import jsonable
from torch import nn

# The default planner: fine-tuned on the calibrated population v2 (issue 16); better there than the v1
# planner ``acer_prostate.pt`` (kept, reproducible) on the held-out v2 cases (docs/results.md).
WEIGHTS = Path(__file__).resolve().parent / "weights" / "acer_prostate_v2.pt"


@dataclass
class Args:
    """SPEC §1.11 Table 3 unless noted; defaults = the committed stage-1 run (docs/results.md, ACER) but on the
    calibrated population v2 (``--population v1`` for the committed weights): binary Δψ reward,
    masked policy, no time-limit bootstrap, β 0.01 → 0.001 over 5 000 steps, standard dose grid.
    ``partial_band`` would shape the training reward only (validation, evaluation: binary ψ, §1.7)."""

    seed: int = 0  # torch / numpy / episode seed; same seed → same weights (CPU, one thread)
    T_max: int = 5_004  # total environment steps (the paper: 250 000; the committed run's, docs/results.md)
    t_epi: int = 20  # maximum episode length
    t_rep: int = 100_000  # replay memory capacity (steps)
    t_s: int = 2_000  # steps stored before off-policy updates start
    t_B: int = 16  # off-policy batch size (steps; whole episodes are replayed until it is reached)
    c: float = 10.0  # importance-weight truncation of the policy gradient
    retrace_c: bool = False  # ρ̄ = min(c, ρ) inside Q_ret (the paper's text), not min(1, ρ) (SPEC §1.10 preferred)
    p: float = 4.0  # mean of the Poisson number of off-policy updates per on-policy update
    t_eval: int = 1_000  # steps between validation evaluations (the paper: 500; halved frequency for our budget)
    gamma: float = 0.99  # discount γ
    beta: float = 0.001  # entropy weight β (SPEC §1.10); with ``beta_start``, the value reached at ``beta_steps``
    beta_start: float | None = 0.01  # entropy weight at step 0, linear to β over ``beta_steps`` (None: β throughout)
    beta_steps: int = 5_000  # steps of the β schedule
    lr: float = 7e-4  # RMSprop learning rate ([NOT SPECIFIED] §1.10: Atari-57 ACER)
    rms_alpha: float = 0.99  # RMSprop decay
    rms_eps: float = 1e-5  # RMSprop ε
    max_grad_norm: float = 10.0  # gradient-norm clip (Atari-57 ACER)
    bootstrap_truncated: bool = False  # Q_ret(T−1) = r + γV(s_T) at a time limit; False: = r (s_T is never a critic target)
    batch_mean: bool = False  # replay batch: loss averaged over all its steps (False: per-episode means summed)
    q_coef: float = 0.5  # weight of the critic loss ½(Q_ret − Q)²
    n_actors: int = 2  # actor environments played in turn (N_a; the paper: 3 asynchronous processes)
    train_seeds: tuple[int, ...] = (0,)  # prostate phantom seeds trained on (the paper: one patient)
    p_trivial: float = 0.0  # share of training episodes from trivial TPPs (others random, §1.12); 0: no draw
    val_seeds: tuple[int, ...] = (1, 2)  # prostate phantom seeds of the validation curve
    val_inits: int = 2  # random-TPP initial plans per validation case (plus the trivial one)
    dose_grid_factor: tuple[int, int, int] = (1, 2, 2)  # TPS dose grid (the standard one; coarse: (2, 4, 4))
    max_iter: int = 60  # TPS optimiser iteration cap
    cold_start: bool = True  # optimise every plan from scratch (``InHousePhoton(warm_start=False)``)
    partial_band: float | None = None  # training reward: Δψ with proknow9 partial credit, this band (None: binary)
    out: str = str(WEIGHTS)  # selected weights; the .json record and _validation.png go beside them
    progress: bool = True  # rich progress bar (episode return, validation ψ); False: one printed line per validation
    mask_no_ops: bool = True  # π over the actions that move (``env.action_mask``): a TPP at its clamp is not drawn
    init_from: str | None = None  # start from these weights (.pt of ``train``), e.g. to fine-tune on another case
    engine_threads: int = 1  # $RTAUTOPLAN_THREADS of the TPS: its sparse sums depend on it (same value, same weights)
    wall_budget_s: float | None = None  # stop after this wall time (s), T_max or not (the selected weights are kept)
    actors: str = "local"  # where the actors' environments run: "local" (this process) or "ray" (one Ray actor each)
    ray_address: str | None = None  # with actors="ray": the cluster (auto, HOST:PORT, ray://…); None: a local one
    population: str = "v2"  # prostate phantom population of the seeds (issue 16); the committed weights saw "v1"


class AcerNet(nn.Module):
    """SPEC §1.9: Linear(300→32) → ReLU → LSTM(32) → (policy logits, Q) heads."""

    def __init__(self, obs_dim: int = 300, n_actions: int = 18, hidden: int = 32):
        super().__init__()
        self.fc = nn.Linear(obs_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.pi = nn.Linear(hidden, n_actions)
        self.q = nn.Linear(hidden, n_actions)

    def forward(self, s: torch.Tensor, state=None):
        """s: (B, T, obs_dim) → logits (B, T, A), Q (B, T, A), LSTM state."""
        z, state = self.lstm(torch.relu(self.fc(s)), state)
        return self.pi(z), self.q(z), state


def retrace(r, Q_a, V, rho_bar, V_T, gamma: float, terminal: bool) -> torch.Tensor:
    """Q_ret of one trajectory (eq. 5), all 1-D over t = 0..T−1 (detached inputs); V_T = V(s_T),
    ignored when ``terminal``."""
    Q_ret = torch.zeros(()) if terminal else torch.as_tensor(V_T, dtype=torch.float32)
    out = torch.empty(len(r))
    for t in reversed(range(len(r))):
        Q_ret = r[t] + gamma * Q_ret
        out[t] = Q_ret
        Q_ret = rho_bar[t] * (Q_ret - Q_a[t]) + V[t]
    return out


def acer_policy_loss(logits, a, rho, Q, Q_ret, c: float) -> torch.Tensor:
    """−(g^ACER) summed over t (eq. 6): logits (T, A) carry the gradient; a (T,), ρ = π/μ (T, A),
    Q (T, A) and Q_ret (T,) are treated as constants."""
    log_pi = torch.log_softmax(logits, -1)
    pi = log_pi.exp().detach()
    V = (pi * Q).sum(-1)
    idx = torch.arange(len(a))
    rho_a = rho[idx, a]
    truncated = torch.clamp(rho_a, max=c) * log_pi[idx, a] * (Q_ret - V)
    correction = (torch.clamp(1.0 - c / rho, min=0.0) * pi * log_pi * (Q - V[:, None])).sum(-1)
    return -(truncated + correction).sum()


@dataclass
class Episode:
    """One stored trajectory: observations s_0..s_T (T + 1, obs_dim), actions, rewards, the
    behaviour policy μ(·|s_t) (T, A), whether s_T is terminal, and the actions allowed in each
    state (T + 1, A; None: all)."""

    s: np.ndarray
    a: np.ndarray
    r: np.ndarray
    mu: np.ndarray
    terminal: bool
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.a)


def masked(logits: torch.Tensor, mask: np.ndarray | None) -> torch.Tensor:
    """Logits with the disallowed actions at −10⁹ (π = 0 there, finite log π; None: unchanged)."""
    if mask is None:
        return logits
    return logits.masked_fill(~torch.as_tensor(mask, dtype=torch.bool), -1e9)


def acer_loss(net: AcerNet, ep: Episode, args: Args, on_policy: bool) -> torch.Tensor:
    """Policy (eq. 6) + entropy (β) + critic (eq. 5) loss of one trajectory."""
    logits, Q, _ = net(torch.as_tensor(ep.s)[None])
    logits, Q = masked(logits[0], ep.mask), Q[0]
    log_pi = torch.log_softmax(logits, -1)
    pi = log_pi.exp()
    T = len(ep)
    a = torch.as_tensor(ep.a)
    rho = torch.ones(T, logits.shape[-1]) if on_policy else pi[:T].detach() / torch.as_tensor(ep.mu).clamp_min(1e-8)
    Qd, pid = Q.detach(), pi.detach()
    V = (pid * Qd).sum(-1)
    idx = torch.arange(T)
    rho_bar = torch.clamp(rho[idx, a], max=args.c if args.retrace_c else 1.0)
    terminal = ep.terminal or not args.bootstrap_truncated
    Q_ret = retrace(torch.as_tensor(ep.r), Qd[idx, a], V[:T], rho_bar, V[T], args.gamma, terminal)
    policy = acer_policy_loss(logits[:T], a, rho, Qd[:T], Q_ret, args.c)
    entropy = -(pi[:T] * log_pi[:T]).sum()
    critic = 0.5 * ((Q_ret - Q[idx, a]) ** 2).sum()
    return (policy - args.beta * entropy + args.q_coef * critic) / T


class Replay:
    """Episodes, oldest dropped beyond ``capacity`` steps (t_rep)."""

    def __init__(self, capacity: int):
        self.capacity, self.episodes, self.steps = capacity, [], 0

    def add(self, ep: Episode) -> None:
        self.episodes.append(ep)
        self.steps += len(ep)
        while self.steps > self.capacity:
            self.steps -= len(self.episodes.pop(0))

    def sample(self, rng: np.random.Generator, t_B: int) -> list[Episode]:
        batch, n = [], 0
        while n < t_B:
            batch.append(self.episodes[int(rng.integers(len(self.episodes)))])
            n += len(batch[-1])
        return batch


def play(env, net: AcerNet, rng: np.random.Generator, seed: int, options=None,
         mask_no_ops: bool = False) -> tuple[Episode, float]:
    """One episode sampled from π (μ = π recorded): the Episode and its (undiscounted) return; with
    ``mask_no_ops``, π over ``env.action_mask()`` only (when the environment has one)."""
    obs, _ = env.reset(seed=seed, options=options)
    s, a, r, mu, state, terminal = [obs.ravel()], [], [], [], None, False
    masks = [env.action_mask()] if mask_no_ops and hasattr(env, "action_mask") else None
    with torch.no_grad():
        for _ in range(env.max_steps):
            logits, _, state = net(torch.as_tensor(s[-1])[None, None], state)
            probs = torch.softmax(masked(logits[0, 0], masks[-1] if masks else None), -1).double().numpy()
            probs /= probs.sum()
            action = int(rng.choice(len(probs), p=probs))
            obs, reward, terminal, truncated, _ = env.step(action)
            s.append(obs.ravel()), a.append(action), r.append(reward), mu.append(probs)
            if masks is not None:
                masks.append(env.action_mask())
            if terminal or truncated:
                break
    ep = Episode(np.stack(s).astype(np.float32), np.array(a), np.array(r, np.float32),
                 np.stack(mu).astype(np.float32), bool(terminal), None if masks is None else np.stack(masks))
    return ep, float(sum(r))


class AcerPolicy:
    """The trained planner (Policy protocol): greedy argmax π with the LSTM state carried across the
    steps of an episode (as in training) and cleared by ``reset()``; ``rank`` gives (action,
    probability) best first. One ``rank`` or ``act`` call per step: each advances the LSTM, also
    when the observation repeats (an action that changed nothing), as ``play`` does in training.
    ``mask_env``: π over that environment's ``action_mask()`` at each call (a net trained with
    ``mask_no_ops``); the order of the moving actions, hence the loop's choice, is the same either way."""

    name = "acer"
    value_kind = "probability"

    def __init__(self, net: AcerNet, mask_env=None):
        self.net, self.mask_env = net.eval(), mask_env
        self.reset()

    def reset(self) -> None:
        self._state = None

    def probabilities(self, observation: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(np.asarray(observation, np.float32).ravel())
        mask = None if self.mask_env is None else self.mask_env.action_mask()
        with torch.no_grad():
            logits, _, self._state = self.net(obs[None, None], self._state)
        return torch.softmax(masked(logits[0, 0], mask).double(), -1).numpy()

    def rank(self, observation: np.ndarray) -> list[tuple[int, float]]:
        probs = self.probabilities(observation)
        return [(int(a), float(probs[a])) for a in np.argsort(-probs, kind="stable")]

    def act(self, observation: np.ndarray) -> int:
        return self.rank(observation)[0][0]


def make_env(seeds, dose_grid_factor=(2, 4, 4), max_iter: int = 60, init: str = "random", t_epi: int = 20,
             cold_start: bool = True, partial_band: float | None = None, population: str = "v1"):
    """A ProstateEnv over its own InHousePhoton (7 beams) on ``seeds``: ``cold_start`` optimises every
    plan from scratch (``warm_start=False``: warm-started, a one-step-lookahead oracle stays at ψ = 8 from
    random TPPs, cold it reaches 9; docs/results.md); ``partial_band`` scores with proknow9's partial
    credit of that band (binary: None); ``population`` the phantom population of ``seeds``."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.policies.env_prostate import ENGINE, ProstateEnv

    engine = {**ENGINE, "max_iter": max_iter, "warm_start": not cold_start}
    tps = InHousePhoton(dose_grid_factor=tuple(dose_grid_factor), **engine)
    options = None if partial_band is None else {"partial": True, "band": partial_band}
    return ProstateEnv(tps, case_seeds=tuple(seeds), max_steps=t_epi, init=init,
                       score_options=options, population=population)


def engine_of(args: Args) -> dict:
    """The TPS a run of ``args`` plans with (``InHousePhoton`` options), for its record."""
    from rtautoplan.policies.env_prostate import ENGINE

    return {"adapter": "inhouse-photon", **ENGINE, "max_iter": args.max_iter, "warm_start": not args.cold_start,
            "dose_grid_factor": list(args.dose_grid_factor)}


def validate(env, net: AcerNet, seeds, n_random: int, max_steps: int = 20) -> float:
    """Mean best ψ of the greedy policy (closed loop, SPEC §1.1) on each validation case, from the
    trivial TPPs and from ``n_random`` random ones (fixed reset seeds)."""
    from rtautoplan.loop import run_loop

    policy, scores = AcerPolicy(net), []
    for case_seed in seeds:
        for k in range(n_random + 1):
            init = "trivial" if k == 0 else "random"
            loop = run_loop(env, policy, max_steps, seed=10_000 + 100 * int(case_seed) + k,
                            options={"case_seed": int(case_seed), "init": init})
            scores.append(float(loop.best_score.total))
    net.train()
    return float(np.mean(scores))


@dataclass
class TrainRecord:
    """What ``train`` did: where the selected weights are, with what, and the validation curve."""

    weights: str
    args: dict
    seed: int
    steps: int
    episodes: int
    wall_s: float
    best_step: int
    best_validation: float
    validation: list = field(default_factory=list)
    """[(step, validation ψ, mean training return of the last 20 episodes)]"""
    torch_version: str = torch.__version__
    population: str = "v1"
    """the phantom population trained and validated on (``rtautoplan.phantom.make_case``)"""
    engine: dict = field(default_factory=dict)
    """the TPS it planned with (``engine_of``)"""
    command: str = ""
    """the ``rtautoplan train acer`` line that re-makes these weights (``reproduce_command``)"""


# Arguments that decide where and how fast a run goes, not the weights it makes.
_NOT_WEIGHTS = ("progress", "wall_budget_s", "actors", "ray_address")


def reproduce_command(args: Args, best_step: int) -> str:
    """The ``rtautoplan train acer`` line that re-makes the selected weights (bit-identical on CPU): every
    argument off its default, ``--T-max`` at the selected step (a run stopped later, or by its wall
    budget, selected an earlier checkpoint), and always ``--population``."""
    default, parts = Args(), ["rtautoplan train acer"]
    for f in fields(Args):
        value = best_step if f.name == "T_max" else getattr(args, f.name)
        if f.name in _NOT_WEIGHTS or (value == getattr(default, f.name) and f.name != "population"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (tuple, list)):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        else:
            parts.append(f"{flag} {'none' if value is None else value}")
    return " ".join(parts)


def train(args: Args, envs=None, val_env=None, validate_fn=validate) -> TrainRecord:
    """Train ACER (module docstring); write the selected weights, the JSON record and the curve.
    ``envs`` (one per actor) and ``val_env`` default to prostate environments of ``args``."""
    deterministic(args.engine_threads)
    torch.manual_seed(args.seed)
    factories = [functools.partial(given, env) for env in envs] if envs else args.n_actors * [functools.partial(
        make_env, args.train_seeds, args.dose_grid_factor, args.max_iter, t_epi=args.t_epi,
        cold_start=args.cold_start, partial_band=args.partial_band, population=args.population)]
    workers = env_workers(args.actors, factories, functools.partial(deterministic, args.engine_threads),
                          args.ray_address)
    try:
        return _train(args, workers, len(factories), val_env, validate_fn)
    finally:
        workers.close()


def play_on(env, net: AcerNet, rng: np.random.Generator, seed: int, options, mask_no_ops: bool):
    """``play`` as a worker call: (Episode, return, the advanced ``rng``), so a Ray actor hands its state back."""
    ep, ret = play(env, net, rng, seed, options, mask_no_ops)
    return ep, ret, rng


def _train(args: Args, workers, n_actors: int, val_env, validate_fn) -> TrainRecord:
    rng = np.random.default_rng(args.seed)
    val_env = val_env if val_env is not None or validate_fn is None else make_env(
        args.val_seeds, args.dose_grid_factor, args.max_iter, t_epi=args.t_epi, cold_start=args.cold_start,
        population=args.population)
    net = AcerNet(*workers.run([(0, env_spaces, ())])[0])
    if args.init_from:
        net.load_state_dict(load_net(args.init_from).state_dict())
    opt = torch.optim.RMSprop(net.parameters(), lr=args.lr, alpha=args.rms_alpha, eps=args.rms_eps)
    replay, returns, curve = Replay(args.t_rep), [], []
    best = (-np.inf, 0, copy.deepcopy(net.state_dict()))
    steps = episodes = 0
    next_eval = args.t_eval
    start = time.perf_counter()

    def update(ep_batch, on_policy):
        beta0 = args.beta if args.beta_start is None else args.beta_start
        frac = min(1.0, steps / args.beta_steps) if args.beta_steps > 0 else 1.0
        step_args = replace(args, beta=beta0 + frac * (args.beta - beta0))
        opt.zero_grad()
        losses = [acer_loss(net, ep, step_args, on_policy) for ep in ep_batch]
        if args.batch_mean:  # acer_loss is a per-step mean: weight by length, divide by the batch's steps
            loss = sum(l * len(ep) for l, ep in zip(losses, ep_batch)) / sum(len(ep) for ep in ep_batch)
        else:
            loss = sum(losses)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
        opt.step()

    with TrainProgress(args) as bar:
        while steps < args.T_max and (args.wall_budget_s is None or time.perf_counter() - start < args.wall_budget_s):
            options = {"init": "trivial"} if args.p_trivial > 0 and rng.random() < args.p_trivial else None
            call = (net, rng, int(rng.integers(2 ** 31)), options, args.mask_no_ops)
            ep, ret, rng = workers.run([(episodes % n_actors, play_on, call)])[0]
            replay.add(ep), returns.append(ret)
            steps, episodes = steps + len(ep), episodes + 1
            update([ep], True)
            if replay.steps >= args.t_s:
                for _ in range(rng.poisson(args.p)):
                    update(replay.sample(rng, args.t_B), False)
            if validate_fn is not None and steps >= next_eval:
                next_eval += args.t_eval
                score = validate_fn(val_env, net, args.val_seeds, args.val_inits, args.t_epi)
                curve.append((steps, score, float(np.mean(returns[-20:]))))
                if score >= best[0]:
                    best = (score, steps, copy.deepcopy(net.state_dict()))
                    _save(args, best[2], _record(args, steps, episodes, start, best, curve))
                if not args.progress:
                    print(f"step {steps} episodes {episodes} wall {time.perf_counter() - start:.0f} s  validation ψ "
                          f"{score:.3f}  return {curve[-1][2]:.3f}  best {best[0]:.3f} at {best[1]}", flush=True)
            bar.show(steps, float(np.mean(returns[-20:])), curve[-1][1] if curve else float("nan"))
    if validate_fn is None:
        best = (float("nan"), steps, net.state_dict())
    record = _record(args, steps, episodes, start, best, curve)
    _save(args, best[2], record)
    return record


def _record(args: Args, steps: int, episodes: int, start: float, best: tuple, curve: list) -> TrainRecord:
    return TrainRecord(jsonable({"out": args.out})["out"], jsonable(asdict(args)), args.seed, steps, episodes,
                       time.perf_counter() - start, best[1], float(best[0]), list(curve), population=args.population,
                       engine=engine_of(args), command=reproduce_command(args, best[1]))


def _save(args: Args, state_dict, record: TrainRecord) -> None:
    """Weights (.pt, with the network shape), record (.json), validation curve (.png)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = {"obs_dim": state_dict["fc.weight"].shape[1], "n_actions": state_dict["pi.weight"].shape[0]}
    torch.save({"state_dict": state_dict, "shape": shape}, out)
    out.with_suffix(".json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    if record.validation:
        from rtautoplan.policies.acer_eval import plot_validation

        plot_validation(record, out.with_name(out.stem + "_validation.png"))


def load_net(path: str | Path = WEIGHTS) -> AcerNet:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = AcerNet(int(blob["shape"]["obs_dim"]), int(blob["shape"]["n_actions"]))
    net.load_state_dict(blob["state_dict"])
    return net


def load(env=None, seed: int = 0, path: str | Path = WEIGHTS) -> AcerPolicy:
    """The ACER planner of ``path`` (default ``WEIGHTS``, the v2 planner) on ``env``: masked by its
    ``action_mask`` when the training record says ``mask_no_ops``. ``seed`` is accepted for the
    ``POLICIES`` factory signature; the greedy policy needs none."""
    record = Path(path).with_suffix(".json")
    trained = json.loads(record.read_text()).get("args", {}) if record.exists() else {}
    masked_env = env if trained.get("mask_no_ops") and hasattr(env, "action_mask") else None
    policy = AcerPolicy(load_net(path), masked_env)
    policy.weights_path = Path(path)
    return policy


def ensemble(env=None, path: str | Path = WEIGHTS) -> list[AcerPolicy]:
    """The other committed ACER planners beside ``path`` (``acer_prostate*.pt``: the v1 planner, its
    first stage and the v3 fine-tune next to the v2 default): the ensemble whose disagreement with the planner is its
    epistemic uncertainty (SPEC §5.4)."""
    path = Path(path)
    others = sorted(p for p in path.parent.glob("acer_prostate*.pt") if p.resolve() != path.resolve())
    return [load(env, path=p) for p in others]