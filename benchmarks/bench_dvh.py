"""DVH benchmark: rtautoplan.dvh against dicompyler-core on sample_data/hn01.

    python benchmarks/bench_dvh.py [--repeat N] [--no-results]

The case is read and its structures resolved (``structures.apply_rules``); the dose is
``structures.objectives.estimate_dose`` (a smooth, distance-based dose, Rx inside each target level,
falling off exponentially outside), Gy on the CT grid. The script writes RTSTRUCT (every structure,
as drawn or generated: ``Structure.mask``) and RTDOSE to a temporary folder, then for every ROI times

* dicompyler-core ``dvhcalc.get_dvh(rtstruct_path, rtdose_path, roi_number)``: it parses both files,
  rasterises the contours on the dose grid (voxel centres inside the polygon, even-odd per slice) and
  histograms the dose in 1 cGy bins;
* rtautoplan, in memory: ``dvh.metrics`` + ``dvh.dvh`` (0.01 Gy bins) on the dose array and the mask;
* rtautoplan, from the same files: ``read_rtdose`` + ``read_rtstruct`` + ``contours_to_mask`` + the
  above, the like-for-like counterpart of get_dvh (file parsing amortised as dicompyler does not:
  it re-reads both files for every ROI, so the file reads are timed once and shared over ROIs).

and compares Dmean (≤ 1 %) and D95 (≤ 2 %; dicompyler's D95 read off its cumulative curve by linear
interpolation, ``curve_d``, since its ``.D95`` statistic does not interpolate: see NOTES). It prints a
table and a summary, and replaces the "DVH" section of benchmarks/RESULTS.md (machine, versions, date, numbers).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.dicomio

# dicompyler-core 0.5.6 imports ``from pydicom.dicomio import read_file``, which pydicom 3 removed
# (falling back to the pydicom 0.9 ``dicom`` package, which is absent). Alias the old name to
# dcmread before importing it; read_file(fp, defer_size=…, force=…, stop_before_pixels=…) and
# dcmread take the same arguments.
if not hasattr(pydicom.dicomio, "read_file"):
    pydicom.dicomio.read_file = pydicom.dcmread
if not hasattr(pydicom, "read_file"):
    pydicom.read_file = pydicom.dcmread

from dicompylercore import dvhcalc  # noqa: E402  (after the pydicom shim)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from rtautoplan import dvh as rdvh  # noqa: E402
from rtautoplan.dicom.contours import contours_to_mask  # noqa: E402
from rtautoplan.dicom.read import read_case  # noqa: E402
from rtautoplan.dicom.rtdose import read_rtdose, write_rtdose  # noqa: E402
from rtautoplan.dicom.rtstruct import read_rtstruct, write_rtstruct  # noqa: E402
from rtautoplan.plan import Dose  # noqa: E402
from rtautoplan.structures.objectives import estimate_dose  # noqa: E402
from rtautoplan.structures.rules import apply_rules  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # imported from elsewhere than the script's folder
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, best_of, machine, write_results  # noqa: E402  (after the path entry)

CASE = ROOT / "sample_data" / "hn01"
DMEAN_TOL, D95_TOL = 0.01, 0.02  # relative
LARGE_CM3 = 5.0  # "large" structures: the agreement the test (tests/test_dvh_dicompyler.py) asserts


def prepare(folder: Path):
    """hn01 with resolved structures, its estimated dose, and the RTSTRUCT/RTDOSE written to ``folder``."""
    case = apply_rules(read_case(CASE))
    dose = Dose(case.grid, estimate_dose(case))
    rtstruct = write_rtstruct(case, folder / "RTSTRUCT.dcm", uid_seed="bench-dvh")
    rtdose = write_rtdose(case, dose, folder / "RTDOSE.dcm", uid_seed="bench-dvh")
    return case, dose, rtstruct, rtdose


def dicompyler_dvh(rtstruct: Path, rtdose: Path, roi_number: int):
    return dvhcalc.get_dvh(str(rtstruct), str(rtdose), roi_number)


def curve_d(dvh, percent: float) -> float:
    """D<percent> (Gy) read off a dicompyler cumulative DVH by linear interpolation: the dose where the
    curve crosses ``percent`` % of the volume. Not ``dvh.D95``: that statistic returns the lower edge of
    the bin whose volume is *nearest* 95 % without interpolating (a voxel's dose step off in a gradient),
    and 0 Gy when ≥ 5 % of the volume shares one 1 cGy bin (a uniform target: every bin up to it is at
    100 %, equally far from 95 %, and argmin takes the first)."""
    volume = dvh.relative_volume.counts  # % of the volume receiving ≥ bins[i]
    edges = dvh.bins
    if volume.size == 0 or volume[0] < percent:
        return float("nan")
    i = int(np.flatnonzero(volume >= percent)[-1])
    below = volume[i + 1] if i + 1 < volume.size else 0.0
    return float(edges[i] + (volume[i] - percent) / (volume[i] - below) * (edges[i + 1] - edges[i]))


def compare(case, dose, rtstruct: Path, rtdose: Path, repeat: int = 1) -> list[dict]:
    """One row per ROI (ROI number = position in case.structures + 1, as write_rtstruct numbers them)."""
    vox = case.grid.voxel_volume_cm3
    # Our file path, shared part: parse both files once (dicompyler re-parses them for every ROI).
    t0 = time.perf_counter()
    back = read_rtdose(rtdose)
    rois = read_rtstruct(rtstruct).rois
    t_read = time.perf_counter() - t0
    rows = []
    for number, s in enumerate(case.structures, start=1):
        t_dc = best_of(lambda: dicompyler_dvh(rtstruct, rtdose, number), max(repeat, 1))[0]
        ref = dicompyler_dvh(rtstruct, rtdose, number)
        t_ours = best_of(lambda: (rdvh.metrics(dose.gy, s.mask, vox), rdvh.dvh(dose.gy, s.mask, voxel_volume_cm3=vox)),
                         max(repeat, 1))[0]
        ours = rdvh.metrics(dose.gy, s.mask, vox)
        t0 = time.perf_counter()
        mask = contours_to_mask(rois[number - 1].contours, back.grid, rois[number - 1].name)
        from_files = rdvh.metrics(back.gy, mask, back.grid.voxel_volume_cm3)
        rdvh.dvh(back.gy, mask, voxel_volume_cm3=back.grid.voxel_volume_cm3)
        t_files = time.perf_counter() - t0 + t_read / len(case.structures)
        empty = ref.volume == 0
        rows.append({
            "roi": s.name, "number": number, "voxels": int(s.mask.sum()), "cm3": ours["volume_cm3"],
            "dc_cm3": float(ref.volume), "same_mask": bool(np.array_equal(mask, s.mask)),
            "dmean": ours["Dmean"], "dc_dmean": float("nan") if empty else float(ref.mean),
            "d95": ours["D95"], "dc_d95": float("nan") if empty else curve_d(ref, 95.0),
            "dc_d95_stat": float("nan") if empty else float(ref.D95.value),
            "file_dmean": from_files["Dmean"],
            "t_dc": t_dc, "t_ours": t_ours, "t_files": t_files,
        })
    for r in rows:
        r["err_dmean"] = _rel(r["dmean"], r["dc_dmean"])
        r["err_d95"] = _rel(r["d95"], r["dc_d95"])
        r["ok"] = r["err_dmean"] <= DMEAN_TOL and r["err_d95"] <= D95_TOL
    return rows


def _rel(ours: float, ref: float) -> float:
    """|ours − ref| / ref; an absolute 0.01 Gy floor keeps near-zero doses from inflating it."""
    if not np.isfinite(ref):
        return float("inf")
    return abs(ours - ref) / max(abs(ref), 0.01)


def versions() -> dict[str, str]:
    """pydicom and dicompyler-core versions, for ``machine``."""
    import dicompylercore

    return {"pydicom": pydicom.__version__, "dicompyler-core": getattr(dicompylercore, "__version__", "?")}


def table(rows: list[dict]) -> Table:
    t = Table(title="DVH: rtautoplan vs dicompyler-core (hn01, estimate_dose)")
    for col in ("ROI", "voxels", "cm³", "Dmean Gy", "dc Dmean", "ΔDmean %", "D95 Gy", "dc D95", "ΔD95 %",
                "dc .D95", "dicompyler ms", "ours ms", "ours+files ms", "×"):
        t.add_column(col, justify="left" if col == "ROI" else "right")
    for r in rows:
        bad = "" if r["ok"] else "[red]"
        t.add_row(r["roi"], str(r["voxels"]), f"{r['cm3']:.2f}", f"{r['dmean']:.3f}", f"{r['dc_dmean']:.3f}",
                  f"{bad}{100 * r['err_dmean']:.2f}", f"{r['d95']:.3f}", f"{r['dc_d95']:.3f}",
                  f"{bad}{100 * r['err_d95']:.2f}", f"{r['dc_d95_stat']:.2f}", f"{1e3 * r['t_dc']:.1f}",
                  f"{1e3 * r['t_ours']:.2f}", f"{1e3 * r['t_files']:.1f}", f"{r['t_dc'] / r['t_ours']:.0f}")
    return t


def summary(rows: list[dict]) -> dict:
    t_dc, t_ours, t_files = (sum(r[k] for r in rows) for k in ("t_dc", "t_ours", "t_files"))
    large = [r for r in rows if r["cm3"] >= LARGE_CM3]
    return {"n": len(rows), "t_dc": t_dc, "t_ours": t_ours, "t_files": t_files,
            "ratio": t_dc / t_ours, "ratio_files": t_dc / t_files,
            "agree": sum(r["ok"] for r in rows), "large": len(large), "large_agree": sum(r["ok"] for r in large),
            "max_dmean": max(r["err_dmean"] for r in rows), "max_d95": max(r["err_d95"] for r in rows),
            "max_dmean_large": max(r["err_dmean"] for r in large), "max_d95_large": max(r["err_d95"] for r in large),
            "same_masks": all(r["same_mask"] for r in rows),
            "disagree": [r["roi"] for r in rows if not r["ok"]]}


def summary_line(s: dict) -> str:
    return (f"{s['n']} ROIs: dicompyler-core {s['t_dc']:.2f} s, rtautoplan {1e3 * s['t_ours']:.1f} ms in memory "
            f"({s['ratio']:.0f}× faster), {1e3 * s['t_files']:.0f} ms from the files ({s['ratio_files']:.0f}×); "
            f"Dmean within 1 % and D95 within 2 % for {s['agree']}/{s['n']} ROIs, "
            f"{s['large_agree']}/{s['large']} of those ≥ {LARGE_CM3:g} cm³")


def markdown(rows: list[dict], s: dict, m: dict) -> str:
    lines = [
        "## DVH",
        "",
        f"`python benchmarks/bench_dvh.py`, {m['date']}. Machine: {m['nproc']} × {m['cpu']}; Python {m['python']}, "
        f"numpy {m['numpy']}, pydicom {m['pydicom']}, dicompyler-core {m['dicompyler-core']}.",
        "",
        "sample_data/hn01 after `apply_rules` (every structure, drawn or generated), dose "
        "`estimate_dose(case)` on the CT grid (70 × 89 × 81, 3.0 × 2.5 × 2.5 mm), written as RTSTRUCT + RTDOSE. "
        "dicompyler-core: `dvhcalc.get_dvh(rtstruct, rtdose, roi)` (parses both files per call, 1 cGy bins). "
        "rtautoplan: `dvh.metrics` + `dvh.dvh` on the in-memory dose and mask; \"from files\" adds "
        "`read_rtdose`, `read_rtstruct` (once, shared over ROIs) and `contours_to_mask` per ROI.",
        "",
        f"**{summary_line(s)}.** Masks rasterised from the RTSTRUCT equal the case masks: "
        f"{'yes, every ROI' if s['same_masks'] else 'NO'}. Largest differences: Dmean {100 * s['max_dmean']:.2f} %, "
        f"D95 {100 * s['max_d95']:.2f} % (≥ {LARGE_CM3:g} cm³: {100 * s['max_dmean_large']:.2f} %, "
        f"{100 * s['max_d95_large']:.2f} %).",
        "",
        "| ROI | voxels | cm³ | Dmean Gy | dicompyler | Δ % | D95 Gy | dicompyler curve | Δ % | dicompyler `.D95` | "
        "dicompyler ms | ours ms | ours+files ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['roi']} | {r['voxels']} | {r['cm3']:.2f} | {r['dmean']:.3f} | {r['dc_dmean']:.3f} | "
                     f"{100 * r['err_dmean']:.2f} | {r['d95']:.3f} | {r['dc_d95']:.3f} | {100 * r['err_d95']:.2f} | "
                     f"{r['dc_d95_stat']:.2f} | "
                     f"{1e3 * r['t_dc']:.1f} | {1e3 * r['t_ours']:.2f} | {1e3 * r['t_files']:.1f} |")
    lines += ["", NOTES, ""]
    return "\n".join(lines)


NOTES = """Why the numbers differ where they do. Both sides select the same voxels: dicompyler tests dose-grid
voxel centres against each contour (matplotlib `contains_points`, XOR over a slice's contours), as our
`contours_to_mask` does, and the dose grid is the CT grid; the "masks equal" check above confirms it, so
there is no half-voxel or orientation offset between our RTDOSE and RTSTRUCT. What remains is the
statistics. dicompyler histograms the dose in 1 cGy bins and takes Dmean from the bin centres (≤ 0.005 Gy
off). Its `.D95` statistic is the lower edge of the bin whose cumulative volume is *nearest* 95 %, not
interpolated (a "TODO" in dicompyler-core 0.5.6): in a gradient it lands on a neighbouring voxel's dose
(Parotid_L: 41.36 against 42.38 Gy, both actual voxel doses), and it is **0 Gy** whenever ≥ 5 % of the
volume shares one 1 cGy bin (uniform targets, Gaps, the few-voxel lenses and cochleae: every bin below is
at 100 %, equally far from 95 %, and `argmin` takes the first). So the D95 compared is read off
dicompyler's own cumulative curve by linear interpolation (`curve_d`); `.D95` is shown for reference.
Ours interpolates between sorted voxel doses (Hazen positions, `rtautoplan.dvh`); the two definitions
differ by up to half a voxel of volume, which on ROIs of a few dozen voxels in a gradient (OpticChiasm,
Joint_TM_R, Lens_R) is 1–2 % of D95. dicompyler also gives a structure contoured on one slice zero
thickness (`CalculatePlaneThickness`), hence zero volume and an empty DVH (NaN), and it re-reads and
re-decodes both files on every `get_dvh` call, which is most of its time: compare it with the
"ours+files" column for a like-for-like ratio."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="time each call this many times, keep the best")
    parser.add_argument("--no-results", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 160))
    with tempfile.TemporaryDirectory() as tmp:
        case, dose, rtstruct, rtdose = prepare(Path(tmp))
        rows = compare(case, dose, rtstruct, rtdose, args.repeat)
    s = summary(rows)
    console.print(table(rows))
    console.print(summary_line(s))
    if s["disagree"]:
        console.print(f"outside 1 %/2 %: {', '.join(s['disagree'])} (see the notes in {RESULTS.name})")
    if not args.no_results:
        write_results(markdown(rows, s, machine(**versions())))
        console.print(f"updated {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
