"""The ``rtautoplan`` command. ``main(argv) -> exit code``; one subcommand per job.

Exit codes: 0 success, 3 a plan was written but fails the clinical gate (a required goal or a
hot-spot rule is missed: ``rtautoplan.gate``; the goal table and the reasons are printed), 2 bad
input (one line naming the file/ROI/tag and the fix), 1 an internal error (one line; ``--debug``
shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtautoplan.errors import InputError
from rtautoplan.gate import EXIT_UNACCEPTABLE

log = logging.getLogger("rtautoplan")
SITES = ("hn", "prostate", "liver", "generic")  # rtautoplan.pipeline.SITES, without importing the engine
MODALITIES = ("photon", "proton", "carbon")


def _phantom(args) -> int:
    from rtautoplan.phantom import write_phantom

    if args.site == "tg119":
        from rtautoplan.phantom.tg119 import write_tg119

        folders = write_tg119(args.output)
        print(f"wrote the AAPM TG-119 cases {', '.join(folders)} → {args.output}")
        return 0
    if args.size != "standard" and args.site != "hn":
        raise InputError(f"--size {args.size}", f"exists for the hn phantom only, not {args.site}",
                         "Use --size standard, or the hn site")
    from rtautoplan.phantom import populations

    if args.population not in populations(args.site):
        raise InputError(f"--population {args.population}", f"does not exist for the {args.site} phantom",
                         f"Use --population {' or '.join(populations(args.site))}")
    case = write_phantom(args.site, args.seed, args.output, args.size, args.population)
    print(f"wrote {case.case_id} ({args.site}, seed {args.seed}): CT {case.grid.shape[0]} slices "
          f"{case.grid.shape[1]}×{case.grid.shape[2]}, {len(case.structures)} ROIs → {args.output}")
    return 0


def _benchmark(args) -> int:
    """Exit 0 when every goal of every case is met, 3 (plan unacceptable) otherwise."""
    from rich.console import Console

    from rtautoplan import benchmark

    console = Console(width=140)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = benchmark.run(out, _plan_options(args), names=args.cases, data=args.data,
                         on_case=lambda name, case_rows: console.print(benchmark.table(name, case_rows)))
    paths = [benchmark.write_csv(rows, out / benchmark.CSV_FILE), benchmark.chart(rows, out / benchmark.PNG_FILE)]
    met = sum(r.met for r in rows)
    console.print(f"{met} of {len(rows)} TG-119 goals met → " + ", ".join(str(p) for p in paths))
    return benchmark.exit_code(rows)


def _structures(args) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from rtautoplan.dicom.read import read_case
    from rtautoplan.dicom.rtstruct import write_rtstruct
    from rtautoplan.report import contour_slices
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    from rtautoplan.pipeline import choose_site

    case = read_case(args.case)
    args.site, reason = choose_site(case, args.site)
    print(f"prescription: {case.prescription.summary}\nsite {args.site} ({reason})")
    planned = apply_rules(case, site=args.site, ctv_oar_crop_mm=args.ctv_crop_mm)
    from rtautoplan.protocols import goals_for
    from rtautoplan.structures.objectives import goal_objectives

    objectives = objectives_for(planned, np.random.default_rng(args.seed))
    objectives += goal_objectives(planned, goals_for(planned, args.site))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rtstruct = write_rtstruct(planned, out / "RS_rtautoplan.dcm", label="rtautoplan aux", unplanned=True)
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
                      "" if s.planning_mask is None else f"{s.voxels.count * planned.grid.voxel_volume_cm3:.2f}",
                      "; ".join(by_structure.get(s.name, [])))
    console = Console(width=160)
    console.print(table)
    console.print(f"wrote {rtstruct}, {png}, {out / 'objectives.json'}")
    return 0


def _plan(args) -> int:
    import time

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from rtautoplan.folder import plan_folder

    start = time.perf_counter()
    console = Console(width=140)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{args.case.name} {args.modality}", total=None, status="dose influence …")

        def on_step(step):
            mark = "" if step.accepted else f" [red]rejected: {escape(step.reason)}[/red]"
            progress.update(task, status=f"step {step.step}: score {step.score:.4g} after {escape(step.action)}{mark}")

        planned = plan_folder(args.case, args.output, _plan_options(args), on_step=on_step)
    result = planned.result
    if planned.case is not None:
        console.print(f"prescription: {escape(planned.case.prescription.summary)}")
    console.print(f"site {planned.site} ({planned.site_reason}); {result.score.system}: "
                  f"{result.initial_score.total:.4g} → {result.score.total:.4g} (best at step {result.best_step}, "
                  f"{result.n_steps} steps, {time.perf_counter() - start:.1f} s)")
    if result.normalisation is not None:
        console.print(f"normalised: {result.normalisation}")
    print_gate(console, result.gate)
    console.print("wrote " + ", ".join(str(p) for p in planned.files.values()))
    return 0 if result.acceptable else EXIT_UNACCEPTABLE


def print_gate(console, gate) -> None:
    """The clinical gate on stdout: the goal table, then ACCEPTABLE or NOT ACCEPTABLE with the reasons."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="clinical goals (final dose)")
    for column, justify in (("ROI", "left"), ("metric", "left"), ("goal", "left"), ("achieved", "right"),
                            ("met", "left"), ("priority", "left")):
        table.add_column(column, justify=justify)
    for r in gate.goals:
        g = r.goal
        bound = str(g)[len(g.roi) + len(g.metric) + 2:]
        table.add_row(escape(g.roi), g.metric, bound, f"{r.value:.2f}", "yes" if r.met else "[red]NO[/red]",
                      "must" if g.priority == 1 else "desired")
    for h in gate.hotspots:
        table.add_row(escape(h.rule), "", f"≤ {h.limit_gy:.2f} Gy", f"{h.value_gy:.2f}",
                      "yes" if h.met else "[red]NO[/red]", "must")
    console.print(table)
    for warning in gate.all_warnings():
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if gate.acceptable:
        console.print("[green]clinical gate: ACCEPTABLE[/green] (RTPLAN UNAPPROVED until a clinician reviews it)")
    else:
        console.print("[bold red]clinical gate: NOT ACCEPTABLE[/bold red] — " + escape("; ".join(gate.reasons)))


