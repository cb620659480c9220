"""What the photon beam's edge and the beamlet size buy on a steep dose fall (issue 12, s4-tg119).

    .venv/bin/python benchmarks/bench_beamlet_penumbra.py [--case cshape_hard] [--max-steps 0]
                      [--variants old-5 new-5 new-2.5]

Plans one bundled TG-119 case (default: the hard C-shape, a 50 → 10 Gy fall in the 5 mm between the C and
its core) with the generic photon setup (9 fields, 3 mm dose grid, the rule-based planner; ``--max-steps
0``: the initial plan, no loop steps or goal rounds) once per engine variant, all in one process:

* ``old-5``: the beam model before s4 (σ_p = 2.16 mm + 0.00863·d: 80–20 % penumbra of a 1 × 20 cm² field
  3.75 mm at 1.5 cm, 4.87 mm at 10 cm), 5 mm beamlets;
* ``new-5``: the model fitted to the measured narrow-field penumbra (``physics.photon``), 5 mm beamlets;
* ``new-2.5``: the same with 2.5 mm beamlets and leaves (a high-definition MLC).

Per variant: every goal of the case's prescription on the delivered, normalised dose, the gate's
violation, the matrix size (non-zeros, MB) and the wall seconds of the plan, with the ratio to the first
variant (same run, same load). Prints a Markdown table (the load average with it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import load_average  # noqa: E402

OLD_MODEL = {"sigma_primary_mm": 2.16, "sigma_primary_per_mm": 0.00863}
VARIANTS = {"old-5": (OLD_MODEL, 5.0), "new-5": ({}, 5.0), "new-2.5": ({}, 2.5)}


def plan_variant(case_dir: Path, name: str, max_steps: int | None, cache: Path) -> dict:
    """Plan the case with variant ``name``; its goals, gate violation, matrix size and seconds."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.dicom.read import read_case
    from rtautoplan.goals import measure
    from rtautoplan.pipeline import IMRT_FIELDS, choose_site, plan_case
    from rtautoplan.physics.photon import SIX_MV

    changes, beamlet_mm = VARIANTS[name]
    tps = InHousePhoton(**IMRT_FIELDS, beamlet_mm=beamlet_mm, model=replace(SIX_MV, **changes), cache_dir=cache)
    case = read_case(case_dir)
    site, _ = choose_site(case)
    start = time.perf_counter()
    planned, result = plan_case(case, site=site, modality="photon", tps=tps, max_steps=max_steps)
    seconds = time.perf_counter() - start
    dose = result.plan.dose.gy
    goals = {str(g): measure(g, dose, planned) for g in planned.prescription.goals}
    matrix = tps._dij.matrix
    return {"variant": name, "goals": goals, "violation": result.gate.violation, "hot": result.gate.hotspots,
            "nnz": int(matrix.nnz), "mb": (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 1e6,
            "beamlets": int(matrix.shape[1]), "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="cshape_hard")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    case_dir = ROOT / "sample_data" / "tg119" / args.case
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name in args.variants:
            rows.append(plan_variant(case_dir, name, args.max_steps, Path(cache)))
            r = rows[-1]
            print(f"{name}: " + ", ".join(f"{g} → {m.value:.2f}" for g, m in r["goals"].items())
                  + f"; violation {r['violation']:.3f}; {r['seconds']:.0f} s", flush=True)
    goals = list(rows[0]["goals"])
    hot = [h.rule for h in rows[0]["hot"]]
    print(f"\n{args.case}, photon, max-steps {args.max_steps}; load {load_average()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| variant | " + " | ".join(goals + [f"gate: {h}" for h in hot])
          + " | gate violation | beamlets | matrix MB (×) | plan s (×) |")
    print("|---|" + "---:|" * (len(goals) + len(hot) + 4))
    base = rows[0]
    for r in rows:
        cells = [f"{r['goals'][g].value:.2f}" for g in goals] + [f"{h.value_gy:.2f}" for h in r["hot"]]
        print(f"| {r['variant']} | " + " | ".join(cells) + f" | {r['violation']:.3f} | {r['beamlets']} | "
              f"{r['mb']:.0f} ({r['mb'] / base['mb']:.2f}) | {r['seconds']:.0f} ({r['seconds'] / base['seconds']:.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
