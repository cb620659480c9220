"""Held-out evaluation of the ACER planner against the rule-based and random policies (issue 7
item 4; seed 000 Figs. 4–5, SPEC §1.14).

Case split: training prostate phantom seed 0 only; validation seeds 1 and 2 (checkpoint selection);
held-out test seeds 1000–1099, never used in training or model selection. Every policy plans
every test case twice, from the trivial TPPs and from random TPPs (the random draw is the reset
seed = the case seed, so all policies start from the same plan), in the closed loop
(``rtautoplan.loop.run_loop``: at most 20 steps, the best plan kept, the safety filter on).
"Before" is the initial plan's ψ, "after" the kept plan's ψ (binary proknow9, the reference).

``evaluate_acer`` plans and writes the rows to a CSV (one row per case × init × policy; rows of
the policies it ran replace earlier ones); ``write_results`` turns the CSV into the seed-style
table and histogram in ``docs/results.md``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "docs" / "results" / "acer_prostate.csv"
RESULTS = ROOT / "docs" / "results.md"
SECTION = "## ACER, prostate (seed 000)"
TEST_SEEDS = tuple(range(1000, 1100))
FIELDS = ("policy", "init", "case_seed", "before", "after", "steps", "grid")
# Table rows: the committed ACER, its first stage (seed 0 only, the paper's set-up), the baselines.
POLICY_ROWS = ("acer", "acer-seed0", "rule-based", "random")
# Issue 16: the calibrated population v2, both ACER weights against the baselines and the start plan.
CSV_V2 = ROOT / "docs" / "results" / "acer_prostate_v2.csv"
V2_ROWS = ("acer-v2", "acer-v1", "rule-based", "random", "do-nothing")
# Issue 16, s4: the v2 planner fine-tuned on four high-overlap variants, against v2 and the baselines.
V3_ROWS = ("acer-v3", "acer-v2", "rule-based", "random", "do-nothing")
WEIGHT_FILES = {"acer-v1": "acer_prostate.pt", "acer-v2": "acer_prostate_v2.pt", "acer-v3": "acer_prostate_v3.pt",
                "acer-seed0": "acer_prostate_seed0.pt"}


def _policy(name: str, env, seed: int):
    """ACER from its default weights (``acer``) or named ones (``WEIGHT_FILES``); the others from the
    ``POLICIES`` registry."""
    from rtautoplan.policies import POLICIES, acer

    if name in WEIGHT_FILES:
        return acer.load(env, seed, path=acer.WEIGHTS.parent / WEIGHT_FILES[name])
    return acer.load(env, seed) if name == "acer" else POLICIES[name](env, seed)


def plan_cases(policy_name: str, seeds, inits=("trivial", "random"), dose_grid_factor=(1, 2, 2),
               max_steps: int = 20, cold_start: bool = True, draws: int = 1, population: str = "v1",
               env=None) -> list[dict]:
    """One row per (init, case seed, draw): ψ before and after the closed loop of ``policy_name`` on
    prostate phantom ``population``; draw k > 0 of random TPPs resets with seed 1000·s + k (draw 0:
    the case seed s). ``env``: an environment of these seeds to reuse (its cases and dose influence
    matrices stay in memory across planners)."""
    from rtautoplan.policies.acer import make_env

    from rtautoplan.loop import run_loop

    env = env or make_env(seeds, dose_grid_factor, cold_start=cold_start, population=population)
    policy = _policy(policy_name, env, 0)
    rows = []
    for init in inits:
        for s, k in [(s, k) for s in seeds for k in range(draws if init == "random" else 1)]:
            loop = run_loop(env, policy, max_steps, seed=int(s) if k == 0 else 1000 * int(s) + k,
                            options={"case_seed": int(s), "init": init})
            rows.append({"policy": policy_name, "init": init, "case_seed": int(s),
                         "before": float(loop.initial_score.total), "after": float(loop.best_score.total),
                         "steps": len(loop.steps), "grid": "x".join(map(str, dose_grid_factor))})
    return rows


def evaluate_acer(policies=("acer", "rule-based", "random"), seeds=TEST_SEEDS, inits=("trivial", "random"),
                  dose_grid_factor=(1, 2, 2), max_steps: int = 20, cold_start: bool = True,
                  csv_path: Path = CSV, write: bool = True, draws: int = 1, population: str = "v1") -> list[dict]:
    """Plan ``seeds`` with each of ``policies`` (module docstring); rows into ``csv_path`` (rows of
    other policies or grids are kept); with ``write``, refresh ``docs/results.md``. ``population``: the
    prostate phantom population of ``seeds`` (the committed table: "v1")."""
    grid, rows = "x".join(map(str, dose_grid_factor)), []
    for name in policies:
        rows += plan_cases(name, seeds, inits, dose_grid_factor, max_steps, cold_start, draws, population)
        kept = [r for r in read_rows(csv_path) if not (r["policy"] == name and r["grid"] == grid)]
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            writer.writeheader()
            writer.writerows(kept + [r for r in rows if r["policy"] == name])
    if write:
        write_results(csv_path)
    return rows


def evaluate_population(policies=V2_ROWS, seeds=TEST_SEEDS, inits=("trivial", "random"), population: str = "v2",
                        csv_path: Path = CSV_V2, chunk: int = 10, progress: bool = True,
                        dose_grid_factor=(1, 2, 2)) -> list[dict]:
    """Plan ``seeds`` of ``population`` with every one of ``policies``, ``chunk`` cases at a time for all
    of them (a run stopped early leaves every planner the same first cases); each chunk's rows are
    appended to ``csv_path`` at once, and rows already there (policy, init, seed) are not re-planned."""
    from rtautoplan.policies.acer import make_env

    done = {(r["policy"], r["init"], r["case_seed"]) for r in read_rows(csv_path)}
    new = []
    for start in range(0, len(seeds), chunk):
        part = list(seeds[start:start + chunk])
        env = make_env(part, dose_grid_factor, population=population)
        for name in policies:
            for init in inits:
                todo = [s for s in part if (name, init, int(s)) not in done]
                if not todo:
                    continue
                rows = plan_cases(name, todo, (init,), dose_grid_factor, population=population, env=env)
                _append(csv_path, rows)
                new += rows
                if progress:
                    s = summarise(rows)
                    print(f"{name} {init} seeds {todo[0]}–{todo[-1]}: ψ {s['before'][0]:.2f} → {s['after'][0]:.2f}, "
                          f"{s['at9']:.0f} % at 9", flush=True)
    return new


def _append(csv_path: Path, rows: list[dict]) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if fresh:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(csv_path: Path = CSV) -> list[dict]:
    if not Path(csv_path).exists():
        return []
    with open(csv_path, newline="") as f:
        return [{**r, "case_seed": int(r["case_seed"]), "before": float(r["before"]), "after": float(r["after"]),
                 "steps": int(r["steps"])} for r in csv.DictReader(f)]


def summarise(rows: list[dict]) -> dict:
    """n, before/after mean ± sd, % at 9, counts in [8, 9) and < 8, min after, mean steps."""
    before = np.array([r["before"] for r in rows])
    after = np.array([r["after"] for r in rows])
    return {"n": len(rows), "before": (before.mean(), before.std()), "after": (after.mean(), after.std()),
            "at9": 100.0 * np.mean(after >= 9.0 - 1e-9), "in8_9": int(np.sum((after >= 8.0) & (after < 9.0 - 1e-9))),
            "below8": int(np.sum(after < 8.0)), "min": float(after.min()),
            "steps": float(np.mean([r["steps"] for r in rows]))}


def table(rows: list[dict], grid: str = "1x2x2", policies=POLICY_ROWS) -> str:
    """The seed-style table (SPEC §1.14) of one dose grid, one line per init × policy."""
    header = ("| init | policy | n | ψ before (mean ± sd) | ψ after (mean ± sd) | % at 9 | n in [8, 9) | n < 8 | min ψ | "
              "mean steps |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for init in ("trivial", "random"):
        for policy in policies:
            sel = [r for r in rows if r["init"] == init and r["policy"] == policy and r["grid"] == grid]
            if sel:
                s = summarise(sel)
                lines.append(f"| {init} | {policy} | {s['n']} | {s['before'][0]:.2f} ± {s['before'][1]:.2f} | "
                             f"{s['after'][0]:.2f} ± {s['after'][1]:.2f} | {s['at9']:.1f} % | {s['in8_9']} | "
                             f"{s['below8']} | {s['min']:.0f} | {s['steps']:.1f} |")
    return "\n".join(lines)


def histogram(rows: list[dict], png: Path, grid: str = "1x2x2", policies=POLICY_ROWS) -> None:
    """ψ after planning, per policy, one panel per init (seed Figs. 4–5)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    bins = np.arange(0, 9.51, 0.5)
    for ax, init in zip(axes, ("trivial", "random")):
        for policy in policies:
            after = [r["after"] for r in rows if r["init"] == init and r["policy"] == policy and r["grid"] == grid]
            if after:
                ax.hist(after, bins=bins, alpha=0.5, label=policy)
        before = [r["before"] for r in rows if r["init"] == init and r["policy"] == policies[0] and r["grid"] == grid]
        if before:
            ax.hist(before, bins=bins, histtype="step", color="k", label="before")
        seeds = sorted({r["case_seed"] for r in rows})
        ax.set_title(f"{init} TPPs, held-out seeds {seeds[0]}–{seeds[-1]}" if seeds else init)
        ax.set_xlabel("ψ (proknow9, max 9)")
    axes[0].set_ylabel("plans")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_results(csv_path: Path = CSV, results: Path = RESULTS, notes: str | None = None, marker: str = "acer-table",
                  section: str = SECTION, policies=POLICY_ROWS) -> str:
    """Replace the generated block between the ``<!-- {marker} -->`` markers of ``section`` in
    ``results`` by the tables and histogram of ``csv_path`` (the text around them is kept)."""
    rows = read_rows(csv_path)
    png = csv_path.with_name(csv_path.stem + "_hist.png")
    histogram(rows, png, policies=policies)
    grids = sorted({r["grid"] for r in rows})
    block = "\n\n".join(f"Dose grid {g}:\n\n{table(rows, g, policies)}" for g in grids)
    block += f"\n\n![ψ after planning](results/{png.name})\n\nRows: `docs/results/{csv_path.name}`."
    text = results.read_text() if results.exists() else "# Results\n"
    if section not in text:
        text = text.rstrip() + f"\n\n{section}\n\n{notes or ''}\n\n<!-- {marker} -->\n<!-- /{marker} -->\n"
    generated = f"<!-- {marker} -->\n{block}\n<!-- /{marker} -->"
    text = re.sub(rf"<!-- {marker} -->.*?<!-- /{marker} -->", lambda _: generated, text, flags=re.DOTALL)
    results.write_text(text)
    return block


