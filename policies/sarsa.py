"""Linear SARSA planner of seed 004 for H&N IMRT (SPEC §4.2–§4.6; Stephens et al. 2024).

* Q̂(x, a) = θᵀ φ(x, a) with selector features φ(x, a) = vec(x ⊗ 1_a) (eq. 7–8), i.e.
  Q̂(x, a) = 1_aᵀ W x with W ∈ R^{|A|×14} (eq. 12). **No bias feature** (SPEC §4.4 [CONVENTION]).
* On-policy SARSA (eq. 9): W_a ← W_a + α_t (r + γ Q̂(x', a') − Q̂(x, a)) x̃, with a' the ε-greedy
  action actually taken next; δ = r − Q̂(x, a) at a terminal state (all goals met). A time-limit
  truncation (35 actions) is not a terminal: it bootstraps on the ε-greedy a' of the last state.
* Step size [SPEC §4.4 α_t NOT SPECIFIED; ours]: α_t = α / ‖x̃_t‖² (normalised LMS). A constant
  α = 0.03 diverged on the H&N environment (W ≈ 1e15 within 3 000 steps): the PTV D1% component
  reaches 80–150 Gy on the coarse grid, so ‖x̃‖² varies by ×5 and α‖x̃‖² left the stable range.
* ε-greedy (eq. 10) with ε_t = (ε_∞^{2t²/N²} + ε_∞) / (1 + ε_∞) (eq. 11), N = total training
  iterations (environment steps): ε_0 = 1, ε_N = ε_∞.
* Feature scaling [SPEC §4.4 NOT SPECIFIED; ours]: x̃ = x / SCALE with SCALE = 44 Gy (the Rx) for
  every dose component and 100 % for every V_obj, a fixed diagonal map. W is learned and stored in
  the scaled space; W_raw = W / SCALE (per column) acts on x in Gy / %. Every LP/RP dose column
  has the same scale, so the eq. 14 slope is identical in both spaces (``policies/sarsa_analysis.py``).
* Episodes: one plan per episode, reset to the static template (SPEC §4.6); one epoch = one pass
  over the training seeds in a shuffled order. Iterations: the committed runs are shorter than the
  paper's (> 10 000 / > 24 000, §4.6) because of the shared CPU (the records say how long; README
  of the weights: ``policies/weights/sarsa_model*.json``).
* Selection: the committed W is the one with the lowest validation cost (mean over the validation
  seeds of min_t L_t / L_0 of a greedy 35-action episode); the last W is stored too (W_final).

``train(Args) -> TrainRecord`` (a rich progress bar: episode return, validation score);
``SarsaPolicy`` (Policy protocol: greedy ``act``, ``rank`` with Q values); ``load(env, seed, model)``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rtautoplan.policies.env_hn_imrt import OARS, RX_GY, HNImrtEnv, n_actions

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DIM_X = 4 * len(OARS) + 2  # SPEC §4.2 [DERIVED]: 14
FEATURES = tuple(f"{o} {q}" for o in ("LP", "RP", "OC") for q in ("D50", "Dmean", "D_obj", "V_obj")) + (
    "PTV D95", "PTV D1")
# Feature scale (module docstring): Gy components / 44 Gy, V_obj / 100 %.
SCALE = np.array([RX_GY, RX_GY, RX_GY, 100.0] * len(OARS) + [RX_GY, RX_GY], np.float64)
TRAIN_SEEDS = tuple(range(0, 40))  # H&N phantom seeds (issue 7 split, docs/results.md)
VAL_SEEDS = tuple(range(40, 60))
TEST_SEEDS = tuple(range(1000, 1020))
TRAIN_GRID = (2, 2, 2)  # dose grid of the committed runs (Args.dose_grid_factor; docs/decisions.md)
# The engine options the committed weights learned on: objectives on the dose grid, the jaw-fit beam model
# (physics.photon.SIX_MV_JAW); ``pipeline``'s SARSA setup plans with them too.
SARSA_ENGINE = {"objective_points": "dose_grid", "model": "6MV-jaw"}


@dataclass
class Args:
    """Training arguments (CleanRL style; the paper's symbols where it has them)."""

    model: int = 2
    """1: D_obj moves only (6 actions); 2: D_obj and V_obj moves (12 actions) (SPEC §4.2)."""
    seed: int = 0
    """seeds the ε-greedy draws, the epoch order and the environment: same seed, same W."""
    total_steps: int = 24_000
    """N of eq. 11: training iterations (environment steps); paper: > 10 000 (model 1), > 24 000 (model 2)."""
    alpha: float = 0.1
    """α of the normalised step α_t = α / ‖x̃_t‖² (SPEC §4.4 NOT SPECIFIED; ours): each update moves
    Q̂(x_t, a_t) the fraction α of the way to its target, whatever the state's size."""
    gamma: float = 0.9
    """γ, discount (SPEC §4.4 NOT SPECIFIED; ours: horizon ≈ 10 actions of the 35)."""
    eps_inf: float = 0.05
    """ε_∞ of eq. 11 (SPEC §4.4 NOT SPECIFIED; ours)."""
    max_steps: int = 35
    """N_iterations: actions per training episode (SPEC §4.7's planning limit)."""
    mask_no_ops: bool = False
    """draw a_t (ε-greedy, and greedy in validation) only among the actions that change an objective
    position (``env.action_mask()``): a move clamped at its bound re-optimises the same plan, and the
    product's closed loop passes over it (docs/decisions.md, "Actions that change nothing")."""
    train_seeds: tuple[int, ...] = TRAIN_SEEDS
    val_seeds: tuple[int, ...] = VAL_SEEDS
    val_every: int = 2_000
    """validation (greedy, all val_seeds) every this many steps, and at the end."""
    n_beams: int = 7
    dose_grid_factor: tuple[int, int, int] = TRAIN_GRID
    """dose grid (k, j, i blocks of the CT grid) of the training TPS. (2, 4, 4) is too coarse: the
    parotid-sparing headroom vanishes and isolated hot voxels appear (docs/decisions.md)."""
    max_iter: int = 60
    """L-BFGS iterations per re-optimisation."""
    engine_threads: int = 1
    """$RTAUTOPLAN_THREADS of the TPS: its sparse sums depend on it (same value, same weights)."""
    population: str = "v2"
    """H&N phantom population of the seeds (issue 16; ``rtautoplan.phantom.make_case``): the committed
    weights were trained on "v1" (``--population v1 --goals paper`` reproduces them)."""
    goals: str = "template"
    """"paper" (the §4.3 goals for every case) or "template" (plan-specific goals bound to each case's
    template plan, §4.7 b: the oral cavity cannot get worse unseen; ``env_hn_imrt``)."""
    out: str | None = None
    """path stem of the weights to write (``…/sarsa_model2`` → .npz, .json, _validation.png); None: don't."""
    progress: bool = True


@dataclass
class TrainRecord:
    """What a training run did: enough to reproduce and judge it (written next to the weights)."""

    args: dict
    iterations: int = 0
    episodes: int = 0
    wall_s: float = 0.0
    s_per_step: float = 0.0
    train_balance: dict = field(default_factory=dict)
    episode_returns: list = field(default_factory=list)
    validation: list = field(default_factory=list)
    """[{step, epsilon, cost, parotid_dmean_gy, oc_dmean_gy}]: cost = mean over val cases of min_t L_t / L_0."""
    best_step: int = 0
    best_cost: float = float("inf")
    W: np.ndarray | None = None
    """W of the best validation cost (the committed one)."""
    W_final: np.ndarray | None = None
    W_history: list = field(default_factory=list)
    """W at each validation, for the §4.5 magnitudes-over-training plot."""
    population: str = "v1"
    """the H&N phantom population trained and validated on"""
    engine: dict = field(default_factory=dict)
    """the TPS it planned with (``engine_of``)"""


def engine_of(args: Args) -> dict:
    """The TPS a run of ``args`` plans with (``InHousePhoton`` options), for its record."""
    return {"adapter": "inhouse-photon", "n_beams": args.n_beams, "max_iter": args.max_iter,
            "objective_points": "dose_grid", "dose_grid_factor": list(args.dose_grid_factor)}


def features(x: np.ndarray) -> np.ndarray:
    """x̃ = x / SCALE: the scaled state (module docstring), float64."""
    return np.asarray(x, np.float64) / SCALE


def selector_features(x: np.ndarray, a: int, n_a: int) -> np.ndarray:
    """φ(x, a) = vec(x̃ ⊗ 1_a) (eq. 8), length n_a · 14, row-major so that θ = W.ravel()."""
    return np.kron(np.eye(n_a)[a], features(x))


def q_values(W: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Q̂(x, ·) = W x̃ (eq. 12), one value per action."""
    return W @ features(x)


def epsilon(t: int, N: int, eps_inf: float) -> float:
    """ε_t of eq. 11: 1 at t = 0, ε_∞ at t = N (held there beyond N)."""
    t = min(t, N)
    return float((eps_inf ** (2.0 * t * t / (N * N)) + eps_inf) / (1.0 + eps_inf))


def greedy(W: np.ndarray, x: np.ndarray, mask: np.ndarray | None = None) -> int:
    """argmax_a Q̂(x, a) over the actions of ``mask`` (None: all; first on ties)."""
    q = q_values(W, x)
    return int(np.argmax(q if mask is None else np.where(mask, q, -np.inf)))


def epsilon_greedy(W: np.ndarray, x: np.ndarray, eps: float, rng: np.random.Generator,
                   mask: np.ndarray | None = None) -> int:
    """π_t(x) of eq. 10: uniform action when p < ε, else argmax_a Q̂(x, a) (first on ties); both
    over the actions of ``mask`` when given (None: all)."""
    if rng.random() < eps:
        if mask is None:
            return int(rng.integers(W.shape[0]))
        return int(rng.choice(np.flatnonzero(mask)))
    return greedy(W, x, mask)


def sarsa_update(W: np.ndarray, x: np.ndarray, a: int, r: float, x_next: np.ndarray | None, a_next: int | None,
                 alpha: float, gamma: float) -> float:
    """Eq. 9 in matrix form, in place: W_a += α_t δ x̃ with δ = r + γ Q̂(x', a') − Q̂(x, a)
    (x_next None: terminal, no bootstrap) and the normalised step α_t = α / ‖x̃‖² (module
    docstring). Returns δ."""
    xs = features(x)
    bootstrap = 0.0 if x_next is None else gamma * float(W[a_next] @ features(x_next))
    delta = r + bootstrap - float(W[a] @ xs)
    W[a] += alpha / float(xs @ xs) * delta * xs
    return delta


def make_env(model: int, seeds: Sequence[int], n_beams: int = 7, dose_grid_factor=TRAIN_GRID, max_iter: int = 60,
             max_steps: int = 35, population: str = "v1", goals: str = "paper") -> HNImrtEnv:
    """The seed-004 environment over the in-house photon TPS (the training grid of ``Args``), template init,
    on H&N phantom ``population`` ("v1", "v2") with ``goals`` ("paper", "template": ``env_hn_imrt``)."""
    from rtautoplan.adapters.inhouse import InHousePhoton

    tps = InHousePhoton(n_beams=n_beams, dose_grid_factor=tuple(dose_grid_factor), max_iter=max_iter,
                        **SARSA_ENGINE)
    return HNImrtEnv(tps, model=model, case_seeds=tuple(seeds), max_steps=max_steps, init="template",
                     population=population, goals=goals)


def tumour_side(seed: int) -> str:
    """"left" or "right": the side of the phantom's primary tumour (the generator's second draw,
    ``rtautoplan.phantom.hn.anatomy``), read without building the case."""
    rng = np.random.default_rng(seed)
    rng.uniform(0.94, 1.06)
    return "left" if rng.choice([-1.0, 1.0]) > 0 else "right"


def balance(seeds: Sequence[int]) -> dict[str, int]:
    sides = [tumour_side(s) for s in seeds]
    return {"left": sides.count("left"), "right": sides.count("right")}


def greedy_episode(env: HNImrtEnv, W: np.ndarray, case_seed: int, max_steps: int, mask_no_ops: bool = False) -> dict:
    """One greedy episode from the template: min_t L_t / L_0 and the best plan's OAR mean doses (Gy)."""
    x, info = env.reset(seed=0, options={"case_seed": case_seed})
    L0 = best = float(info["score"])
    best_x = x
    for _ in range(max_steps):
        x, _, terminated, truncated, info = env.step(greedy(W, x, env.action_mask() if mask_no_ops else None))
        if float(info["score"]) < best:
            best, best_x = float(info["score"]), x
        if terminated or truncated:
            break
    return {"cost": best / L0 if L0 > 0 else 0.0, "parotid_dmean_gy": float((best_x[1] + best_x[5]) / 2),
            "oc_dmean_gy": float(best_x[9])}


def validate(env: HNImrtEnv, W: np.ndarray, seeds: Sequence[int], max_steps: int, mask_no_ops: bool = False) -> dict:
    """Mean of ``greedy_episode`` over ``seeds``."""
    rows = [greedy_episode(env, W, s, max_steps, mask_no_ops) for s in seeds]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def sarsa_episode(env, W: np.ndarray, t: int, args: Args, rng: np.random.Generator, options: dict | None = None,
                  on_step=None) -> tuple[int, float]:
    """One training episode of on-policy SARSA (eq. 9–11) on any gymnasium env with a Box state the
    size of W's rows, from global step ``t`` until the episode ends or t = args.total_steps;
    ``on_step(t, return so far)`` after each update. Returns (t, episode return)."""
    x, _ = env.reset(seed=int(rng.integers(2**31)), options=options)

    def mask() -> np.ndarray | None:
        return env.action_mask() if args.mask_no_ops else None

    a = epsilon_greedy(W, x, epsilon(t, args.total_steps, args.eps_inf), rng, mask())
    ret, done = 0.0, False
    while not done and t < args.total_steps:
        x_next, r, terminated, truncated, _ = env.step(a)
        t += 1
        ret += float(r)
        done = terminated or truncated
        a_next = None if terminated else epsilon_greedy(W, x_next, epsilon(t, args.total_steps, args.eps_inf), rng,
                                                        mask())
        sarsa_update(W, x, a, float(r), None if terminated else x_next, a_next, args.alpha, args.gamma)
        x, a = x_next, a_next
        if on_step is not None:
            on_step(t, ret)
    return t, ret


def train(args: Args) -> TrainRecord:
    """Train W by SARSA (module docstring); validation selects the committed W (lowest cost)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    os.environ["RTAUTOPLAN_THREADS"] = str(args.engine_threads)
    rng = np.random.default_rng(args.seed)
    n_a = n_actions(args.model)
    W = np.zeros((n_a, DIM_X))
    env, val_env = (make_env(args.model, seeds, args.n_beams, args.dose_grid_factor, args.max_iter, args.max_steps,
                             args.population, args.goals) for seeds in (args.train_seeds, args.val_seeds))
    record = TrainRecord(args=asdict(args), train_balance=balance(args.train_seeds), population=args.population,
                         engine=engine_of(args))
    start, t, order = time.perf_counter(), 0, []
    columns = (TextColumn("SARSA model {task.fields[model]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("ε {task.fields[eps]:.2f} return {task.fields[ret]:+.3f} val {task.fields[val]}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not args.progress, refresh_per_second=1) as bar:
        task = bar.add_task("train", total=args.total_steps, model=args.model, eps=1.0, ret=0.0, val="–")

        def on_step(t: int, ret: float) -> None:
            bar.update(task, completed=t, eps=epsilon(t, args.total_steps, args.eps_inf), ret=ret)
            if t % args.val_every == 0 or t == args.total_steps:
                _validation_point(record, val_env, W, t, args)
                bar.update(task, val=f"{record.validation[-1]['cost']:.3f}")
                if args.out:
                    _finish(record, W, t, start)
                    save(record, args.out)

        while t < args.total_steps:
            if not order:
                order = list(rng.permutation(args.train_seeds))
            case_seed = int(order.pop())
            t, ret = sarsa_episode(env, W, t, args, rng, {"case_seed": case_seed}, on_step)
            record.episodes += 1
            record.episode_returns.append(float(ret))
    _finish(record, W, t, start)
    if args.out:
        save(record, args.out)
    return record


def _validation_point(record: TrainRecord, env: HNImrtEnv, W: np.ndarray, t: int, args: Args) -> None:
    point = {"step": t, "epsilon": epsilon(t, args.total_steps, args.eps_inf),
             **validate(env, W, args.val_seeds, args.max_steps, args.mask_no_ops)}
    record.validation.append(point)
    record.W_history.append(W.copy())
    if point["cost"] < record.best_cost:
        record.best_cost, record.best_step, record.W = point["cost"], t, W.copy()


def _finish(record: TrainRecord, W: np.ndarray, t: int, start: float) -> None:
    record.iterations, record.W_final = t, W.copy()
    record.wall_s = time.perf_counter() - start
    record.s_per_step = record.wall_s / max(t, 1)
    if record.W is None:
        record.W = W.copy()


def save(record: TrainRecord, stem: str | Path) -> None:
    """``stem``.npz (W, W_final, W_history, SCALE, features), ``stem``.json (the record without the
    arrays) and ``stem``_validation.png (the validation curve)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez(stem.with_suffix(".npz"), W=record.W, W_final=record.W_final, W_history=np.asarray(record.W_history),
             history_steps=np.asarray([p["step"] for p in record.validation]), scale=SCALE,
             features=np.asarray(FEATURES), model=record.args["model"])
    meta = {k: v for k, v in asdict(record).items() if k not in ("W", "W_final", "W_history")}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=_jsonable) + "\n")
    plot_validation(record, stem.parent / f"{stem.name}_validation.png")


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plot_validation(record: TrainRecord, path: Path) -> None:
    """Validation cost (mean min_t L_t/L_0) and mean parotid Dmean (Gy) against training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in record.validation]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax1.plot(steps, [p["cost"] for p in record.validation], "o-")
    ax1.set(xlabel="training step", ylabel="relative cost min L_t / L_0", title=f"model {record.args['model']}")
    ax2.plot(steps, [p["parotid_dmean_gy"] for p in record.validation], "o-", label="parotids")
    ax2.plot(steps, [p["oc_dmean_gy"] for p in record.validation], "s-", label="oral cavity")
    ax2.set(xlabel="training step", ylabel="mean dose of best plan (Gy)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.axvline(record.best_step, color="grey", ls=":")
    fig.savefig(path, dpi=120)
    plt.close(fig)


class SarsaPolicy:
    """The greedy policy of a trained W (Policy protocol, ``policies/base.py``)."""

    value_kind = "q"

    def __init__(self, W: np.ndarray, model: int):
        if W.shape != (n_actions(model), DIM_X):
            raise ValueError(f"model {model} needs W of shape {(n_actions(model), DIM_X)}, got {W.shape}")
        self.W, self.model = np.asarray(W, np.float64), model
        self.name = f"sarsa-model{model}"

    def rank(self, observation: np.ndarray) -> list[tuple[int, float]]:
        """Every action with its Q̂(x, a), best first."""
        q = q_values(self.W, observation)
        return [(int(a), float(q[a])) for a in np.argsort(-q, kind="stable")]

    def act(self, observation: np.ndarray) -> int:
        return greedy(self.W, observation)


def weights_path(model: int) -> Path:
    return WEIGHTS_DIR / f"sarsa_model{model}.npz"


def load(env=None, seed: int = 0, model: int | None = None) -> SarsaPolicy:
    """The committed policy of ``model`` (default: the env's model, else 2). ``seed`` is accepted for
    the POLICIES factory signature; the greedy policy uses no randomness."""
    model = model if model is not None else getattr(getattr(env, "unwrapped", env), "model", 2)
    path = weights_path(model)
    if not path.exists():
        raise FileNotFoundError(f"no committed SARSA weights at {path}: train them with "
                                f"policies.sarsa.train(Args(model={model}, out='{path.with_suffix('')}'))")
    with np.load(path) as data:
        policy = SarsaPolicy(data["W"], model)
    policy.weights_path = path
    return policy
