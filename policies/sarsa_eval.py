"""Seed 004's validation against the template plan (SPEC §4.7–§4.8, Table 1 format).

Every held-out H&N phantom (``sarsa.TEST_SEEDS``, never used in training or selection) is planned
through the closed loop (``rtautoplan.loop.run_loop``: safety filter, best plan kept, ≤ 35 actions,
SPEC §4.7 step 1) from the static template (init="template", SPEC §4.6) by SARSA model 1, model 2,
the rule-based baseline (model-2 actions) and a uniformly random policy (model-2 actions).

* The template plan is the environment's initial plan; each planner's plan is the loop's best plan.
* Reference row "parotid-limit": one plan with both parotid objectives at the far end of the action
  space (0 Gy, 100 %; ``env_hn_imrt.parotid_limit_positions``): about the most parotid sparing the
  objective positions can buy on this engine, so the planners' Δ can be read against it; "oar-limit":
  the oral cavity's objective there too (what is left when the oral cavity must not pay).
* For the comparison both are **normalised to PTV D95% = 44 Gy** (SPEC §4.7 step 3): dose is linear
  in the fluence, so every mean dose is scaled by 44 Gy / D95%. Unnormalised values go to the CSV too.
* Δμ = mean over cases of (planner − template) mean dose (Gy) of LP, RP, OC; p from the
  **Wilcoxon signed-rank test** (two-sided, paired by case; SPEC §4.8 [NOT SPECIFIED]: ours).
  "Total plan" p: the same test on the per-case sum of the three organs' differences (ours).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rtautoplan import dvh
from rtautoplan.policies.env_hn_imrt import OARS, RX_GY
from rtautoplan.policies.sarsa import TEST_SEEDS, TRAIN_GRID, TRAIN_SEEDS as TRAIN_SPLIT, load, make_env

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "results.md"
CSV_PATH = ROOT / "docs" / "results" / "sarsa_hn_test.csv"
SECTION = "## SARSA, H&N IMRT (seed 004)"
SHORT = {"Parotid_L": "LP", "Parotid_R": "RP", "Cavity_Oral": "OC"}


def _planners() -> dict[str, tuple[int, Callable | str]]:
    """name → (model of the environment, factory(env, case seed) -> Policy, or the name of the
    initial positions whose plan is the row: no loop); random draws per case."""
    from rtautoplan.policies.base import RandomPolicy
    from rtautoplan.policies.rule_based import RuleBased

    return {"template": (2, "template"), "parotid-limit": (2, "parotid-limit"), "oar-limit": (2, "oar-limit"),
            "sarsa-model1": (1, lambda env, seed: load(env, model=1)),
            "sarsa-model2": (2, lambda env, seed: load(env, model=2)), "rule-based": (2, RuleBased),
            "random": (2, RandomPolicy)}


def plan_metrics(env, gy: np.ndarray) -> dict[str, float]:
    """Mean doses (Gy) of LP, RP, OC raw and normalised to PTV D95% = 44 Gy, PTV D95/D1, the loss."""
    vox = env._planner.voxels
    d95 = dvh.d_percent(gy, vox[env._ptv()], 95.0)
    k = RX_GY / d95
    row = {"ptv_d95_gy": d95, "ptv_d1_norm_gy": k * dvh.d_percent(gy, vox[env._ptv()], 1.0),
           "loss": float(env.score(gy).total)}
    for organ in OARS:
        mean = dvh.dmean(gy, vox[organ])
        row[f"{SHORT[organ]}_mean_gy"], row[f"{SHORT[organ]}_mean_norm_gy"] = mean, k * mean
    return row


def evaluate_sarsa(seeds: Sequence[int] = TEST_SEEDS, planners: Sequence[str] | None = None, max_steps: int = 35,
                   csv_path: Path | None = CSV_PATH, results_md: Path | None = RESULTS_MD,
                   progress: bool = True, previous: Sequence[dict] = (),
                   dose_grid_factor: tuple[int, int, int] = TRAIN_GRID, records: bool = True,
                   population: str = "v1", goals: str = "paper") -> list[dict]:
    """Plan ``seeds`` with every planner (default: template, both SARSA models, rule-based,
    random; module docstring); write the per-case CSV and the Table-1 section of ``results_md``.
    ``previous``: rows of an earlier run (``read_csv``) of other planners, merged in.
    dose_grid_factor: the TPS dose grid (the training grid by default). records: append the training
    records and the §4.5 analysis (whose figures go to docs/results) to the section. population, goals:
    the H&N phantom population and the goal mode of the environments (``sarsa.make_env``). Returns the rows."""
    from rich.progress import Progress

    from rtautoplan.loop import run_loop

    table = _planners()
    names = list(planners or table)
    rows: list[dict] = [r for r in previous if r["planner"] not in names]
    envs = {m: make_env(m, seeds, dose_grid_factor=dose_grid_factor, max_steps=max_steps, population=population,
                        goals=goals) for m in (1, 2)}
    with Progress(disable=not progress) as bar:
        task = bar.add_task("SARSA evaluation", total=len(names) * len(seeds))
        for name in names:
            model, factory = table[name]
            env = envs[model]
            for seed in seeds:
                if isinstance(factory, str):
                    env.reset(seed=0, options={"case_seed": seed, "init": factory})
                    rows.append({"planner": name, "case_seed": seed, "steps": 0, **plan_metrics(env, env.last_dose.gy)})
                else:
                    policy = factory(env, seed)
                    loop = run_loop(env, policy, max_steps, seed=0, options={"case_seed": seed})
                    rows.append({"planner": name, "case_seed": seed, "steps": len(loop.steps),
                                 "best_step": loop.best_step, **plan_metrics(env, loop.best_dose.gy)})
                bar.advance(task)
    if csv_path is not None:
        write_csv(rows, csv_path)
    if results_md is not None:
        from rtautoplan.policies.sarsa_analysis import write_analysis

        extra = [*training_lines(), "", *write_analysis()] if records else []
        write_section(rows, results_md, extra, dose_grid_factor)
    return rows


def training_lines() -> list[str]:
    """Markdown summary of the committed training records (``policies/weights/sarsa_model*.json``)."""
    import json

    from rtautoplan.policies.sarsa import balance, weights_path

    lines = ["### Training records", "", "| Model | iterations | episodes | wall (min) | s/step | α | γ | ε_∞ | dose grid | "
             "clamped moves masked | selected at step | val cost (selected) | val cost (final) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in (1, 2):
        path = weights_path(model).with_suffix(".json")
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        a = r["args"]
        lines.append(f"| {model} | {r['iterations']} | {r['episodes']} | {r['wall_s'] / 60:.1f} | {r['s_per_step']:.3f} | "
                     f"{a['alpha']} | {a['gamma']} | {a['eps_inf']} | {tuple(a['dose_grid_factor'])} | "
                     f"{'yes' if a.get('mask_no_ops') else 'no'} | {r['best_step']} | {r['best_cost']:.3f} | "
                     f"{r['validation'][-1]['cost']:.3f} |")
    b = balance(TRAIN_SPLIT)
    lines += ["", f"Split: training seeds 0–39 (tumour left {b['left']}, right {b['right']}: the generator draws "
              "the side at random, so 40 seeds cannot be exactly even), validation 40–59 (selection of the "
              "committed W by the validation cost mean min_t L_t / L_0), test 1000–1019 (this table only)."]
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("planner", "case_seed"), k))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Rows written by ``write_csv``, numbers parsed."""
    with Path(path).open() as fh:
        return [{k: v if k == "planner" else int(v) if k in INTEGER else float(v) for k, v in r.items() if v != ""}
                for r in csv.DictReader(fh)]