def _evaluate(args) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from rtautoplan import evaluate as ev
    from rtautoplan.pipeline import tps_with_options

    if args.table1:
        return _table1(args)
    if args.policy == "ppo" and args.site in ("hn", "liver") and args.modality == "proton":
        return _ppo_table(args)
    if args.policy == "qmix" and args.site == "hn" and args.modality == "carbon":
        return _qmix_table(args)
    tps = None
    if args.dose_grid_factor:  # the setup's adapter options (e.g. the trained planner's engine) plus the grid
        tps = tps_with_options(ev.setup_for(args.site, args.modality, args.policy), args.adapter,
                               {"dose_grid_factor": tuple(args.dose_grid_factor)})
    console = Console(width=140)
    with Progress(console=console) as progress:
        task = progress.add_task(f"{args.policy} on {args.cases} {args.site} cases", total=args.cases)
        results = ev.evaluate(args.policy, args.site, args.cases, args.seed, args.modality, args.init, args.max_steps,
                              tps=tps, adapter=None if tps else args.adapter,
                              progress=lambda row: progress.advance(task), population=args.population)
    s = ev.summary(results)
    table = Table(title=f"{args.policy}: {args.site}/{args.modality}, {args.cases} held-out cases (seeds "
                        f"{args.seed}–{args.seed + args.cases - 1}, population {args.population}), init {args.init}")
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


def _table1(args) -> int:
    """Seed 004's Table 1 on held-out H&N variants: every SARSA comparison planner against the template."""
    from rich.console import Console

    from rtautoplan.policies import sarsa_eval

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    grid = tuple(args.dose_grid_factor) if args.dose_grid_factor else sarsa_eval.TRAIN_GRID
    md = out / "sarsa_table1.md"
    md.unlink(missing_ok=True)
    sarsa_eval.evaluate_sarsa(range(args.seed, args.seed + args.cases), max_steps=args.max_steps or 35,
                              csv_path=out / "sarsa_table1.csv", results_md=md, dose_grid_factor=grid,
                              records=False)
    Console(width=160).print(md.read_text())
    print(f"wrote {out / 'sarsa_table1.csv'}, {md}")
    return 0


