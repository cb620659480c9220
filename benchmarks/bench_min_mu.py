"""The 3 MU minimum per spot (SPEC §2.1) inside the proton optimisation against the unconstrained optimum and
the former delete-afterwards rule (issue 13), on hn01 (seed-002 objectives) and pyRadPlan's TG-119.

    .venv/bin/python benchmarks/bench_min_mu.py --tg119 NPZ [--no-results]

``InHouseProton`` (3 fields, 5 mm spots, dose grid (1, 2, 2) on hn01 and (2, 2, 2) on TG-119, the objectives of
``bench_pyradplan`` on TG-119), one core. Two stopping settings: the adapter's defaults (200 iterations per
solve, solve_lbfgs's default rule) and a tight one (1 000 iterations, relative rule 1e-4 over 10 iterations).
For each: the unconstrained plan (``min_mu=0``), the former rule (``min_mu_method="delete"``) and the default
(``"bounded"``): objective, D98 of every target (CT grid, Gy(RBE)), spots on, spots switched off, iterations of
all solves, wall seconds. TG-119 is the export of ``bench_pyradplan.export_case`` (``--tg119``; written by
``.bench-venv/bin/python -c "from bench_pyradplan import export_case; export_case(Path(NPZ))"`` in benchmarks/, since
the peer env has pyRadPlan but not the adapters' dependencies); without it the script exports it itself, which
needs pyRadPlan. Writes the section "Minimum MU per spot (issue 13)" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from common import machine, write_results  # noqa: E402

SECTION = "## Minimum MU per spot (issue 13)"
SETTINGS = {"default (200 it, default rule)": dict(max_iter=200, solver_options={}),
            "tight (1000 it, rule 1e-4 relative)": dict(max_iter=1000, solver_options=dict(tol=1e-4, f_scale=0.0))}


def problems(tg119: Path):
    """(name, case, beams, objectives, dose grid factor) of hn01 and TG-119."""
    from bench_pyradplan import OBJECTIVES, beams, load_case
    from rtautoplan.phantom import make_case
    from rtautoplan.plan import Objective, ObjectiveKind
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    hn = apply_rules(make_case("hn", 1), "hn")
    yield "hn01", hn, None, objectives_for(hn, np.random.default_rng(0)), (1, 2, 2)
    case, iso = load_case(tg119)
    yield ("TG-119", case, beams("proton", iso), [Objective(s, ObjectiveKind[k], d, w) for s, k, d, w in OBJECTIVES],
           (2, 2, 2))


def run(case, beams, objectives, factor, cache, **options) -> dict:
    """One InHouseProton plan: objective, target D98, spots, iterations, seconds."""
    from rtautoplan.adapters.inhouse_proton import InHouseProton
    from rtautoplan.dvh import d98

    tps = InHouseProton(cache_dir=cache, dose_grid_factor=factor, **options)
    tps.prepare(case, beams)
    t = time.perf_counter()
    dose = tps.optimize(objectives)
    seconds = time.perf_counter() - t
    r = tps.last_run
    x = np.concatenate(tps.plan().weights)
    targets = [case.structure(lv.target).mask for lv in case.prescription.levels]
    return {"f": r.value_final, "d98": [d98(dose.gy, mask) for mask in targets],
            "on": int(np.count_nonzero(x)), "spots": int(x.size), "off": r.removed, "forced": r.forced,
            "iterations": r.iterations, "seconds": seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tg119", type=Path)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("RTAUTOPLAN_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tg119 = args.tg119
        if tg119 is None:
            from bench_pyradplan import export_case

            tg119 = Path(tmp) / "tg119.npz"
            export_case(tg119)
        info = machine()
        lines = [SECTION, "", f"`.venv/bin/python benchmarks/bench_min_mu.py --tg119 NPZ`, {info['date']}, one "
                 f"engine thread, load {info['load']}. Threshold 3 MU per spot and fraction "
                 "(course MU 3 × fractions). "
                 "f: the adapter's RBE-weighted loss; D98 on the CT grid, Gy(RBE), one per target; off: spots on in "
                 "the unconstrained solution and 0 at the end; forced: removed without re-optimisation.", "",
                 "| case | setting | rule | f | f / unconstrained | D98 (Gy(RBE)) | spots on | off (forced) | "
                 "iterations | s |", "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for name, case, beams, objectives, factor in problems(tg119):
            for setting, options in SETTINGS.items():
                free = run(case, beams, objectives, factor, Path(tmp), min_mu=0.0, **options)
                rows = [("unconstrained", free)]
                for method in ("delete", "bounded"):
                    rows.append((method, run(case, beams, objectives, factor, Path(tmp), min_mu_method=method,
                                             **options)))
                for rule, r in rows:
                    d98s = " / ".join(f"{v:.2f}" for v in r["d98"])
                    lines.append(f"| {name} | {setting} | {rule} | {r['f']:.4g} | {r['f'] / free['f']:.3f} | {d98s} "
                                 f"| {r['on']} of {r['spots']} | {r['off']} ({r['forced']}) | {r['iterations']} | "
                                 f"{r['seconds']:.1f} |")
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_results:
        write_results(text)


if __name__ == "__main__":
    main()
