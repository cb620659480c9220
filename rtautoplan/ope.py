"""Off-policy evaluation of a planner from logged planning sessions (SPEC §5.5): ``rtautoplan ope``.

A logged episode (``plan_log.json``, or ``ope_study.episode_log``) holds per step the state s_t, the
action a_t, the behaviour probability μ(a_t|s_t), the reward r_t and the actions available. The
target policy π gives π(a_t|h_t) by replaying the logged states (a recurrent planner carries its
state along, ``TARGETS``). With ρ_t = π(a_t|h_t) / μ(a_t|s_t) and ρ_{0:t} = Π_{k≤t} ρ_k, over n
episodes of horizon T (γ = 1; after an episode ends r = 0 and ρ = 1) the estimators of
V(π) = E_π[Σ_t r_t] are (Precup et al. 2000; Jiang & Li 2016; Thomas & Brunskill 2016):

* IS:     mean_i ρ^i_{0:T} G^i
* WIS:    Σ_i ρ^i_{0:T} G^i / Σ_i ρ^i_{0:T}
* PDIS:   mean_i Σ_t ρ^i_{0:t} r^i_t
* DR:     mean_i Σ_t [ρ^i_{0:t} (r^i_t − Q̂(s_t, a_t)) + ρ^i_{0:t−1} V̂(s_t)],  V̂(s) = Σ_a π(a|s) Q̂(s, a)
* WDR:    DR with ρ_{0:t} normalised over the episodes at each t (weighted doubly robust)

Q̂ is fitted by fitted-Q evaluation of π on the same logs: ridge regression, backwards from the last
step, of r_t + V̂(s_{t+1}) on features φ(s, a) = [summary of s (every 10th DVH point), one-hot a, 1]
(``fit_q``). Confidence intervals: the percentile bootstrap over episodes (``BOOTSTRAP`` resamples,
Q̂ refitted on each), 95 %.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rtautoplan.errors import InputError

BOOTSTRAP = 1000
RIDGE = 1e-2  # ridge penalty of the fitted Q model (features are 0–1 volume fractions and one-hots)
ESTIMATORS = ("IS", "WIS", "PDIS", "DR", "WDR")


@dataclass(frozen=True)
class Episodes:
    """n logged episodes padded to horizon T: states (n, T, d), actions (n, T) int, mu (n, T), rewards
    (n, T), valid (n, T) bool, available (n, T, A) bool; initial scores (n,)."""

    states: np.ndarray
    actions: np.ndarray
    mu: np.ndarray
    rewards: np.ndarray
    valid: np.ndarray
    available: np.ndarray
    initial: np.ndarray
    case_seeds: tuple

    @property
    def returns(self) -> np.ndarray:
        return (self.rewards * self.valid).sum(axis=1)


VALUES = ("return", "kept")  # r_t = Δψ (Σ r = ψ_T − ψ_0); r_t = the rise of the best ψ so far (the kept plan's gain)


def kept_rewards(initial: float, scores: Sequence[float]) -> np.ndarray:
    """r_t = max(ψ_0..ψ_t) − max(ψ_0..ψ_{t−1}): Σ_t r_t is how much the plan the loop keeps (the best
    one, ``loop.run_loop``) gains over the initial plan in the horizon."""
    best = np.maximum.accumulate(np.concatenate([[initial], np.asarray(scores, float)]))
    return np.diff(best)


def read_logs(folder: str | Path, n_actions: int | None = None, horizon: int | None = None,
              value: str = "return") -> Episodes:
    """Every episode log (``*.json`` with steps holding ``state``, ``action_id`` and ``mu``) in ``folder``
    (not its subfolders); only accepted steps are transitions; ``n_actions`` (None: the largest action
    logged + 1); ``horizon``: only the loop's first T steps (None: all); ``value``: the reward of
    ``VALUES``. InputError naming a log that cannot be used."""
    if value not in VALUES:
        raise InputError(f"--value {value}", "is not a value definition here", f"Use one of {', '.join(VALUES)}")
    if horizon is not None and horizon < 1:
        raise InputError(f"--horizon {horizon}", "leaves no step", "Give T ≥ 1 (or leave it out: every step)")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(str(folder), "is not a folder", "Give the folder of logged plan_log.json / episode logs")
    logs = []
    for path in sorted(folder.glob("*.json")):
        try:
            log = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(str(path), f"is not readable JSON ({type(error).__name__})", "Remove it from the folder")
        if not isinstance(log, dict) or "steps" not in log:
            continue
        if value == "kept" and not (isinstance(log.get("initial score"), (int, float))
                                    and all(isinstance(s.get("score"), (int, float)) for s in log["steps"])):
            raise InputError(str(path), "has no initial score or a step without its score, so the kept plan's "
                             "gain is unknown", "Use --value return, or logs written by rtautoplan.ope_study")
        steps = [s for s in log["steps"] if s.get("accepted") and (horizon is None or s.get("step", 0) <= horizon)]
        for s in steps:
            if s.get("mu") is None or s.get("state") is None or not isinstance(s.get("action_id"), int):
                raise InputError(str(path), f"step {s.get('step')} has no μ(a|s), state or discrete action",
                                 "Log with this version of rtautoplan (every step records mu, state, action_id)")
            if not 0.0 < float(s["mu"]) <= 1.0:
                raise InputError(str(path), f"step {s['step']} has μ = {s['mu']}, not a probability in (0, 1]",
                                 "Log with a behaviour policy that has full support (e.g. ε-greedy)")
        logs.append((log, steps))
    if not logs:
        raise InputError(str(folder), "holds no episode log with steps", "Give the folder of logged plan logs")
    T = max(1, max(len(steps) for _, steps in logs))
    if n_actions is None:
        n_actions = 1 + max((max([s["action_id"], *s.get("available", ())]) for _, steps in logs for s in steps),
                            default=0)
    d = int(np.asarray(logs[0][1][0]["state"]).size) if logs[0][1] else 1
    n = len(logs)
    states, actions = np.zeros((n, T, d)), np.zeros((n, T), int)
    mu, rewards = np.ones((n, T)), np.zeros((n, T))
    valid, available = np.zeros((n, T), bool), np.ones((n, T, n_actions), bool)
    for i, (log, steps) in enumerate(logs):
        gains = kept_rewards(float(log["initial score"]), [s["score"] for s in steps]) if value == "kept" else None
        for t, s in enumerate(steps):
            states[i, t] = np.asarray(s["state"], float).ravel()
            actions[i, t], mu[i, t], valid[i, t] = s["action_id"], s["mu"], True
            rewards[i, t] = gains[t] if value == "kept" else s["reward"]
            if s.get("available"):
                available[i, t] = np.isin(np.arange(n_actions), s["available"])
    initial = np.array([float(log.get("initial score", np.nan)) for log, _ in logs])
    return Episodes(states, actions, mu, rewards, valid, available, initial,
                    tuple(log.get("case_seed") for log, _ in logs))


def features(states: np.ndarray, actions: np.ndarray, n_actions: int) -> np.ndarray:
    """φ(s, a): every 10th point of the state, the one-hot action and a constant; (…, d/10 + A + 1)."""
    summary = states[..., ::10]
    onehot = np.eye(n_actions)[actions]
    return np.concatenate([summary, onehot, np.ones(states.shape[:-1] + (1,))], axis=-1)


def fit_q(ep: Episodes, pi: np.ndarray, n_actions: int) -> np.ndarray:
    """Q̂(s_t, a) for every logged s_t and every a, (n, T, A): fitted-Q evaluation of π, backwards in t."""
    n, T, _ = ep.states.shape
    all_actions = np.broadcast_to(np.arange(n_actions), (n, T, n_actions))
    phi_all = features(np.repeat(ep.states[:, :, None, :], n_actions, axis=2), all_actions, n_actions)
    phi = features(ep.states, ep.actions, n_actions)
    q = np.zeros((n, T, n_actions))
    v_next = np.zeros(n)
    for t in range(T - 1, -1, -1):
        rows = ep.valid[:, t]
        if rows.any():
            X, y = phi[rows, t], ep.rewards[rows, t] + v_next[rows]
            w = np.linalg.solve(X.T @ X + RIDGE * np.eye(X.shape[1]), X.T @ y)
            q[:, t] = phi_all[:, t] @ w
        v_next = np.where(ep.valid[:, t], (pi[:, t] * q[:, t]).sum(axis=1), 0.0)
    return q


def estimates(ep: Episodes, pi: np.ndarray, n_actions: int) -> dict[str, float]:
    """Every estimator of V(π) (module docstring); ``pi`` (n, T, A): π(·|h_t) at each logged step."""
    p_taken = np.take_along_axis(pi, ep.actions[..., None], axis=2)[..., 0]
    rho = np.where(ep.valid, p_taken / ep.mu, 1.0)
    cum = np.cumprod(rho, axis=1)
    prev = np.concatenate([np.ones((cum.shape[0], 1)), cum[:, :-1]], axis=1)
    r = ep.rewards * ep.valid
    G, w = r.sum(axis=1), cum[:, -1]
    q = fit_q(ep, pi, n_actions)
    q_taken = np.take_along_axis(q, ep.actions[..., None], axis=2)[..., 0]
    v = (pi * q).sum(axis=2)
    dr_terms = np.where(ep.valid, cum * (r - q_taken) + prev * v, 0.0)
    norm_cum = cum / cum.mean(axis=0, keepdims=True)
    norm_prev = prev / prev.mean(axis=0, keepdims=True)
    wdr_terms = np.where(ep.valid, norm_cum * (r - q_taken) + norm_prev * v, 0.0)
    return {"IS": float(np.mean(w * G)), "WIS": float((w * G).sum() / w.sum()),
            "PDIS": float(np.mean((cum * r).sum(axis=1))), "DR": float(np.mean(dr_terms.sum(axis=1))),
            "WDR": float(np.mean(wdr_terms.sum(axis=1)))}


def _subset(ep: Episodes, idx: np.ndarray) -> Episodes:
    return Episodes(ep.states[idx], ep.actions[idx], ep.mu[idx], ep.rewards[idx], ep.valid[idx], ep.available[idx],
                    ep.initial[idx], tuple(ep.case_seeds[i] for i in idx))


def evaluate(ep: Episodes, pi: np.ndarray, n_actions: int, n_boot: int = BOOTSTRAP, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> dict[str, dict]:
    """name → {estimate, ci95: [lo, hi]} (percentile bootstrap over episodes), plus the effective sample
    size of the trajectory weights and the behaviour's own mean return (on-policy, for reference)."""
    point = estimates(ep, pi, n_actions)
    rng = np.random.default_rng(seed)
    n = ep.actions.shape[0]
    samples = {k: [] for k in ESTIMATORS}
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        for k, value in estimates(_subset(ep, idx), pi[idx], n_actions).items():
            samples[k].append(value)
        if progress is not None:
            progress(b)
    out = {k: {"estimate": round(point[k], 4),
               "ci95": [round(float(np.percentile(samples[k], 2.5)), 4), round(float(np.percentile(samples[k], 97.5)), 4)]}
           for k in ESTIMATORS}
    p_taken = np.take_along_axis(pi, ep.actions[..., None], axis=2)[..., 0]
    w = np.prod(np.where(ep.valid, p_taken / ep.mu, 1.0), axis=1)
    out["effective sample size"] = round(float(w.sum() ** 2 / (w ** 2).sum()), 2)
    out["behaviour mean return"] = round(float(ep.returns.mean()), 4)
    out["episodes"] = int(n)
    return out