def _ppo_table(args) -> int:
    """Seed 002's table on held-out H&N (or liver) variants: PPO, rule-based and random against the initial L-BFGS plan."""
    from rich.console import Console

    from rtautoplan.policies import ppo_eval

    seeds = range(args.seed, args.seed + args.cases)
    csv_path = Path(args.output) / f"ppo_{args.site}_proton.csv"
    rows = ppo_eval.evaluate(seeds, planners=args.planners or tuple(ppo_eval.PLANNERS), csv_path=csv_path,
                             progress=lambda p: print(f"planned {args.cases} cases: {p}"), weights=args.weights,
                             coverage_guard=args.coverage_guard, site=args.site)
    Console(width=200).print(ppo_eval.table(rows) + "\n\n" + ppo_eval.head_to_head(rows))
    print(f"wrote {csv_path}")
    return 0


def _qmix_table(args) -> int:
    """Seed 003's §3.8 evaluation on held-out carbon H&N variants: QMIX, rule-based, random and the template."""
    from rich.console import Console

    from rtautoplan.policies import qmix_eval

    seeds = range(args.seed, args.seed + args.cases)
    out = Path(args.output)
    csv_path = out / "qmix_hn_carbon.csv"
    rows = qmix_eval.evaluate(seeds, planners=args.planners or tuple(qmix_eval.PLANNERS), csv_path=csv_path,
                              weights=args.weights)
    figure = qmix_eval.trajectory(rows, seeds[0], out / "qmix_hn_carbon_trajectory.png")
    Console(width=200).print(qmix_eval.table(rows) + "\n\n" + qmix_eval.oar_table(rows))
    print(f"wrote {csv_path}, {figure}")
    return 0


