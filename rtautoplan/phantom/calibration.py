"""How hard a phantom population is, next to the papers' patients (issue 16).

* ``prostate_geometry`` / ``hn_geometry``: the anatomy that decides a plan's difficulty: volumes
  (cm³), the share of each OAR inside the PTV (%), the parotids' median distance to the PTV (mm).
* ``survey``: each variant of a population, its geometry plus the starting plan the planners get:
  prostate, ψ of the trivial TPPs (seed 000's engine, ``pipeline.SETUPS``); H&N, the static
  template's mean doses (seed 004's 44 Gy primary, SARSA's training engine, normalised to PTV D95%
  = 44 Gy, §4.7 step 3) and those of the parotid-limit reference plan (``limit_*``: how much parotid
  sparing the objectives can buy on that anatomy).
* ``plot``: the distributions of v1 and v2 next to the published ones (docs/results/population_*.png).

``python -m rtautoplan.phantom.calibration prostate|hn --cases N --population v1 v2`` writes the CSV
and the PNG (docs/results.md, "Calibrated phantom populations"); a CSV already there is resumed (its
rows kept, their seeds not re-planned), ``--plot-only`` redraws the PNG from it.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from rtautoplan.case import Case

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
SEED = 1000  # the held-out seeds of ``rtautoplan evaluate``

# Published reference values (docs/decisions.md, "Calibrated phantom populations").
SEED000_TRIVIAL_PSI = (6.20, 2.01)  # seed 000 dataset 1, 49 patients, trivial TPPs: ψ mean, sd (§1.14)
SEED000_GROUPS = tuple(range(2, 10))  # Fig. 4a: initial ψ "distributed broadly from 2 to 9"
HUNT_OVERLAP_21_PCT = 100.0 * 71 / 94  # Hunt et al. 2006: 71 of 94 parotids overlap the PTV by ≤ 21 %


def _cc(case: Case, mask: np.ndarray) -> float:
    return float(mask.sum()) * float(np.prod(case.grid.spacing)) / 1000.0


def _inside_pct(organ: np.ndarray, target: np.ndarray) -> float:
    """Share of ``organ``'s voxels inside ``target`` (%)."""
    n = int(organ.sum())
    return 100.0 * float((organ & target).sum()) / n if n else float("nan")


def median_distance_mm(case: Case, organ: np.ndarray, target: np.ndarray) -> float:
    """Median over ``organ``'s voxels of the distance (mm) to the nearest ``target`` voxel: 0 inside the
    target (Hunt et al. 2006; seed 004 §4.9's "median distance from target")."""
    from scipy.ndimage import distance_transform_edt

    spacing = case.grid.spacing  # (z, y, x) mm, the mask axes
    distance = distance_transform_edt(~target, sampling=spacing)
    return float(np.median(distance[organ])) if organ.any() else float("nan")


def prostate_geometry(case: Case) -> dict[str, float]:
    """CTV, PTV, bladder, rectum volumes (cm³) and the bladder's and rectum's share inside the PTV (%)."""
    ptv = case.structure("PTV_7800").mask.to_full()
    bladder, rectum = case.structure("Bladder").mask.to_full(), case.structure("Rectum").mask.to_full()
    return {"ctv_cc": _cc(case, case.structure("CTV_7800").mask.to_full()), "ptv_cc": _cc(case, ptv),
            "bladder_cc": _cc(case, bladder), "rectum_cc": _cc(case, rectum),
            "bladder_in_ptv_pct": _inside_pct(bladder, ptv), "rectum_in_ptv_pct": _inside_pct(rectum, ptv)}


def hn_geometry(case: Case, ptv: str) -> dict[str, float]:
    """Per parotid: share inside ``ptv`` (%), median distance to it (mm), volume (cm³); the oral
    cavity's share inside; which parotid is the proximal one (more overlap, then nearer)."""
    target = case.structure(ptv).mask.to_full()
    row: dict[str, float | str] = {"ptv_cc": _cc(case, target)}
    for organ, short in (("Parotid_L", "LP"), ("Parotid_R", "RP"), ("Cavity_Oral", "OC")):
        mask = case.structure(organ).mask.to_full()
        row[f"{short}_cc"] = _cc(case, mask)
        row[f"{short}_in_ptv_pct"] = _inside_pct(mask, target)
        if short != "OC":
            row[f"{short}_median_distance_mm"] = median_distance_mm(case, mask, target)
    key = (row["LP_in_ptv_pct"], -row["LP_median_distance_mm"]) >= (row["RP_in_ptv_pct"], -row["RP_median_distance_mm"])
    row["proximal"] = "L" if key else "R"
    return row