def acer_target(ep: Episodes, path: str | Path | None = None) -> np.ndarray:
    """π(·|h_t) of the trained ACER planner at every logged step, (n, T, 18): the logged states replayed
    through its LSTM episode by episode, masked to the actions that were available (as the planner
    is, ``policies/acer.py``)."""
    import torch

    from rtautoplan.policies import acer

    net = acer.load_net(path or acer.WEIGHTS).eval()
    with torch.no_grad():
        logits, _, _ = net(torch.as_tensor(ep.states, dtype=torch.float32))
    logits = logits.double().numpy()
    logits = np.where(ep.available, logits, -np.inf)
    z = np.exp(logits - logits.max(axis=2, keepdims=True))
    return z / z.sum(axis=2, keepdims=True)


# target policy name → (number of actions, π(·|h_t) over logged episodes)
TARGETS: dict[str, tuple[int, Callable[[Episodes], np.ndarray]]] = {"acer": (18, acer_target)}


def run(logs: str | Path, policy: str, n_boot: int = BOOTSTRAP, seed: int = 0, horizon: int | None = None,
        value: str = "return") -> dict:
    """``rtautoplan ope``: the estimates of ``policy``'s value from the episode logs in ``logs`` (first
    ``horizon`` steps, reward ``value``)."""
    if policy not in TARGETS:
        raise InputError(f"--policy {policy}", "has no replayable action distribution π(a|s) here",
                         f"Use one of {', '.join(TARGETS)}")
    n_actions, target = TARGETS[policy]
    ep = read_logs(logs, n_actions, horizon, value)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("bootstrap", total=n_boot)
        return {"policy": policy, "logs": str(logs), "horizon": horizon, "value": value,
                **evaluate(ep, target(ep), n_actions, n_boot, seed, lambda b: bar.update(task, completed=b + 1))}


def measured(folder: str | Path, n_boot: int = BOOTSTRAP, seed: int = 0, horizon: int | None = None,
             value: str = "return") -> dict:
    """The mean return of episodes actually run by the target (``ope_study.measure``), with its bootstrap CI."""
    ep = read_logs(folder, horizon=horizon, value=value)
    g = ep.returns
    rng = np.random.default_rng(seed)
    boots = [g[rng.integers(0, g.size, g.size)].mean() for _ in range(n_boot)]
    return {"value": round(float(g.mean()), 4), "ci95": [round(float(np.percentile(boots, 2.5)), 4),
                                                         round(float(np.percentile(boots, 97.5)), 4)],
            "episodes": int(g.size)}


def within(estimate: float, value: float, tolerance: float = 0.10) -> bool:
    """The estimate within ± ``tolerance`` (relative) of the measured value."""
    return abs(estimate - value) <= tolerance * abs(value)


__all__: Sequence[str] = ("read_logs", "kept_rewards", "estimates", "evaluate", "fit_q", "run", "measured", "TARGETS")