INTEGER = ("case_seed", "steps", "best_step")


def paired(rows: list[dict], first: str, second: str, key: str) -> tuple[np.ndarray, float]:
    """Per-case differences first − second of ``key`` (paired by case seed) and the Wilcoxon p."""
    from scipy.stats import wilcoxon

    by = {(r["planner"], r["case_seed"]): r for r in rows}
    seeds = sorted({s for p, s in by if p == first} & {s for p, s in by if p == second})
    diff = np.array([by[first, s][key] - by[second, s][key] for s in seeds])
    p = float(wilcoxon(diff).pvalue) if np.any(np.abs(diff) > 1e-9) else 1.0
    return diff, p


COMPARISONS = (("sarsa-model1", "template"), ("sarsa-model2", "template"), ("sarsa-model2", "sarsa-model1"),
               ("rule-based", "template"), ("random", "template"), ("sarsa-model2", "rule-based"),
               ("sarsa-model2-unmasked", "template"), ("parotid-limit", "template"), ("oar-limit", "template"))


def table1(rows: list[dict], normalised: bool = True) -> list[str]:
    """Markdown lines of Table 1 (SPEC §4.8): Δμ ± SD (p) for LP, RP, OC mean dose, total-plan p."""
    present = {r["planner"] for r in rows}
    suffix = "_mean_norm_gy" if normalised else "_mean_gy"
    lines = ["| Comparison | Left parotid | Right parotid | Oral cavity | Total plan |", "|---|---|---|---|---|"]
    for first, second in COMPARISONS:
        if not {first, second} <= present:
            continue
        cells, total = [], 0.0
        for organ in ("LP", "RP", "OC"):
            diff, p = paired(rows, first, second, organ + suffix)
            total = total + diff
            cells.append(f"{diff.mean():+.2f} ± {diff.std(ddof=1):.2f} Gy ({_p(p)})")
        _, p_total = _total_p(total)
        lines.append(f"| {first} vs {second} | " + " | ".join(cells) + f" | ({_p(p_total)}) |")
    return lines


