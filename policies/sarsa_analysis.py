"""Action-hyperplane analysis of the committed SARSA weights (SPEC §4.5, eq. 12–14).

The greedy agent takes argmax_a 1_aᵀ W x̃; the boundary between actions i and j is
Σ_k (W_ik − W_jk) x̃_k = 0 (eq. 13). Projected on the LP-mean (k1) and RP-mean (k2) components
(eq. 14) it is Δ1 x_LP + Δ2 x_RP = 0 with Δ_k = W_ik − W_jk, i = "lower LP" (D_obj −2 Gy), j = "lower
RP": the line x_RP = s · x_LP with **s = −Δ1 / Δ2** (eq. 14 moves one term across, so its two sides
carry opposite signs). s = 1 is unbiased. With Δ1 > 0 > Δ2, "lower LP" wins below the line (RP mean
< s · LP mean): s > 1 favours sparing the left parotid, s < 1 the right.

W is stored for the scaled state x̃ = x / SCALE (``sarsa.SCALE``: 44 Gy for every dose column).
LP and RP mean share one scale, so s is the same in Gy; the heat map shows the scaled W (per 44 Gy,
per 100 %); W_raw = W / SCALE.

``write_analysis()`` writes ``docs/results/sarsa_W_model{1,2}.png`` (heat map and boundary),
``docs/results/sarsa_W_history.png`` (the §4.5 "lower organ / that organ's dose" entries over
training) and ``docs/results/sarsa_analysis.md``, and returns the markdown lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtautoplan.policies.env_hn_imrt import MOVES, OARS, action_name
from rtautoplan.policies.sarsa import FEATURES, weights_path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"
MEAN_COLUMN = {organ: 4 * i + 1 for i, organ in enumerate(OARS)}  # Dmean of LP, RP, OC in x (SPEC §4.2)
MOVE_INDEX = {"D+": 0, "D-": 1, "V+": 2, "V-": 3}  # position in MOVES[model] (env_hn_imrt)


def action(organ: str, move: str, model: int) -> int:
    """Index of ``move`` ("D-", "V-", …) on ``organ`` in ``model``'s action space."""
    return OARS.index(organ) * len(MOVES[model]) + MOVE_INDEX[move]


def boundary_slope(W: np.ndarray, model: int, move: str = "D-") -> dict[str, float]:
    """Eq. 14 between "lower LP" and "lower RP" (``move`` on each): Δ1, Δ2 and s = −Δ1/Δ2."""
    i, j = action("Parotid_L", move, model), action("Parotid_R", move, model)
    k1, k2 = MEAN_COLUMN["Parotid_L"], MEAN_COLUMN["Parotid_R"]
    d1, d2 = float(W[i, k1] - W[j, k1]), float(W[i, k2] - W[j, k2])
    return {"delta_1": d1, "delta_2": d2, "slope": -d1 / d2 if d2 != 0 else float("inf")}


def self_entries(W: np.ndarray, model: int) -> dict[str, float]:
    """W[lower organ's dose objective, that organ's Dmean] for LP, RP, OC (SPEC §4.5)."""
    return {organ: float(W[action(organ, "D-", model), MEAN_COLUMN[organ]]) for organ in OARS}


def load_weights(model: int) -> dict[str, np.ndarray]:
    with np.load(weights_path(model)) as data:
        return {k: data[k] for k in data.files}


def plot_W(W: np.ndarray, model: int, path: Path) -> None:
    """Heat map of W (actions × state features) and the eq. 14 boundary in the LP/RP-mean plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 0.45 * W.shape[0] + 3), width_ratios=(2.4, 1),
                                 constrained_layout=True)
    vmax = float(np.abs(W).max()) or 1.0
    im = ax.imshow(W, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(FEATURES)), FEATURES, rotation=60, ha="right")
    ax.set_yticks(range(W.shape[0]), [action_name(a, model) for a in range(W.shape[0])])
    for (a, k), w in np.ndenumerate(W):
        ax.text(k, a, f"{1000 * w:.0f}", ha="center", va="center", fontsize=6)
    ax.set_title(f"SARSA model {model}: W × 1000 (state scaled: dose / 44 Gy, V_obj / 100 %)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    s = boundary_slope(W, model)["slope"]
    grid = np.linspace(0, 50, 2)
    bx.plot(grid, grid, "k:", label="slope 1 (unbiased)")
    if np.isfinite(s):
        bx.plot(grid, s * grid, "r-", label=f"lower LP | lower RP, s = {s:.2f}")
    bx.set(xlim=(0, 50), ylim=(0, 50), xlabel="LP mean dose (Gy)", ylabel="RP mean dose (Gy)",
           title="eq. 14 decision boundary", aspect="equal")
    bx.legend(fontsize=8, loc="upper left")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(path: Path) -> None:
    """The self entries and the slope s at every validation point, both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
    for model, style in ((1, "--"), (2, "-")):
        if not weights_path(model).exists():
            continue
        data = load_weights(model)
        steps, history = data["history_steps"], data["W_history"]
        for organ in OARS:
            axes[0].plot(steps, [self_entries(W, model)[organ] for W in history], style, marker="o",
                         label=f"model {model} {organ}")
        axes[1].plot(steps, [boundary_slope(W, model)["slope"] for W in history], style, marker="o",
                     label=f"model {model}")
    axes[0].set(xlabel="training step", ylabel="W[lower organ D_obj, organ Dmean]")
    axes[1].axhline(1.0, color="k", ls=":")
    axes[1].set(xlabel="training step", ylabel="slope s (eq. 14)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_analysis(results_dir: Path = RESULTS_DIR) -> list[str]:
    """All figures and ``sarsa_analysis.md`` (module docstring); returns its markdown lines."""
    results_dir.mkdir(parents=True, exist_ok=True)
    lines = ["### Action hyperplanes (SPEC §4.5)", "",
             "s = −Δ1/Δ2 of eq. 14 between \"lower LP\" and \"lower RP\" (D_obj −2 Gy) on the LP/RP mean-dose "
             "components; 1 = unbiased, > 1 favours sparing the left parotid. Self entries: W[lower organ's "
             "D_obj, that organ's Dmean] (scaled space, per 44 Gy). `policies/sarsa_analysis.py`.", "",
             "| Model | Δ1 | Δ2 | slope s | s (V_obj −5 % pair) | W LP | W RP | W OC | heat map |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in (1, 2):
        if not weights_path(model).exists():
            continue
        W = load_weights(model)["W"]
        plot_W(W, model, results_dir / f"sarsa_W_model{model}.png")
        b, e = boundary_slope(W, model), self_entries(W, model)
        v = f"{boundary_slope(W, model, 'V-')['slope']:.2f}" if model == 2 else "–"
        lines.append(f"| {model} | {b['delta_1']:+.3f} | {b['delta_2']:+.3f} | {b['slope']:.2f} | {v} | "
                     f"{e['Parotid_L']:+.3f} | {e['Parotid_R']:+.3f} | {e['Cavity_Oral']:+.3f} | "
                     f"[png](results/sarsa_W_model{model}.png) |")
    plot_history(results_dir / "sarsa_W_history.png")
    lines += ["", "Entries and slope over training: [sarsa_W_history.png](results/sarsa_W_history.png)."]
    (results_dir / "sarsa_analysis.md").write_text("\n".join(lines).replace("(results/", "(") + "\n")
    return lines