def _prostate_rows(seeds: Sequence[int], population: str) -> Iterable[dict]:
    from rtautoplan.pipeline import make_env, setup_for

    env = make_env(setup_for("prostate", "photon"), case_seeds=list(seeds), population=population)
    for seed in seeds:
        start = time.perf_counter()
        _, info = env.reset(seed=seed, options={"case_seed": seed, "init": "trivial"})
        failed = [c for c in env.last_score.criteria if c.passed is False]
        yield {"population": population, "case_seed": seed, **prostate_geometry(env.case), "psi_trivial": info["score"],
               "bladder_failed": sum(c.structure == "Bladder" for c in failed),
               "rectum_failed": sum(c.structure == "Rectum" for c in failed),
               "ptv_failed": sum(c.structure not in ("Bladder", "Rectum") for c in failed),
               "time_s": time.perf_counter() - start}


def _hn_rows(seeds: Sequence[int], population: str) -> Iterable[dict]:
    from rtautoplan.policies.sarsa import make_env
    from rtautoplan.policies.sarsa_eval import plan_metrics

    env = make_env(2, seeds, population=population)
    keys = ("LP_mean_norm_gy", "RP_mean_norm_gy", "OC_mean_norm_gy")
    for seed in seeds:
        start = time.perf_counter()
        env.reset(seed=seed, options={"case_seed": seed, "init": "template"})
        template = plan_metrics(env, env.last_dose.gy)
        env.reset(seed=seed, options={"case_seed": seed, "init": "parotid-limit"})
        limit = plan_metrics(env, env.last_dose.gy)
        yield {"population": population, "case_seed": seed, **hn_geometry(env.case, env._ptv()),
               **{k: template[k] for k in keys}, **{f"limit_{k}": limit[k] for k in keys},
               "time_s": time.perf_counter() - start}


def v1_prostate_rows(seeds: Sequence[int]) -> list[dict]:
    """v1 rows without planning: the geometry, and ψ of the trivial TPPs as the committed ACER table
    measured it on the same engine (docs/results/acer_prostate.csv, "before" of its trivial rows)."""
    from rtautoplan.phantom import make_case
    from rtautoplan.policies.acer_eval import read_rows

    before = {r["case_seed"]: r["before"] for r in read_rows() if r["policy"] == "acer" and r["init"] == "trivial"}
    return [{"population": "v1", "case_seed": s, **prostate_geometry(make_case("prostate", s)),
             "psi_trivial": before[s]} for s in seeds if s in before]


def v1_hn_rows(seeds: Sequence[int]) -> list[dict]:
    """v1 rows without planning: the geometry, and the template and parotid-limit mean doses the
    committed Table-1 evaluation measured on the same engine (docs/results/sarsa_hn_test.csv)."""
    from rtautoplan.phantom import make_case
    from rtautoplan.policies.env_base import single_level
    from rtautoplan.policies.sarsa_eval import CSV_PATH, read_csv as read_table
    from rtautoplan.structures.rules import apply_rules

    by = {(r["planner"], int(r["case_seed"])): r for r in read_table(CSV_PATH)}
    keys = ("LP_mean_norm_gy", "RP_mean_norm_gy", "OC_mean_norm_gy")
    rows = []
    for s in seeds:
        if ("template", s) in by and ("parotid-limit", s) in by:
            case = apply_rules(single_level(make_case("hn", s), 44.0, 22), "hn")
            rows.append({"population": "v1", "case_seed": s, **hn_geometry(case, "PTV_4400"),
                         **{k: float(by["template", s][k]) for k in keys},
                         **{f"limit_{k}": float(by["parotid-limit", s][k]) for k in keys}})
    return rows


SURVEYS = {"prostate": _prostate_rows, "hn": _hn_rows}