def _train(args) -> int:
    from rtautoplan.training import run

    record = run(args.algorithm, args.options)
    fields = record if isinstance(record, dict) else vars(record) if hasattr(record, "__dict__") else {}
    summary = {k: fields[k] for k in ("iterations", "episodes", "steps", "updates", "wall_s", "best_step")
               if fields.get(k) is not None}
    print(f"trained {args.algorithm}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in summary.items()))
    return 0


def _plan_options(args):
    """PlanOptions from the shared plan options (``_add_plan_options``)."""
    from rtautoplan.folder import PlanOptions

    return PlanOptions(site=args.site, modality=args.modality, adapter=args.adapter, policy=args.policy,
                       max_steps=args.max_steps, seed=args.seed, adapter_options=_engine_options(args),
                       unknown_rois=args.unknown_rois, conservative=args.conservative)


def _engine_options(args) -> dict:
    """The adapter's dose grid (``_grid_options``) and, with --beamlet-mm, its beamlet side (photons)."""
    mm = getattr(args, "beamlet_mm", None)
    if mm is not None and not mm > 0:
        raise InputError(f"--beamlet-mm {mm:g}", "is not a positive size", "Give e.g. --beamlet-mm 2.5 (a 2.5 mm MLC)")
    return {**_grid_options(args), **({"beamlet_mm": mm} if mm is not None else {})}


def _grid_options(args) -> dict:
    """The adapter's dose-grid option from --dose-grid-mm or --dose-grid-factor (not both); {} for neither
    (the setup's grid: 3 mm, or the block grid a trained planner learned on)."""
    mm, factor = getattr(args, "dose_grid_mm", None), getattr(args, "dose_grid_factor", None)
    if mm and factor:
        raise InputError("--dose-grid-mm and --dose-grid-factor", "both given", "Give one dose grid: in mm (the "
                         "default 3 mm) or as a block of CT voxels")
    if mm:
        if len(mm) not in (1, 3) or min(mm) <= 0:
            raise InputError(f"--dose-grid-mm {' '.join(map(str, mm))}", "is not one or three positive spacings",
                             "Give e.g. --dose-grid-mm 3, or 3 2.5 2.5 (slice, row, column)")
        return {"dose_grid_mm": mm[0] if len(mm) == 1 else tuple(mm)}
    return {"dose_grid_factor": tuple(factor)} if factor else {}


def _service_logging(args, name: str) -> None:
    """Shells report progress through logging (stderr): INFO for ``name``, DEBUG (tracebacks) with --debug."""
    logging.getLogger("rtautoplan").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    logging.getLogger(name).setLevel(logging.DEBUG if args.debug else logging.INFO)


def _batch(args) -> int:
    """Exit 0 when every case was planned acceptably, 3 when some plan fails the clinical gate (and
    nothing failed), 2 when a case had bad input, 1 when any internal error occurred."""
    from rich.console import Console
    from rich.markup import escape

    from rtautoplan.batch import SUMMARY_FILE, replan_folder, run_serially

    _service_logging(args, "rtautoplan.batch")
    runner = run_serially
    if args.ray is not None:  # Ray is imported only here (rtautoplan/cluster.py)
        from rtautoplan.cluster import ray_runner, settings_from

        runner = ray_runner(settings_from(args))
    rows = replan_folder(args.root, args.output, force=args.force, runner=runner, **vars(_plan_options(args)))
    console = Console(width=160)
    counts = {status: sum(r.status == status for r in rows) for status in ("ok", "unacceptable", "skipped", "error")}
    for row in rows:
        if row.status in ("error", "unacceptable"):
            label = "error" if row.status == "error" else "NOT ACCEPTABLE"
            console.print(f"[red]{label}[/red] {escape(row.case)}: {escape(row.message)}", highlight=False)
    console.print(f"{counts['ok']} planned, {counts['unacceptable']} planned but NOT ACCEPTABLE, {counts['skipped']} "
                  f"kept (finished before), {counts['error']} failed → {args.output / SUMMARY_FILE}")
    internal = any(r.status == "error" and r.message.startswith("internal error") for r in rows)
    unacceptable = counts["unacceptable"] or any(r.status == "skipped" and r.acceptable == "no" for r in rows)
    return 1 if internal else 2 if counts["error"] else EXIT_UNACCEPTABLE if unacceptable else 0


def _hook(args) -> int:
    from rtautoplan.hook import serve_stdio

    _service_logging(args, "rtautoplan.hook")
    serve_stdio(_plan_options(args))
    return 0


def _node(args) -> int:
    """Settings: the defaults, then the --config file, then the options given on the command line."""
    from dataclasses import replace

    from rtautoplan.node import Destination, NodeConfig, serve_until_stopped
    from rtautoplan.node_config import load_config
    from rtautoplan.physics import cache

    _service_logging(args, "rtautoplan.node")
    logging.getLogger("rtautoplan.access").setLevel(logging.DEBUG if args.debug else logging.INFO)
    config = NodeConfig(**(load_config(args.config) if args.config else {}))
    given = {k: getattr(args, k) for k in ("aet", "host", "port", "workdir", "quiet_s") if getattr(args, k) is not None}
    if args.dest:
        host, port, aet = args.dest
        if not port.isdigit():
            raise InputError("--dest", f"port {port!r} is not a number", "Give --dest HOST PORT AET, e.g. "
                             "--dest pacs.local 104 PACS")
        given["dest"] = Destination(host, int(port), aet)
    for flag in ("send_unacceptable", "replan_unchanged"):
        if getattr(args, flag):
            given[flag] = True
    if args.cache_dir or args.cache_max_mb:
        cache.configure(args.cache_dir, args.cache_max_mb and int(args.cache_max_mb * 2**20))
    serve_until_stopped(replace(config, plan=_plan_options(args), **given))
    return 0


def _cache(args) -> int:
    from rtautoplan.physics import cache

    cache.configure(args.cache_dir, args.cache_max_mb and int(args.cache_max_mb * 2**20))
    if args.action == "clear":
        n = cache.clear()
        print(f"removed {n} entries from {cache.cache_dir()}")
        return 0
    info = cache.info()
    print(f"{info.directory}: {info.entries} entries, {info.size / 2**20:.1f} MB of {info.max_bytes / 2**20:.0f} MB "
          "(least recently used entries are removed above the cap; RTAUTOPLAN_CACHE_MAX_MB or --cache-max-mb)")
    return 0


def _export(args) -> int:
    from rtautoplan.export import export_nifti

    paths = export_nifti(args.source, args.nifti, ct_case=args.ct, unknown_rois=args.unknown_rois)
    print(f"wrote {len(paths)} files to {args.nifti}: " + ", ".join(p.name for p in paths.values()))
    return 0


def _audit(args) -> int:
    from rtautoplan.audit import EXIT_MISMATCH, trail, verify

    log, checks = verify(args.log, args.case)
    for line in trail(log):
        print(line)
    for c in checks:
        print(f"{'ok      ' if c.ok else 'MISMATCH'} {c.item}" + (f": {c.detail}" if c.detail else ""))
    bad = [c for c in checks if not c.ok]
    print(f"audit: {len(checks) - len(bad)} of {len(checks)} checks pass" + (", NOT VERIFIED" if bad else ""))
    return EXIT_MISMATCH if bad else 0


def _review(args) -> int:
    from rtautoplan.review import serve_review

    finished = serve_review(args.case, args.output, _plan_options(args), args.k, args.port,
                            on_ready=lambda url: print(f"review {args.case} at {url} (Ctrl-C stops)", flush=True))
    print(f"{finished['status']}: wrote " + ", ".join(finished["files"].values()))
    return 0 if finished["acceptable"] else EXIT_UNACCEPTABLE


def _ope(args) -> int:
    from rtautoplan import ope

    if args.bootstrap < 1:
        raise InputError("--bootstrap", f"{args.bootstrap} resamples", "Give 1 or more (1000 is usual)")
    result = ope.run(args.logs, args.policy, args.bootstrap, horizon=args.horizon, value=args.value)
    truth = ope.measured(args.measured, args.bootstrap, horizon=args.horizon, value=args.value) \
        if args.measured else None
    print(f"{args.policy} from {result['episodes']} logged episodes (behaviour mean return "
          f"{result['behaviour mean return']:.4g}, effective sample size {result['effective sample size']:.4g})")
    for name in ope.ESTIMATORS:
        e = result[name]
        lo, hi = e["ci95"]
        note = ""
        if truth is not None:
            note = f"  {'within' if ope.within(e['estimate'], truth['value']) else 'OUTSIDE'} ±10 %, CI " \
                   f"{'covers' if lo <= truth['value'] <= hi else 'misses'} it"
        print(f"  {name:<5} {e['estimate']:>9.4g}  95 % CI [{lo:.4g}, {hi:.4g}]{note}")
    if truth is not None:
        print(f"  measured {truth['value']:.4g} (95 % CI {truth['ci95'][0]:.4g}–{truth['ci95'][1]:.4g}, "
              f"{truth['episodes']} episodes)")
        result["measured"] = truth
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _objective_json(o) -> dict:
    return {"structure": o.structure, "kind": o.kind.value, "dose_gy": round(o.dose_gy, 3), "weight": o.weight,
            "volume": o.volume, "adjustable": o.adjustable}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtautoplan", description="Automatic radiotherapy treatment planning.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phantom", help="write a synthetic patient (CT + RTSTRUCT + prescription) as DICOM")
    ph.add_argument("site", choices=["hn", "prostate", "liver", "tg119"], help="liver: seed 002's generalisation "
                    "site; tg119: the five AAPM TG-119 test cases, one folder each (sample_data/tg119)")
    ph.add_argument("--seed", type=int, default=1, help="anatomy variant (sample_data uses seed 1; not for tg119)")
    ph.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    ph.add_argument("--size", choices=["standard", "clinical"], default="standard",
                    help="standard: the bundled samples' grid; clinical (hn): 512 × 512 × 180, 0.98 × 0.98 × 2 mm")
    ph.add_argument("--population", choices=["v1", "v2"], default="v1",
                    help="generator version: v1 (the samples'), v2 (anatomy calibrated on real patients, issue 16)")
    ph.set_defaults(run=_phantom)

    st = sub.add_parser("structures", help="build PTV/Gap/Ring, resolve overlaps, assign objectives")
    st.add_argument("case", type=Path, help="folder with the CT series, RTSTRUCT and optional prescription.json")
    st.add_argument("-o", "--output", type=Path, required=True, help="folder for the auxiliary RTSTRUCT and PNG")
    st.add_argument("--site", default=None, choices=SITES, help="margins and protocol (default: prescription.json's "
                    "site, else from the ROIs)")
    st.add_argument("--ctv-crop-mm", type=float, default=None, help="crop CTVs this far from OARs (seed 003: 1 mm)")
    st.add_argument("--seed", type=int, default=0, help="seed of the OAR limit initialisation (rule 11)")
    st.set_defaults(run=_structures)

    pl = sub.add_parser("plan", help="plan a case in the closed loop: DICOM in, RTPLAN + RTDOSE + RTSTRUCT + report out")
    pl.add_argument("case", type=Path, help="folder with the CT series, RTSTRUCT and optional prescription.json")
    pl.add_argument("-o", "--output", type=Path, required=True, help="folder for the plan, dose, structures, report")
    _add_plan_options(pl, engine=True)
    pl.set_defaults(run=_plan)

    ev = sub.add_parser("evaluate", help="plan held-out phantom variants with a planner; seed-style table, CSV, PNG")
    ev.add_argument("--policy", default="rule-based", help="planner (see rtautoplan.policies.POLICIES)")
    ev.add_argument("--site", choices=SITES, default="prostate", help="phantom populations exist for hn and prostate; liver: seed 002's generalisation (--policy ppo --modality proton)")
    ev.add_argument("--modality", choices=["photon", "proton", "carbon"], default="photon")
    ev.add_argument("--cases", type=int, default=20, help="number of held-out variants")
    ev.add_argument("--seed", type=int, default=1000, help="first phantom seed (held out: ≥ 1000)")
    ev.add_argument("--init", default="random", help="initial parameters: random, or trivial/template/midpoint")
    ev.add_argument("--population", choices=["v1", "v2"], default="v2",
                    help="phantom population: v2 (calibrated, issue 16) or v1 (re-runs the results before it)")
    ev.add_argument("--max-steps", type=int, default=None)
    ev.add_argument("--adapter", default=None)
    ev.add_argument("--dose-grid-factor", type=int, nargs=3, default=None, metavar=("K", "J", "I"),
                    help="dose grid block size (e.g. 2 4 4 for a fast coarse evaluation)")
    ev.add_argument("--table1", action="store_true",
                    help="seed 004 Table 1 instead: template, SARSA models 1 and 2, rule-based and random on H&N "
                         "(normalised to PTV D95 = 44 Gy; --site, --policy and --init are not used)")
    ev.add_argument("--planners", nargs="+", default=None, choices=["ppo", "qmix", "rule-based", "random", "template"],
                    help="--policy ppo --site hn --modality proton (ppo, rule-based, random) or --policy qmix --site hn "
                         "--modality carbon (qmix, rule-based, random, template): the planners of the table (default: all)")
    ev.add_argument("--weights", type=Path, default=None,
                    help="--policy ppo / qmix: the planner's weights (default: the committed ones)")
    ev.add_argument("--coverage-guard", type=float, default=None, metavar="FRACTION",
                    help="--policy ppo: every planner's loop rejects a step taking a CTV's D99 below "
                         "min(FRACTION·Rx, its D99 before) (e.g. 0.99; default: no guard)")
    ev.add_argument("-o", "--output", type=Path, default=Path("out/evaluate"))
    ev.set_defaults(run=_evaluate)

    tr = sub.add_parser("train", help="train a planner; the README gives the commands of the committed weights",
                        description="rtautoplan train acer|sarsa|dqn|ppo|qmix [--field value …]: every field of the trainer's "
                                    "Args is an option (rtautoplan train NAME --help lists them)")
    tr.add_argument("algorithm", choices=["acer", "sarsa", "dqn", "ppo", "qmix"])
    tr.add_argument("options", nargs=argparse.REMAINDER, help="--field value … of the trainer's Args")
    tr.set_defaults(run=_train)

    ba = sub.add_parser("batch", help="re-plan every case folder below ROOT; one failure never stops the rest")
    ba.add_argument("root", type=Path, help="folder searched for case folders (CT series + RTSTRUCT, by DICOM header)")
    ba.add_argument("-o", "--output", type=Path, required=True, help="OUT/<case path>/ per case, OUT/batch_summary.csv")
    ba.add_argument("--force", action="store_true", help="re-plan cases whose output is already finished")
    _add_plan_options(ba, engine=True)
    from rtautoplan import cluster

    cluster.add_options(ba)
    ba.set_defaults(run=_batch)

    from rtautoplan.phantom.tg119 import CASES as TG119_CASES

    bm = sub.add_parser("benchmark", help="plan a test suite's cases and measure its published goals (exit 3 when "
                        "a goal is missed)")
    bm.add_argument("suite", choices=["tg119"], help="tg119: the AAPM TG-119 IMRT test suite (sample_data/tg119)")
    bm.add_argument("-o", "--output", type=Path, default=Path("out/tg119"), help="OUT/<case>/ plans, OUT/tg119.csv, "
                    "OUT/tg119.png")
    bm.add_argument("--cases", nargs="+", default=list(TG119_CASES), choices=TG119_CASES, metavar="CASE",
                    help=f"cases to plan (default all: {', '.join(TG119_CASES)})")
    bm.add_argument("--data", type=Path, default=None, help="folder holding the case folders (default: the bundled "
                    "sample_data/tg119)")
    _add_plan_options(bm, engine=True)
    bm.set_defaults(run=_benchmark)

    ex = sub.add_parser("export", help="a case or a planned output as research formats: CT, masks, label map, dose "
                        "(NIfTI)")
    ex.add_argument("source", type=Path, help="a case folder (CT series + RTSTRUCT or label map), or an output "
                    "folder of `rtautoplan plan` (then give --ct)")
    ex.add_argument("--nifti", type=Path, required=True, metavar="DIR", help="write ct.nii.gz (HU), "
                    "mask_<name>.nii.gz, labels.nii.gz + labels.json and, for an output, dose.nii.gz (Gy) here")
    ex.add_argument("--ct", type=Path, default=None, metavar="CASE", help="for an output folder: the case folder it "
                    "was planned from (its CT; the output RTSTRUCT must reference it)")
    ex.add_argument("--unknown-rois", choices=["error", "keep"], default="error",
                    help="a ROI name with no TG-263 match: stop with the fix (default), or export it as named")
    ex.set_defaults(run=_export)

    ho = sub.add_parser("hook", help="TPS scripting hook: JSON requests on stdin, one JSON response per line on stdout")
    _add_plan_options(ho, engine=True)
    ho.set_defaults(run=_hook)

    no = sub.add_parser("node", help="DICOM node: C-STORE CT + RTSTRUCT in, plan, C-STORE RTPLAN/RTDOSE/RTSTRUCT out")
    no.add_argument("--config", type=Path, default=None, help="TOML or JSON file: access lists, TLS, limits, "
                    "retention, destination (docs/node.md); options given here override it")
    no.add_argument("--port", type=int, default=None, help="port to listen on (default 11112; 0: any free port)")
    no.add_argument("--aet", default=None, help="the node's AE title, callers must address it (default RTAUTOPLAN)")
    no.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    no.add_argument("--dest", nargs=3, metavar=("HOST", "PORT", "AET"), default=None,
                    help="storage SCP the plans are sent to (default: keep them in WORKDIR/outbox)")
    no.add_argument("--workdir", type=Path, default=None, help="holds journal.sqlite, incoming/ and outbox/ "
                    "(default ./rtautoplan-node)")
    no.add_argument("--quiet-s", type=float, default=None, help="plan a study when no object arrived for this long "
                    "(default 10)")
    no.add_argument("--send-unacceptable", action="store_true",
                    help="also send plans that fail the clinical gate (default: hold them in the outbox, held.json)")
    no.add_argument("--replan-unchanged", action="store_true",
                    help="plan and send a study again when it is re-sent unchanged (default: answer from the journal)")
    _add_cache_options(no)
    _add_plan_options(no, engine=True)
    no.set_defaults(run=_node)

    au = sub.add_parser("audit", help="verify a plan log's hashes (log, input files, weights) and print the "
                        f"decision trail (exit {4} on a mismatch)")
    au.add_argument("log", type=Path, help="plan_log.json, or the output folder holding it")
    au.add_argument("--case", type=Path, default=None, help="the case folder, when it moved since planning")
    au.set_defaults(run=_audit)

    rv = sub.add_parser("review", help="suggest mode on a local web page: the planner's top-k with DVH what-ifs, "
                        "accept / edit / reject, then the plan (UNAPPROVED)")
    rv.add_argument("case", type=Path, help="folder with the CT series, RTSTRUCT and optional prescription.json")
    rv.add_argument("-o", "--output", type=Path, required=True, help="folder for the plan, dose, report and log")
    rv.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    rv.add_argument("-k", type=int, default=3, help="suggestions per step")
    _add_plan_options(rv, engine=True)
    rv.set_defaults(run=_review)

    op = sub.add_parser("ope", help="off-policy evaluation: a planner's value from logged runs (IS, WIS, "
                        "per-decision IS, doubly robust) with bootstrap CIs")
    op.add_argument("--logs", type=Path, required=True, help="folder of logged runs (plan_log.json / episode logs "
                    "with μ(a|s) and the state per step)")
    op.add_argument("--policy", required=True, help="the planner to evaluate (acer)")
    op.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% CIs")
    op.add_argument("--measured", type=Path, default=None, help="folder of runs of the policy itself: its measured "
                    "value, printed beside the estimates")
    op.add_argument("--horizon", type=int, default=None, metavar="T", help="only the first T steps of each run "
                    "(default: all)")
    op.add_argument("--value", choices=["return", "kept"], default="return", help="return: Σ Δψ (final − initial "
                    "score); kept: the gain of the best plan so far, the plan the loop keeps")
    op.add_argument("--json", type=Path, default=None, help="also write the results here")
    op.set_defaults(run=_ope)

    ca = sub.add_parser("cache", help="the dose-influence cache: info (folder, entries, size, cap) or clear")
    ca.add_argument("action", choices=["info", "clear"])
    _add_cache_options(ca)
    ca.set_defaults(run=_cache)

    px = sub.add_parser("phoenix-server", help="the PHOENIX-like carbon-ion TPS as an HTTP/JSON server "
                        "(docs/phoenix_api.md)")
    from rtautoplan.adapters.phoenix_api import http_api

    http_api.add_arguments(px)
    px.set_defaults(run=http_api.run)
    return p


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, default=None, help="dose-influence cache folder (default "
                   "$RTAUTOPLAN_CACHE, else ~/.cache/rtautoplan/dij)")
    p.add_argument("--cache-max-mb", type=float, default=None, help="cache size cap; least recently used entries "
                   "are removed above it (default $RTAUTOPLAN_CACHE_MAX_MB, else 2048)")


