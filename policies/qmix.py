"""Seed 003's planner: QMIX over 45 agents on the carbon H&N environment (SPEC §3.4–§3.6).

* **Agents** (``AgentNet``, Fig. 2): the DVH history {s_1 … s_t} (19 × 150) goes through
  Linear → ReLU → LSTM; each of the 45 agents (Table A1's parameters, ``env_carbon.AGENTS``) has its
  own dueling head, Q^i = V^i + A^i − mean_a A^i (Eq. 3), over a ∈ {left, stay, right}. The
  encoder is shared: every agent observes the same DVHs, so 45 copies would learn one function
  45 times ([NOT SPECIFIED] parameter sharing, docs/decisions.md).
* **Mixer** (``Mixer``, Eq. 2): hypernetworks of the state s_t (the same DVHs, through one
  Linear → ReLU) give the weights of a two-layer mixing network, made non-negative with abs, so
  ∂Q_tot/∂Q_i ≥ 0; decentralised execution is each agent's argmax.
* **Loss** (Eq. 4, Double DQN): y = r_t + γ · Q_tot^tar(s_{t+1}, argmax_a Q_i(s_{1..t+1}, a)),
  the argmax by the online agents, Q_tot^tar by target networks copied every ``target_every``
  updates; MSE. Episodes are truncated at T = 10 with no terminal state (§3.6), so every step,
  the last included, bootstraps.
* **ε-greedy** per agent: ε = ε₀ · 0.9^⌊episode / 5⌋, ε₀ = 0.9 (§3.6, the preferred reading).
* **Data workers** (§3.6): ``data_workers`` workers, each with its own environment and its own HTTP
  session on one PHOENIX server process (``rtautoplan phoenix-server``, started here unless ``url``
  names one), collect one episode each in parallel into the data bank; then ``updates`` gradient
  steps on batches of whole episodes; then collect again (synchronous, as the paper). The workers are
  threads of this process (``workers="threads"``) or Ray actors (``workers="ray"``, ``policies/workers.py``):
  the server's URL travels to each actor, which opens its own client; the server does the optimisation.
* **Reproducible**: episode k's environment seed and exploration draws come from (seed, k), worker i
  always plays episode ``round + i``, the bank is filled in episode order whatever worker finishes
  first, torch runs single-threaded with deterministic algorithms (in every Ray actor too), and the
  server's optimiser is deterministic: a run repeated gives the same weights, with threads or with Ray
  actors (tests/test_qmix.py, tests/test_cluster.py).
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rtautoplan.errors import InputError
from rtautoplan.policies import env_carbon as C
from rtautoplan.policies.workers import deterministic, env_workers, given
from rtautoplan.scoring.table_a2 import MAX_PHI

WEIGHTS = Path(__file__).resolve().parent / "weights" / "qmix_carbon_v2.pt"
N_AGENTS = len(C.AGENTS)
N_ACTIONS = len(C.MOVE)
OBS_SHAPE = (1 + len(C.OAR_GOALS_GY), C.DVH_POINTS)
OBS_DIM = int(np.prod(OBS_SHAPE))


@dataclass
class Args:
    """QMIX training arguments (SPEC §3.4–§3.6; [NOT SPECIFIED] ones are ours, docs/decisions.md)."""

    seed: int = 0
    """torch / numpy / episode seed"""
    episodes: int = 40
    """episodes in total (the paper: 500; its policy settled between 200 and 300)"""
    data_workers: int = 10
    """episodes collected in parallel per round (§3.6: 10 data workers)"""
    t_steps: int = 10
    """episode length T (§3.6)"""
    case_seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    """H&N phantom seeds of the training population (§3.1: 10 training cases)"""
    gamma: float = 0.9
    """discount γ (§3.4)"""
    eps_start: float = 0.9
    """ε₀ (§3.6)"""
    eps_decay: float = 0.9
    """ε ← eps_decay · ε every eps_every episodes (§3.6)"""
    eps_every: int = 5
    """episodes between ε decays"""
    lr: float = 5e-4
    """Adam learning rate"""
    batch: int = 8
    """episodes per gradient step"""
    updates: int = 20
    """gradient steps after each round of collection"""
    bank: int = 500
    """data bank capacity (episodes)"""
    target_every: int = 20
    """gradient steps between target-network copies"""
    hidden: int = 64
    """DVH encoder and LSTM width"""
    mix_embed: int = 32
    """mixing network width"""
    reward_scale: float = 0.1
    """rewards (φ − 102.2, Table A2 points) × this in the TD target"""
    grad_clip: float = 10.0
    """gradient norm clip"""
    max_iterations: int = 100
    """PHOENIX optimiser iterations per step"""
    server_workers: int = 2
    """optimisation processes of the server started here"""
    dose_grid_mm: float = 5.0
    """PHOENIX dose grid (mm)"""
    url: str = ""
    """a running phoenix-server to use instead of starting one"""
    workers: str = "threads"
    """where the data workers run: "threads" (of this process) or "ray" (one Ray actor each, docs/cluster.md)"""
    ray_address: str | None = None
    """with workers="ray": the cluster (auto, HOST:PORT, ray://…); None: a local one"""
    ray_cpus: float = 0.2
    """CPUs Ray reserves per data-worker actor (it waits on the server, which does the optimisation)"""
    max_wall_s: float = 0.0
    """stop after the round that passes this wall time (s; 0: no limit); the record says so"""
    out: str = str(WEIGHTS)
    """weights path (a .json record beside it)"""
    progress: bool = True
    """rich progress bar"""


class AgentNet(nn.Module):
    """The 45 agents' DRQN with dueling heads: (B, L, 19, 150) DVH histories → (B, L, 45, 3) Q values."""

    def __init__(self, n_agents: int = N_AGENTS, obs_dim: int = OBS_DIM, hidden: int = 64, n_actions: int = N_ACTIONS):
        super().__init__()
        self.embed = nn.Linear(obs_dim, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        scale = hidden ** -0.5
        self.v_w = nn.Parameter(torch.randn(n_agents, hidden) * scale)
        self.v_b = nn.Parameter(torch.zeros(n_agents))
        self.a_w = nn.Parameter(torch.randn(n_agents, n_actions, hidden) * scale)
        self.a_b = nn.Parameter(torch.zeros(n_agents, n_actions))

    def forward(self, obs: torch.Tensor, hc=None):
        h, hc = self.lstm(torch.relu(self.embed(obs.flatten(2))), hc)
        v = torch.einsum("blh,nh->bln", h, self.v_w) + self.v_b
        a = torch.einsum("blh,nah->blna", h, self.a_w) + self.a_b
        return v[..., None] + a - a.mean(-1, keepdim=True), hc


class Mixer(nn.Module):
    """Monotonic mixing (Eq. 2): (B, L, 45) agent Q values and (B, L, 19, 150) states → (B, L) Q_tot."""

    def __init__(self, n_agents: int = N_AGENTS, state_dim: int = OBS_DIM, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.n_agents, self.embed = n_agents, embed
        self.state = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU())
        self.w1 = nn.Linear(hidden, n_agents * embed)
        self.b1 = nn.Linear(hidden, embed)
        self.w2 = nn.Linear(hidden, embed)
        self.v = nn.Sequential(nn.Linear(hidden, embed), nn.ReLU(), nn.Linear(embed, 1))

    def forward(self, q: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        s = self.state(states.flatten(2))
        w1 = torch.abs(self.w1(s)).unflatten(-1, (self.n_agents, self.embed))
        hidden = nn.functional.elu(torch.einsum("bln,blne->ble", q, w1) + self.b1(s))
        return (hidden * torch.abs(self.w2(s))).sum(-1) + self.v(s)[..., 0]


@dataclass(frozen=True)
class Episode:
    """One episode: observations s_0 … s_T (T+1, 19, 150), joint actions (T, 45) as Discrete
    indices, rewards (T,) and the Table A2 score φ of every state (T+1,)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    scores: np.ndarray
    case_id: str

    @property
    def relative_best(self) -> float:
        """max_t φ(s_t) / max φ (§3.6's performance metric)."""
        return float(self.scores[1:].max() / MAX_PHI) if len(self.scores) > 1 else float(self.scores[0] / MAX_PHI)


def epsilon(episode: int, args: Args) -> float:
    """ε of episode ``episode`` (0-based): ε₀ · decay^⌊episode / every⌋ (SPEC §3.6)."""
    return args.eps_start * args.eps_decay ** (episode // args.eps_every)


def episode_rng(seed: int, episode: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, episode]))


def greedy(q: torch.Tensor) -> np.ndarray:
    """Each agent's argmax (lowest index on ties) of (45, 3) Q values."""
    return q.argmax(-1).numpy()


class DataWorker:
    """One environment (its own HTTP session on the shared server) that plays episodes."""

    def __init__(self, env):
        self.env = env

    def play(self, net: AgentNet, episode: int, args: Args) -> Episode:
        rng = episode_rng(args.seed, episode)
        eps = epsilon(episode, args)
        obs, infos = self.env.reset(seed=int(rng.integers(2**31)))
        agents = list(self.env.possible_agents)
        first = obs[agents[0]]
        observations, actions, rewards, scores = [first], [], [], [infos[agents[0]]["score"]]
        hc = None
        for _ in range(args.t_steps):
            with torch.no_grad():
                q, hc = net(torch.as_tensor(observations[-1])[None, None], hc)
            a = greedy(q[0, 0])
            explore = rng.random(len(agents)) < eps
            a = np.where(explore, rng.integers(N_ACTIONS, size=len(agents)), a)
            obs, reward, _, truncated, infos = self.env.step(dict(zip(agents, a.tolist())))
            observations.append(obs[agents[0]])
            actions.append(a)
            rewards.append(reward[agents[0]])
            scores.append(infos[agents[0]]["score"])
            if truncated[agents[0]]:
                break
        return Episode(np.stack(observations).astype(np.float32), np.stack(actions).astype(np.int64),
                       np.asarray(rewards, np.float32), np.asarray(scores, np.float64), self.env.case.case_id)


def td_loss(agent: AgentNet, mixer: Mixer, target_agent: AgentNet, target_mixer: Mixer, batch: list[Episode],
            args: Args) -> torch.Tensor:
    """Eq. 4 on whole episodes (every step bootstraps: no terminal state)."""
    obs = torch.as_tensor(np.stack([e.obs for e in batch]))  # (B, T+1, 19, 150)
    actions = torch.as_tensor(np.stack([e.actions for e in batch]))  # (B, T, N)
    rewards = torch.as_tensor(np.stack([e.rewards for e in batch])) * args.reward_scale  # (B, T)
    q, _ = agent(obs)  # (B, T+1, N, 3)
    chosen = q[:, :-1].gather(-1, actions[..., None])[..., 0]
    q_tot = mixer(chosen, obs[:, :-1])
    with torch.no_grad():
        next_a = q[:, 1:].argmax(-1, keepdim=True)  # online argmax (Double DQN)
        q_tar, _ = target_agent(obs)
        y = rewards + args.gamma * target_mixer(q_tar[:, 1:].gather(-1, next_a)[..., 0], obs[:, 1:])
    return nn.functional.mse_loss(q_tot, y)


def _server(args: Args, server):
    """(server object, started here) : the given one, the one at ``args.url``, or a new process."""
    from rtautoplan.adapters.phoenix_api.client import LocalServerProcess, RemoteServer

    if server is not None:
        return server, None
    if args.url:
        return RemoteServer(args.url), None
    started = LocalServerProcess(workers=args.server_workers, dose_grid_mm=args.dose_grid_mm)
    return started, started


def _env(args: Args, server, case, index: int) -> C.CarbonHNEnv:
    from rtautoplan.adapters.phoenix import PhoenixAdapter

    return C.CarbonHNEnv(PhoenixAdapter(server=server, user=f"qmix-worker{index}", max_iterations=args.max_iterations),
                         case_seeds=args.case_seeds, case=case, max_steps=args.t_steps)


def make_workers(args: Args, server, case=None) -> list[DataWorker]:
    """``data_workers`` environments on ``server``, sharing one prepared-case cache (a case is
    prepared and sent to the server once)."""
    envs = [_env(args, server, case, i) for i in range(args.data_workers)]
    for env in envs[1:]:
        env._cases = envs[0]._cases
    return [DataWorker(env) for env in envs]


def remote_worker(url: str, index: int, args: Args, case=None) -> DataWorker:
    """Data worker ``index`` built in a Ray actor: its own environment and HTTP client of the server at ``url``
    (it prepares and sends its cases itself)."""
    from rtautoplan.adapters.phoenix_api.client import RemoteServer
    from rtautoplan.adapters.phoenix_api.errors import PhoenixError

    server = RemoteServer(url)
    try:
        server.status()
    except PhoenixError as error:
        raise InputError(f"QMIX data worker {index} on node {socket.gethostname()}", str(error),
                         "Start `rtautoplan phoenix-server --host ADDRESS` on a machine every node reaches and give "
                         "--url http://ADDRESS:PORT (docs/cluster.md)") from None
    return DataWorker(_env(args, server, case, index))


def _close(worker: DataWorker) -> None:
    worker.env.tps.close()


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_workers(args: Args) -> None:
    if args.workers not in ("threads", "ray"):
        raise InputError(f"--workers {args.workers}", "is not known", "Use --workers threads or --workers ray")


def data_workers(args: Args, server, case=None):
    """The pool of ``data_workers`` workers (``policies.workers``): threads sharing ``server`` and the prepared
    cases, or Ray actors, each a client of the server's URL."""
    if args.workers == "threads":
        return env_workers("threads", [functools.partial(given, w) for w in make_workers(args, server, case)])
    _check_workers(args)
    url = getattr(server, "url", None)
    if not url:
        raise InputError("--workers ray", "QMIX's Ray data workers reach the PHOENIX server over HTTP, and this "
                         "server is in-process", "Give --url of a running phoenix-server (or a server with a URL)")
    if args.ray_address and _is_loopback(url):
        raise InputError(f"PHOENIX server {url}", f"listens on this machine's loopback, which the nodes of the Ray "
                         f"cluster {args.ray_address} cannot reach", "Start `rtautoplan phoenix-server --host ADDRESS` "
                         "on a machine every node reaches and give --url http://ADDRESS:PORT (docs/cluster.md)")
    factories = [functools.partial(remote_worker, url, i, args, case) for i in range(args.data_workers)]
    # the actor runs no dose engine (the server does): 1 engine thread is moot, the torch settings are the trainer's
    return env_workers("ray", factories, functools.partial(deterministic, 1), args.ray_address, args.ray_cpus)


class _Progress:
    def __init__(self, args: Args):
        self.args, self.bar = args, None

    def __enter__(self):
        if self.args.progress:
            from rich import progress as rp

            self.bar = rp.Progress(rp.TextColumn("QMIX"), rp.BarColumn(), rp.TextColumn("{task.completed}/{task.total} ep"),
                                   rp.TextColumn("return {task.fields[ret]:.1f}  best φ/φmax {task.fields[rel]:.3f}  "
                                                 "ε {task.fields[eps]:.3f}  loss {task.fields[loss]:.3g}"),
                                   rp.TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.args.episodes, ret=0.0, rel=0.0, eps=1.0, loss=float("nan"))
        return self

    def show(self, **fields) -> None:
        if self.bar is not None:
            self.bar.update(self.task, **fields)
            if not self.bar.console.is_terminal:  # a log file: one line per round
                print(f"QMIX {fields['completed']}/{self.args.episodes} episodes: return {fields['ret']:.1f}, best "
                      f"φ/φmax {fields['rel']:.3f}, ε {fields['eps']:.3f}, loss {fields['loss']:.3g}", flush=True)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def train(args: Args, case=None, server=None) -> dict:
    """Train QMIX; save the weights and a JSON record (engine, population, curves); return the record.

    case: one fixed Case instead of the phantom population; server: a PHOENIX server object
    (``PhoenixServer``, ``RemoteServer``) instead of ``args.url`` / a new server process."""
    if args.episodes < 1 or args.data_workers < 1 or args.t_steps < 1 or args.ray_cpus <= 0:
        raise ValueError("episodes, data_workers and t_steps must be ≥ 1, ray_cpus > 0")
    _check_workers(args)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    agent = AgentNet(hidden=args.hidden)
    mixer = Mixer(hidden=args.hidden, embed=args.mix_embed)
    target_agent, target_mixer = copy.deepcopy(agent), copy.deepcopy(mixer)
    opt = torch.optim.Adam(list(agent.parameters()) + list(mixer.parameters()), lr=args.lr)
    server, started = _server(args, server)
    bank: list[Episode] = []
    rounds, updates, seen = [], 0, {}
    start = time.perf_counter()
    pool = None
    done = 0
    try:
        pool = data_workers(args, server, case)
        with _Progress(args) as bar:
            while done < args.episodes:
                n = min(args.data_workers, args.episodes - done)
                agent.eval()
                episodes = pool.run([(i, DataWorker.play, (agent, done + i, args)) for i in range(n)])
                bank = (bank + episodes)[-args.bank:]
                for e in episodes:
                    seen[e.case_id] = seen.get(e.case_id, 0) + 1
                agent.train()
                losses = []
                for _ in range(args.updates if len(bank) >= min(args.batch, args.episodes) else 0):
                    idx = rng.choice(len(bank), size=min(args.batch, len(bank)), replace=False)
                    loss = td_loss(agent, mixer, target_agent, target_mixer, [bank[i] for i in sorted(idx)], args)
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(list(agent.parameters()) + list(mixer.parameters()), args.grad_clip)
                    opt.step()
                    losses.append(loss.item())
                    updates += 1
                    if updates % args.target_every == 0:
                        target_agent.load_state_dict(agent.state_dict())
                        target_mixer.load_state_dict(mixer.state_dict())
                rounds.append({"episodes": done + n, "epsilon": epsilon(done, args),
                               "mean_return": float(np.mean([e.rewards.sum() for e in episodes])),
                               "mean_relative_best": float(np.mean([e.relative_best for e in episodes])),
                               "mean_relative_first": float(np.mean([e.scores[0] for e in episodes]) / MAX_PHI),
                               "loss": float(np.mean(losses)) if losses else None,
                               "wall_s": time.perf_counter() - start})
                done += n
                bar.show(completed=done, ret=rounds[-1]["mean_return"], rel=rounds[-1]["mean_relative_best"],
                         eps=epsilon(done, args), loss=rounds[-1]["loss"] if losses else float("nan"))
                if args.max_wall_s and time.perf_counter() - start > args.max_wall_s:
                    break
        engine = _engine(args, server)
    finally:
        if pool is not None:
            pool.close(_close)
        if started is not None:
            started.close()
    record = {"algorithm": "QMIX (SPEC §3.4–§3.6)", "weights": Path(args.out).name,
              "args": {k: list(v) if isinstance(v, tuple) else _shown(v) if k == "out" else v
                       for k, v in asdict(args).items()},
              "engine": engine, "population": {"site": "hn" if case is None else None,
                                               "case_seeds": list(args.case_seeds) if case is None else None,
                                               "episodes_per_case": seen},
              "episodes": done, "stopped_by_wall_time": done < args.episodes, "updates": updates, "wall_s": time.perf_counter() - start,
              "rounds": rounds, "torch_version": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"agent": agent.state_dict(), "mixer": mixer.state_dict(),
                "shape": {"hidden": args.hidden, "mix_embed": args.mix_embed, "n_agents": N_AGENTS}}, out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _shown(path: str) -> str:
    """A weights path as recorded: relative to the repository when inside it."""
    root = WEIGHTS.parents[2]
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _engine(args: Args, server) -> dict:
    status = {}
    if hasattr(server, "status"):
        status = server.status()
    elif hasattr(server, "server"):
        status = server.server.status()
    return {"tps": "PHOENIX-like simulator (adapters/phoenix_api), HTTP/JSON" if status else
            "PHOENIX-like simulator (adapters/phoenix_api), in process",
            "server_workers": status.get("workers", getattr(server, "workers", None)),
            "dose_grid_mm": args.dose_grid_mm, "max_iterations": args.max_iterations,
            "fields": "45° and 315°, LQ RBE, PBS (seed 003 defaults)"}


class QmixPolicy:
    """Decentralised greedy execution: each agent's argmax Q^i over the DVH history (Policy protocol;
    ``act`` takes the per-agent observation dict and returns the per-agent action dict). Asked again
    for the same observation (a step the safety filter rejected), it answers from the same history."""

    name = "qmix"

    def __init__(self, agent: AgentNet, agents=C.AGENTS):
        self.agent, self.agents = agent.eval(), list(agents)
        self.reset()

    def reset(self) -> None:
        self._hc, self._last = None, None

    def q_values(self, observation) -> np.ndarray:
        obs = np.asarray(next(iter(observation.values())) if isinstance(observation, dict) else observation,
                         np.float32)
        if self._last is not None and np.array_equal(obs, self._last[0]):
            return self._last[1]
        with torch.no_grad():
            q, self._hc = self.agent(torch.as_tensor(obs)[None, None], self._hc)
        self._last = (obs, q[0, 0].numpy())
        return self._last[1]

    def act(self, observation) -> dict:
        return dict(zip(self.agents, self.q_values(observation).argmax(-1).tolist()))

    def rank(self, observation) -> list[tuple[dict, float]]:
        """The greedy joint action with the agents' mean max Q^i."""
        q = self.q_values(observation)
        return [(dict(zip(self.agents, q.argmax(-1).tolist())), float(q.max(-1).mean()))]


def load(env=None, seed: int = 0, path: str | Path = WEIGHTS) -> QmixPolicy:
    """The committed QMIX agents (``policies/weights/qmix_carbon.pt``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no QMIX weights at {path}: train them with `rtautoplan train qmix` "
                                f"(or plan carbon with --policy rule-based)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    agent = AgentNet(int(blob["shape"]["n_agents"]), hidden=int(blob["shape"]["hidden"]))
    agent.load_state_dict(blob["agent"])
    return QmixPolicy(agent)