def fgsm_loss(p):
    """Eq. 10: J = −(1/A)(log p_j + Σ_{i≠j} log(1 − p_i)), j = argmax p (binary cross-entropy with
    the one-hot of the top action)."""
    import torch

    j = int(p.argmax())
    onehot = torch.nn.functional.one_hot(torch.tensor(j), p.numel()).to(p.dtype)
    return torch.nn.functional.binary_cross_entropy(p.clamp(1e-12, 1 - 1e-12), onehot), j


def fgsm(output, s, eps: float, mask=None):
    """One FGSM attack (eq. 9) on observation ``s`` (numpy): ``output(s_tensor) -> (p, value)`` with
    p the attacked distribution (π for ACER, softmax Q for DQN) and value the per-action number
    whose top entry ΔP1 reads (π, or Q). ``mask``: the actions that move in that state (the loop's
    choices, ``env.action_mask``; None: all). Returns (success, ΔP1 %, top-two gap %)."""
    import torch

    def among_moving(p, value):
        if mask is None:
            return p, value
        allowed = torch.as_tensor(np.asarray(mask, bool))
        p = torch.where(allowed, p, torch.zeros_like(p))
        return p / p.sum(), torch.where(allowed, value, torch.full_like(value, -torch.inf))

    s0 = torch.as_tensor(np.asarray(s, np.float32).ravel()).requires_grad_(True)
    p, value = among_moving(*output(s0))
    J, j = fgsm_loss(p)
    J.backward()
    with torch.no_grad():
        p_adv, value_adv = among_moving(*output(s0 + eps * s0.grad.sign()))
        top2 = torch.topk(value, 2).values
        gap = float((top2[0] - top2[1]) / top2[0].abs()) * 100.0
        return int(p_adv.argmax()) != j, float((value_adv[j] - value[j]) / value[j].abs()) * 100.0, gap