def survey(site: str, seeds: Sequence[int], population: str, progress: bool = True) -> Iterator[dict]:
    """One row per phantom seed, as it is measured: geometry and the starting plan (module docstring)."""
    for row in SURVEYS[site](seeds, population):
        if progress:
            print(f"{site} {population} {row['case_seed']}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if isinstance(v, float) and k != "time_s"),
                  flush=True)
        yield row


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return [{k: (v if k in ("population", "proximal") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def plot(site: str, rows: Sequence[dict], path: Path) -> Path:
    """The populations' distributions next to the published ones (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = sorted({r["population"] for r in rows})
    by = {p: [r for r in rows if r["population"] == p] for p in pops}
    if site == "prostate":
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        bins = np.arange(-0.5, 10.5, 1.0)
        for p in pops:
            psi = np.array([r["psi_trivial"] for r in by[p]])
            axes[0].hist(psi, bins=bins, alpha=0.5, label=f"{p}: {psi.mean():.2f} ± {psi.std(ddof=1):.2f} (n={psi.size})")
        m, sd = SEED000_TRIVIAL_PSI
        x = np.linspace(0, 9, 200)
        n_ref = max(len(v) for v in by.values())
        axes[0].plot(x, n_ref * np.exp(-0.5 * ((x - m) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), "k--",
                     label=f"seed 000 dataset 1: {m} ± {sd} (n=49, range 2–9)")
        axes[0].set_xlabel("ψ of the trivial TPPs")
        axes[0].set_ylabel("cases")
        for ax, key, label in ((axes[1], "rectum_in_ptv_pct", "rectum inside PTV (% of rectum)"),
                               (axes[2], "bladder_in_ptv_pct", "bladder inside PTV (% of bladder)")):
            for p in pops:
                ax.hist([r[key] for r in by[p]], bins=15, alpha=0.5, label=p)
            ax.set_xlabel(label)
        axes[1].axvline(3.5, color="k", ls=":", label="Mattes 2014 cut-off 3.5 %")
        axes[2].axvline(5.0, color="k", ls=":", label="Mattes 2014 cut-off 5 %")
    else:
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
        for p in pops:
            for side, ls in (("LP", "-"), ("RP", "--")):
                axes[0].hist([r[f"{side}_in_ptv_pct"] for r in by[p]], bins=12, histtype="step", ls=ls,
                             label=f"{p} {side}")
                axes[1].hist([r[f"{side}_median_distance_mm"] for r in by[p]], bins=12, histtype="step", ls=ls,
                             label=f"{p} {side}")
            for organ in ("LP", "RP", "OC"):
                axes[2].hist([r[f"{organ}_mean_norm_gy"] for r in by[p]], bins=12, histtype="step",
                             label=f"{p} {organ}")
        axes[0].axvline(21.0, color="k", ls=":", label=f"Hunt 2006: {HUNT_OVERLAP_21_PCT:.0f} % of glands ≤ 21 %")
        axes[0].set_xlabel("parotid inside the 44 Gy PTV (%)")
        axes[1].set_xlabel("parotid median distance to the PTV (mm)")
        axes[2].set_xlabel("template mean dose at D95 = 44 Gy (Gy)")
        axes[2].axvspan(16.0, 24.0, color="b", alpha=0.08, label="parotids, scaled from Hunt 2006")
        axes[2].axvspan(26.3, 37.0, color="m", alpha=0.08, label="oral cavity, scaled from seed 004 §4.1")
        for p in pops:
            room = [r[f"limit_{side}_mean_norm_gy"] - r[f"{side}_mean_norm_gy"] for r in by[p] for side in ("LP", "RP")
                    if f"limit_{side}_mean_norm_gy" in r]
            axes[3].hist(room, bins=12, histtype="step", label=f"{p}: {np.mean(room):.1f} Gy" if room else p)
        axes[3].axvline(-7.0, color="k", ls=":", label="seed 004 model 2 vs template: −7 Gy")
        axes[3].set_xlabel("parotid-limit − template, parotid mean (Gy)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"{site} phantom populations (seeds {SEED}–{SEED + max(len(v) for v in by.values()) - 1})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def summary(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per population: mean, sd, min, max of every numeric column."""
    out = {}
    for p in sorted({r["population"] for r in rows}):
        sub = [r for r in rows if r["population"] == p]
        out[p] = {k: (float(np.mean([r[k] for r in sub])), float(np.std([r[k] for r in sub], ddof=1)),
                      float(np.min([r[k] for r in sub])), float(np.max([r[k] for r in sub])))
                  for k, v in sub[0].items() if isinstance(v, float) and k not in ("case_seed", "time_s")}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", choices=sorted(SURVEYS))
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--population", nargs="+", default=["v1", "v2"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of population_<site>.csv/.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the CSV, plan nothing")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"population_{args.site}.csv"
    rows = read_csv(path) if path.exists() else []  # a survey resumes: measured (population, seed) are kept
    done = {(r["population"], int(r["case_seed"])) for r in rows}
    for population in args.population:
        todo = [] if args.plot_only else [s for s in range(args.seed, args.seed + args.cases) if (population, s) not in done]
        for row in survey(args.site, todo, population):
            rows.append(row)
            write_csv(rows, path)  # every row, so a long survey stopped early keeps what it measured
    if "v1" not in args.population:  # v1 from the committed tables of the same seeds: nothing re-planned
        rows += (v1_prostate_rows if args.site == "prostate" else v1_hn_rows)(range(args.seed, args.seed + args.cases))
    plot(args.site, rows, args.out / f"population_{args.site}.png")
    for p, stats in summary(rows).items():
        print(p, {k: tuple(round(x, 2) for x in v) for k, v in stats.items()})


if __name__ == "__main__":
    main()