def _add_plan_options(p: argparse.ArgumentParser, engine: bool = False) -> None:
    """The options every planning command shares (for ``hook``: defaults for what a request leaves out);
    ``engine`` adds the dose grid: --dose-grid-mm (its own grid, default 3 mm) or --dose-grid-factor."""
    p.add_argument("--site", choices=SITES, default=None, help="default: prescription.json's site, else from the "
                   "ROIs (prostate, hn, liver, else generic); the choice is printed")
    p.add_argument("--modality", choices=MODALITIES, default="photon")
    p.add_argument("--adapter", default=None, help="TPS adapter (default: the setup's; see rtautoplan.adapters)")
    p.add_argument("--policy", default=None, help="planner (default: the setup's; see rtautoplan.policies)")
    p.add_argument("--max-steps", type=int, default=None, help="closed-loop steps (default: the setup's; 0: the "
                   "initial plan)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial parameters")
    p.add_argument("--unknown-rois", choices=["error", "keep"], default="error",
                   help="a ROI name with no TG-263 match: stop with the fix (default), or keep it unplanned")
    p.add_argument("--conservative", type=int, default=None, metavar="K", help="conservative mode: only actions "
                   "the planner and its other trained seeds (else the rule-based planner) all rank in their top K; "
                   "a refused first choice falls back to the next agreed one (discrete-action planners)")
    if engine:
        p.add_argument("--dose-grid-factor", type=int, nargs=3, default=None, metavar=("K", "J", "I"),
                       help="dose grid as a block of CT voxels (e.g. 2 4 4: coarse and fast); not with --dose-grid-mm")
        p.add_argument("--dose-grid-mm", type=float, nargs="+", default=None, metavar="MM",
                       help="dose grid spacing in mm, one value or three (slice, row, column); its own grid over "
                            "the External (default 3 mm for the in-house engines; trained planners keep their grid)")
        p.add_argument("--beamlet-mm", type=float, default=None, metavar="MM",
                       help="photon beamlet side and MLC leaf width in mm at the isocentre (default 5; 2.5: a "
                            "high-definition MLC, 4x the dose-influence matrix)")


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