def fgsm_outputs(acer_net, dqn_net) -> dict:
    """The attacked outputs of each network, first step of an episode (LSTM state 0) for ACER."""
    import torch

    def acer_out(s):
        p = torch.softmax(acer_net(s[None, None])[0][0, 0], -1)
        return p, p

    def dqn_out(s):
        q = dqn_net(s[None])[0]
        return torch.softmax(q, -1), q

    return {"ACER": acer_out, "DQN": dqn_out}


def fgsm_table(observations, outputs: dict, epsilons=(0.001, 0.01, 0.1), masks=None) -> str:
    """Seed Table 4 (SPEC §1.16): success rate (top action changes) and ΔP1 (relative change of the
    top action's probability, ACER, or Q value, DQN) per ε, and the unattacked top-two gap ΔP12;
    ``masks`` (one per observation): the attacked choice is among the actions that move."""
    lines = ["| ε | metric | " + " | ".join(outputs) + " |", "|---|---|" + "---|" * len(outputs)]
    masks = masks if masks is not None else [None] * len(observations)
    results = {name: {eps: [fgsm(fn, s, eps, m) for s, m in zip(observations, masks)] for eps in epsilons}
               for name, fn in outputs.items()}
    for eps in epsilons:
        rate = [f"{100 * np.mean([r[0] for r in results[n][eps]]):.1f} %" for n in outputs]
        dp1 = [f"{np.mean([r[1] for r in results[n][eps]]):+.2f} % ± {np.std([r[1] for r in results[n][eps]]):.2f} %"
               for n in outputs]
        lines += [f"| {eps} | success rate | " + " | ".join(rate) + " |", f"| {eps} | ΔP1 | " + " | ".join(dp1) + " |"]
    gaps = [results[n][epsilons[0]] for n in outputs]
    lines.append("| — | ΔP12 (top-1 − top-2, relative) | " +
                 " | ".join(f"{np.mean([r[2] for r in g]):.2f} % ± {np.std([r[2] for r in g]):.2f} %" for g in gaps) + " |")
    return "\n".join(lines)


