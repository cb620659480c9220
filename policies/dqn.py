"""A small DQN on seed 000's prostate environment: the contrast of the FGSM robustness table
(SPEC §1.16, Table 4; Sprouts et al.'s DQN planner, SPEC §1.14 baseline), CleanRL style.

Q network DVH (300) → Linear 32 → ReLU → Linear 32 → ReLU → Linear 18 (no memory: the DQN baseline
sees the DVHs only). ε-greedy (1 → ε_end linearly over ``explore_fraction`` of the steps), replay,
a target network copied every ``target_every`` steps, Huber loss on the one-step target, Adam.
Same environment as ACER (``acer.make_env``: training seed 0, random TPPs, no warm start, binary Δψ,
standard dose grid); no action mask (Sprouts et al.'s DQN had none).
The DQN serves the robustness comparison only; it is not selected on validation cases.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rtautoplan.policies.acer import TrainProgress, make_env
from rtautoplan.training import jsonable
from rtautoplan.policies.env_prostate import ENGINE
from torch import nn

WEIGHTS = Path(__file__).resolve().parent / "weights" / "dqn_prostate.pt"


@dataclass
class Args:
    """DQN training arguments ([CONVENTION]: CleanRL's DQN defaults scaled to our step budget)."""

    seed: int = 0
    """torch / numpy / episode seed"""
    T_max: int = 2_000
    """total environment steps"""
    t_epi: int = 20
    """maximum episode length (SPEC §1.11)"""
    buffer: int = 10_000
    """replay capacity (transitions)"""
    learning_starts: int = 200
    """transitions before the first update"""
    batch: int = 32
    """replay batch size"""
    gamma: float = 0.99
    """discount γ"""
    lr: float = 1e-3
    """Adam learning rate"""
    eps_end: float = 0.05
    """final ε of the ε-greedy exploration"""
    explore_fraction: float = 0.5
    """fraction of T_max over which ε falls from 1 to eps_end"""
    target_every: int = 250
    """steps between target-network copies"""
    partial_band: float | None = None
    """training reward: Δψ with partial credit of this band (None: binary ψ, as the committed ACER)"""
    dose_grid_factor: tuple[int, int, int] = (1, 2, 2)
    """TPS dose grid (the standard one, as the committed ACER)"""
    engine_threads: int = 1
    """$RTAUTOPLAN_THREADS of the TPS (as ACER's ``Args.engine_threads``)"""
    out: str = str(WEIGHTS)
    """weights path (a .json record beside it)"""
    progress: bool = True
    """rich progress bar"""


class QNet(nn.Module):
    def __init__(self, obs_dim: int = 300, n_actions: int = 18, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_actions))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s.flatten(-2) if s.dim() > 2 else s)


class DqnPolicy:
    """Greedy argmax Q (Policy protocol); ``rank`` gives (action, Q value) best first."""

    name = "dqn"
    value_kind = "q"

    def __init__(self, net: QNet):
        self.net = net.eval()

    def q_values(self, observation: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.as_tensor(np.asarray(observation, np.float32).ravel())[None])[0].double().numpy()

    def rank(self, observation: np.ndarray) -> list[tuple[int, float]]:
        q = self.q_values(observation)
        return [(int(a), float(q[a])) for a in np.argsort(-q, kind="stable")]

    def act(self, observation: np.ndarray) -> int:
        return self.rank(observation)[0][0]


def train(args: Args, env=None) -> dict:
    """Train the DQN; save the last weights and a JSON record; return the record."""
    os.environ["RTAUTOPLAN_THREADS"] = str(args.engine_threads)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    env = env or make_env((0,), args.dose_grid_factor, t_epi=args.t_epi, partial_band=args.partial_band)
    obs_dim, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    q = QNet(obs_dim, n_actions)
    q_target = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr)
    S, A, R, S2, D = (np.zeros((args.buffer, obs_dim), np.float32), np.zeros(args.buffer, np.int64),
                      np.zeros(args.buffer, np.float32), np.zeros((args.buffer, obs_dim), np.float32),
                      np.zeros(args.buffer, np.float32))
    n = episodes = 0
    ret, returns = 0.0, [0.0]
    start = time.perf_counter()
    obs, _ = env.reset(seed=int(rng.integers(2 ** 31)))
    with TrainProgress(args) as bar:
        for step in range(args.T_max):
            eps = max(args.eps_end, 1.0 - (1.0 - args.eps_end) * step / (args.explore_fraction * args.T_max))
            if rng.random() < eps:
                a = int(rng.integers(n_actions))
            else:
                with torch.no_grad():
                    a = int(q(torch.as_tensor(obs.ravel())[None]).argmax())
            obs2, r, terminated, truncated, _ = env.step(a)
            i = n % args.buffer
            S[i], A[i], R[i], S2[i], D[i] = obs.ravel(), a, r, obs2.ravel(), float(terminated)
            n, ret, obs = n + 1, ret + r, obs2
            if terminated or truncated:
                returns.append(ret)
                ret, episodes = 0.0, episodes + 1
                obs, _ = env.reset(seed=int(rng.integers(2 ** 31)))
            if n >= args.learning_starts:
                j = rng.integers(min(n, args.buffer), size=args.batch)
                with torch.no_grad():
                    y = torch.as_tensor(R[j]) + args.gamma * (1 - torch.as_tensor(D[j])) * \
                        q_target(torch.as_tensor(S2[j])).max(-1).values
                pred = q(torch.as_tensor(S[j])).gather(1, torch.as_tensor(A[j])[:, None])[:, 0]
                loss = nn.functional.smooth_l1_loss(pred, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if step % args.target_every == 0:
                q_target.load_state_dict(q.state_dict())
            bar.show(step + 1, float(np.mean(returns[-20:])), float("nan"))
    record = {"weights": jsonable({"out": args.out})["out"], "args": jsonable(asdict(args)),
              "seed": args.seed, "steps": args.T_max, "episodes": episodes, "wall_s": time.perf_counter() - start,
              "mean_return_last_20": float(np.mean(returns[-20:])), "torch_version": torch.__version__,
              "population": env.population,
              "engine": {"adapter": "inhouse-photon", **ENGINE, "dose_grid_factor": list(args.dose_grid_factor)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": q.state_dict(), "shape": {"obs_dim": obs_dim, "n_actions": n_actions}}, out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load(env=None, seed: int = 0, path: str | Path = WEIGHTS) -> DqnPolicy:
    """The committed DQN (``policies/weights/dqn_prostate.pt``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = QNet(int(blob["shape"]["obs_dim"]), int(blob["shape"]["n_actions"]))
    net.load_state_dict(blob["state_dict"])
    return DqnPolicy(net)