def _total_p(total: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.stats import wilcoxon

    return total, float(wilcoxon(total).pvalue) if np.any(np.abs(total) > 1e-9) else 1.0


def _p(p: float) -> str:
    return "<0.01" if p < 0.01 else f"{p:.2f}"


def summary(rows: list[dict]) -> list[str]:
    """Per planner: mean normalised LP/RP/OC mean dose, loss, PTV D95 before normalisation, D1 after."""
    lines = ["| Planner | LP mean (Gy) | RP mean (Gy) | OC mean (Gy) | loss L | PTV D95 raw (Gy) | PTV D1 at D95 = 44 (Gy) | steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["planner"] for r in rows):
        sel = [r for r in rows if r["planner"] == name]
        m = {k: np.mean([r[k] for r in sel]) for k in sel[0] if k not in ("planner",)}
        lines.append(f"| {name} | {m['LP_mean_norm_gy']:.2f} | {m['RP_mean_norm_gy']:.2f} | {m['OC_mean_norm_gy']:.2f} | "
                     f"{m['loss']:.3f} | {m['ptv_d95_gy']:.2f} | {m['ptv_d1_norm_gy']:.2f} | {m['steps']:.1f} |")
    return lines


def write_section(rows: list[dict], path: Path, extra: Sequence[str] = (), dose_grid_factor=TRAIN_GRID) -> None:
    """Replace (or append) this module's section of ``path``; every other section is left as it is."""
    seeds = sorted({r["case_seed"] for r in rows})
    body = [SECTION, "", f"Held-out H&N phantoms: seeds {seeds[0]}–{seeds[-1]} (n = {len(seeds)}), never used for "
            "training or selection; planned from the static template by the closed loop (≤ 35 actions, best plan "
            f"kept), dose grid {tuple(dose_grid_factor)} (CT voxels per dose voxel, k j i). "
            "Doses normalised to PTV D95% = 44 Gy (SPEC §4.7 step 3). "
            "Δμ = planner − template (negative = lower), mean ± SD over cases; p: Wilcoxon signed-rank, two-sided, "
            "paired by case; total plan: the same test on the per-case sum of the three differences. "
            "Generated by `policies/sarsa_eval.py`; per-case values in `docs/results/sarsa_hn_test.csv`.", "",
            *table1(rows), "", *summary(rows), "", *extra]
    text = path.read_text() if path.exists() else "# Results\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start].rstrip("\n") + ("\n\n" + text[end + 1:] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(body).rstrip("\n") + "\n")