def fgsm_observations(seeds=TEST_SEEDS[:30], dose_grid_factor=(1, 2, 2)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The initial DVH states of 30 held-out random-TPP plans (the attacked plans) and their action masks."""
    from rtautoplan.policies.acer import make_env

    env, observations, masks = make_env(seeds, dose_grid_factor), [], []
    for s in seeds:
        observations.append(env.reset(seed=int(s), options={"case_seed": int(s), "init": "random"})[0])
        masks.append(env.action_mask())
    return observations, masks


def plot_validation(record, png: Path) -> None:
    """The training record's validation curve (seed Fig. 3) with the selected checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    step, score, ret = zip(*record.validation)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    args = record.args if isinstance(record.args, dict) else {}
    val = ", ".join(str(v) for v in args.get("val_seeds", ()))
    ax.plot(step, score, "o-", label=f"validation ψ (seeds {val}; best of loop)")
    ax.plot(step, ret, label="training return (last 20 episodes)")
    ax.axvline(record.best_step, ls="--", c="grey", label=f"selected: step {record.best_step}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("ψ / return")
    start = " from " + Path(args["init_from"]).name if args.get("init_from") else ""
    ax.set_title(f"ACER, prostate phantom seed {', '.join(str(t) for t in args.get('train_seeds', ()))}{start}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
