"""The ``rtautoplan`` command. ``main(argv) -> exit code``; one subcommand per job.

Exit codes: 0 success, 2 bad input (one line naming the file/ROI/tag and the fix),
1 an internal error (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtautoplan.errors import InputError

log = logging.getLogger("rtautoplan")


def _phantom(args) -> int:
    from rtautoplan.phantom import write_phantom

    case = write_phantom(args.site, args.seed, args.output)
    print(f"wrote {case.case_id} ({args.site}, seed {args.seed}): CT {case.grid.shape[0]} slices "
          f"{case.grid.shape[1]}×{case.grid.shape[2]}, {len(case.structures)} ROIs → {args.output}")
    return 0


def _structures(args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from rtautoplan.dicom.read import read_case
    from rtautoplan.dicom.rtstruct import write_rtstruct
    from rtautoplan.report import contour_slices
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    case = read_case(args.case)
    planned = apply_rules(case, site=args.site, ctv_oar_crop_mm=args.ctv_crop_mm)
    objectives = objectives_for(planned, np.random.default_rng(args.seed))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rtstruct = write_rtstruct(planned, out / "RS_rtautoplan.dcm", label="rtautoplan aux")
    png = contour_slices(planned, out / "structures.png")
    (out / "objectives.json").write_text(json.dumps([_objective_json(o) for o in objectives], indent=1))

    by_structure: dict[str, list[str]] = {}
    for o in objectives:
        text = f"{o.kind.value} {o.dose_gy:.1f} Gy ×{o.weight:g}" + ("" if o.adjustable else " (fixed)")
        by_structure.setdefault(o.structure, []).append(text)
    table = Table(title=f"{case.case_id}: structures (site {args.site})")
    for column, justify in (("structure", "left"), ("ROI in", "left"), ("role", "left"), ("level", "right"),
                            ("volume cm³", "right"), ("planning cm³", "right"), ("objectives", "left")):
        table.add_column(column, justify=justify)
    for s in planned.structures:
        table.add_row(s.name, s.roi_name or "(generated)", s.role.value, "" if s.level is None else str(s.level),
                      f"{s.volume_cm3(planned.grid):.2f}",
                      "" if s.planning_mask is None else f"{s.voxels.sum() * planned.grid.voxel_volume_cm3:.2f}",
                      "; ".join(by_structure.get(s.name, [])))
    console = Console(width=160)
    console.print(table)
    console.print(f"wrote {rtstruct}, {png}, {out / 'objectives.json'}")
    return 0


def _plan(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rtautoplan.dicom.read import read_case
    from rtautoplan.outputs import write_outputs
    from rtautoplan.pipeline import plan_case, setup_for

    start = time.perf_counter()
    case = read_case(args.case)
    site = args.site or ("prostate" if case.has("Prostate") or case.has("Bladder") else "hn")
    setup = setup_for(site, args.modality)
    steps = args.max_steps or setup.max_steps
    console = Console(width=140)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{case.case_id} {site}/{args.modality}", total=steps, status="dose influence …")

        def on_step(step):
            mark = "" if step.accepted else f" [red]rejected: {step.reason}[/red]"
            progress.update(task, completed=step.step, status=f"score {step.score:.4g} after {step.action}{mark}")

        planned, result = plan_case(case, site=site, modality=args.modality, adapter=args.adapter,
                                    policy=args.policy, max_steps=steps, seed=args.seed, on_step=on_step)
    paths = write_outputs(planned, result, args.output, extra={"site": site, "seed": args.seed})
    s0, s1 = result.initial_score, result.score
    console.print(f"{result.score.system}: {s0.total:.4g} → {s1.total:.4g} (best at step {result.best_step}, "
                  f"{len(result.steps)} steps, {time.perf_counter() - start:.1f} s)")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _evaluate(args) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from rtautoplan import evaluate as ev
    from rtautoplan.adapters import ADAPTERS

    tps = None
    if args.dose_grid_factor:
        name = args.adapter or ev.setup_for(args.site, args.modality).adapter
        tps = ADAPTERS[name](dose_grid_factor=tuple(args.dose_grid_factor))
    console = Console(width=140)
    with Progress(console=console) as progress:
        task = progress.add_task(f"{args.policy} on {args.cases} {args.site} cases", total=args.cases)
        results = ev.evaluate(args.policy, args.site, args.cases, args.seed, args.modality, args.init, args.max_steps,
                              tps=tps, adapter=None if tps else args.adapter,
                              progress=lambda row: progress.advance(task))
    s = ev.summary(results)
    table = Table(title=f"{args.policy}: {args.site}/{args.modality}, {args.cases} held-out cases (seeds "
                        f"{args.seed}–{args.seed + args.cases - 1}), init {args.init}")
    for column in ("before", "after", "reached max", "improved", "worse", "s / case"):
        table.add_column(column, justify="right")
    table.add_row(f"{s['before_mean']:.3f} ± {s['before_sd']:.3f}", f"{s['after_mean']:.3f} ± {s['after_sd']:.3f}",
                  f"{s['reached_max_pct']:.1f} %", f"{s['improved_pct']:.1f} %", str(s["worse"]), f"{s['time_s_mean']:.1f}")
    console.print(table)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.policy}_{args.site}_{args.modality}_{args.init}"
    paths = [ev.write_csv(results, out / f"{stem}.csv"),
             ev.histogram(results, out / f"{stem}.png", f"{args.policy}, {args.site}: {args.cases} held-out cases")]
    (out / f"{stem}.json").write_text(json.dumps(s, indent=1))
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _objective_json(o) -> dict:
    return {"structure": o.structure, "kind": o.kind.value, "dose_gy": round(o.dose_gy, 3), "weight": o.weight,
            "volume": o.volume, "adjustable": o.adjustable}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtautoplan", description="Automatic radiotherapy treatment planning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phantom", help="write a synthetic patient (CT + RTSTRUCT + prescription) as DICOM")
    ph.add_argument("site", choices=["hn", "prostate"])
    ph.add_argument("--seed", type=int, default=1, help="anatomy variant (sample_data uses seed 1)")
    ph.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    ph.set_defaults(run=_phantom)

    st = sub.add_parser("structures", help="build PTV/Gap/Ring, resolve overlaps, assign objectives")
    st.add_argument("case", type=Path, help="folder with the CT series, RTSTRUCT and optional prescription.json")
    st.add_argument("-o", "--output", type=Path, required=True, help="folder for the auxiliary RTSTRUCT and PNG")
    st.add_argument("--site", default="hn", choices=["hn", "liver", "prostate"], help="margin set (SPEC §2.3)")
    st.add_argument("--ctv-crop-mm", type=float, default=None, help="crop CTVs this far from OARs (seed 003: 1 mm)")
    st.add_argument("--seed", type=int, default=0, help="seed of the OAR limit initialisation (rule 11)")
    st.set_defaults(run=_structures)

    pl = sub.add_parser("plan", help="plan a case in the closed loop: DICOM in, RTPLAN + RTDOSE + RTSTRUCT + report out")
    pl.add_argument("case", type=Path, help="folder with the CT series, RTSTRUCT and optional prescription.json")
    pl.add_argument("-o", "--output", type=Path, required=True, help="folder for the plan, dose, structures, report")
    pl.add_argument("--site", choices=["hn", "prostate"], default=None, help="default: prostate if the case has a "
                    "Prostate or Bladder, else hn")
    pl.add_argument("--modality", choices=["photon", "proton", "carbon"], default="photon")
    pl.add_argument("--adapter", default=None, help="TPS adapter (default: the setup's; see rtautoplan.adapters)")
    pl.add_argument("--policy", default=None, help="planner (default: the setup's; see rtautoplan.policies)")
    pl.add_argument("--max-steps", type=int, default=None, help="closed-loop steps (default: the setup's)")
    pl.add_argument("--seed", type=int, default=0, help="seed of the initial parameters")
    pl.set_defaults(run=_plan)

    ev = sub.add_parser("evaluate", help="plan held-out phantom variants with a planner; seed-style table, CSV, PNG")
    ev.add_argument("--policy", default="rule-based", help="planner (see rtautoplan.policies.POLICIES)")
    ev.add_argument("--site", choices=["hn", "prostate"], default="prostate")
    ev.add_argument("--modality", choices=["photon", "proton", "carbon"], default="photon")
    ev.add_argument("--cases", type=int, default=20, help="number of held-out variants")
    ev.add_argument("--seed", type=int, default=1000, help="first phantom seed (held out: ≥ 1000)")
    ev.add_argument("--init", default="random", help="initial parameters: random, or trivial/template/midpoint")
    ev.add_argument("--max-steps", type=int, default=None)
    ev.add_argument("--adapter", default=None)
    ev.add_argument("--dose-grid-factor", type=int, nargs=3, default=None, metavar=("K", "J", "I"),
                    help="dose grid block size (e.g. 2 4 4 for a fast coarse evaluation)")
    ev.add_argument("-o", "--output", type=Path, default=Path("out/evaluate"))
    ev.set_defaults(run=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: one line, never a traceback, unless asked
        if args.debug:
            raise
        print(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
