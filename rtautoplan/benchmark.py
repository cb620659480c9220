"""``rtautoplan benchmark tg119``: plan the AAPM TG-119 test cases and measure the report's goals.

Each case folder (default: the bundled ``sample_data/tg119/<case>``) is planned with ``plan_folder``
into ``OUT/<case>/``; every goal of its ``prescription.json`` is measured on the planned case and
the final dose, and set beside the report's multi-institution mean ± SD where we have it
(``rtautoplan.phantom.tg119.PUBLISHED``). ``OUT/tg119.csv`` has one row per goal, ``OUT/tg119.png``
the achieved values against the goals and the published means.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rtautoplan.case import Goal
from rtautoplan.folder import PlanOptions, plan_folder
from rtautoplan.gate import EXIT_UNACCEPTABLE as UNACCEPTABLE  # a goal is missed
from rtautoplan.goals import measure
from rtautoplan.phantom import tg119

BUNDLED = Path(__file__).resolve().parents[1] / "sample_data" / "tg119"
CSV_FILE, PNG_FILE = "tg119.csv", "tg119.png"
CSV_COLUMNS = ("case", "roi", "metric", "goal", "lower_gy", "upper_gy", "achieved_gy", "met", "published_mean_gy",
               "published_sd_gy", "at_or_better_than_mean", "site", "modality", "seconds", "source")


@dataclass(frozen=True)
class GoalRow:
    """One goal of one case after planning: the achieved value (Gy), whether the goal is met, and the
    report's mean ± SD (Gy, None where unknown) with whether we are at or better than that mean."""

    case: str
    goal: Goal
    achieved_gy: float
    met: bool
    published_mean_gy: float | None
    published_sd_gy: float | None
    site: str
    modality: str
    seconds: float

    @property
    def at_or_better_than_mean(self) -> bool | None:
        """Lower-bounded goals: achieved ≥ mean; upper-bounded: achieved ≤ mean; None without a mean."""
        if self.published_mean_gy is None:
            return None
        if self.goal.lower is not None:
            return self.achieved_gy >= self.published_mean_gy
        return self.achieved_gy <= self.published_mean_gy


def case_folders(data: Path | None, out: Path, names: Sequence[str]) -> dict[str, Path]:
    """The folder of each case: under ``data`` (default: the bundled cases); when the bundled cases are
    not installed, they are written into ``out/cases``."""
    root = Path(data) if data is not None else BUNDLED
    if data is None and not all((root / name).is_dir() for name in names):
        return tg119.write_tg119(out / "cases", names)
    return {name: root / name for name in names}


def published_for(case: str, goal: Goal) -> tuple[float | None, float | None]:
    """(mean, SD) in Gy of the report's result for ``goal`` of ``case``; (None, None) when not known."""
    for p in tg119.published(case):
        if (p.roi, p.metric) == (goal.roi, goal.metric):
            return p.mean_gy, p.sd_gy
    return None, None


def run(out: str | Path, options: PlanOptions, names: Sequence[str] = tg119.CASES, data: Path | None = None,
        on_case: Callable[[str, list[GoalRow]], None] | None = None) -> list[GoalRow]:
    """Plan every case ``names`` into ``out/<case>`` and measure its goals; one GoalRow per goal."""
    out = Path(out)
    rows: list[GoalRow] = []
    for name, folder in case_folders(data, out, names).items():
        planned = plan_folder(folder, out / name, options)
        dose = planned.result.plan.dose.gy
        case_rows = []
        for goal in planned.case.prescription.goals:
            result = measure(goal, dose, planned.case)
            mean, sd = published_for(name, goal)
            case_rows.append(GoalRow(name, goal, result.value, result.met, mean, sd, planned.site, options.modality,
                                     planned.seconds))
        if on_case is not None:
            on_case(name, case_rows)
        rows += case_rows
    return rows


def exit_code(rows: Sequence[GoalRow]) -> int:
    """0 when every goal is met, UNACCEPTABLE (3) otherwise."""
    return 0 if all(r.met for r in rows) else UNACCEPTABLE


def _bound_text(goal: Goal) -> str:
    return str(goal)[len(goal.roi) + len(goal.metric) + 2:]


def _gy(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def write_csv(rows: Sequence[GoalRow], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            better = r.at_or_better_than_mean
            writer.writerow([r.case, r.goal.roi, r.goal.metric, _bound_text(r.goal), _gy(r.goal.lower),
                             _gy(r.goal.upper), f"{r.achieved_gy:.3f}", "yes" if r.met else "no",
                             _gy(r.published_mean_gy), _gy(r.published_sd_gy),
                             "" if better is None else "yes" if better else "no", r.site, r.modality,
                             f"{r.seconds:.1f}", r.goal.source])
    return Path(path)


def table(case: str, rows: Sequence[GoalRow]):
    """A rich Table of one case's goals."""
    from rich.table import Table

    t = Table(title=f"TG-119 {case} ({rows[0].site}/{rows[0].modality})" if rows else f"TG-119 {case}")
    for column, justify in (("goal", "left"), ("achieved Gy", "right"), ("met", "center"),
                            ("published mean ± SD Gy", "right"), ("at or better than mean", "center")):
        t.add_column(column, justify=justify)
    for r in rows:
        better = r.at_or_better_than_mean
        published = ("not available" if r.published_mean_gy is None
                     else f"{r.published_mean_gy:.2f} ± {r.published_sd_gy:.2f}" if r.published_sd_gy is not None
                     else f"{r.published_mean_gy:.2f}")
        t.add_row(str(r.goal), f"{r.achieved_gy:.2f}", "[green]yes[/green]" if r.met else "[red]no[/red]", published,
                  "–" if better is None else "yes" if better else "no")
    return t


def chart(rows: Sequence[GoalRow], path: Path) -> Path:
    """Per case, each goal's achieved value (green met, red missed), its bound (black bar: ▲ a minimum,
    ▼ a maximum) and the published mean ± SD (grey) where known; Gy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in rows))
    fig, axes = plt.subplots(len(cases), 1, figsize=(8.0, 2.4 * len(cases) + 0.4), squeeze=False)
    for ax, case in zip(axes[:, 0], cases):
        case_rows = [r for r in rows if r.case == case]
        xs = range(len(case_rows))
        for x, r in zip(xs, case_rows):
            bound, marker = (r.goal.lower, "^") if r.goal.lower is not None else (r.goal.upper, "v")
            ax.plot([x - 0.3, x + 0.3], [bound, bound], color="black", lw=2)
            ax.plot(x - 0.15, bound, marker=marker, color="black", ms=5)
            if r.published_mean_gy is not None:
                ax.errorbar(x + 0.12, r.published_mean_gy, yerr=r.published_sd_gy or 0.0, fmt="s", color="grey",
                            capsize=3, ms=5, label="published mean ± SD" if x == 0 else None)
            ax.plot(x, r.achieved_gy, "o", color="tab:green" if r.met else "tab:red", ms=7)
        ax.set_xticks(list(xs), [f"{r.goal.roi}\n{r.goal.metric}" for r in case_rows], fontsize=7)
        ax.set_ylabel("Gy")
        ax.set_title(f"TG-119 {case}: achieved (green met, red missed) vs goal (black)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

