"""Re-plan every case below a folder; one failure never stops the rest.

``replan_folder(root, out, **plan_options)`` finds the case folders below ``root`` by their DICOM
headers (a folder whose files hold a CT series and an RTSTRUCT; the deepest such folder, so a case
split into ``CT/`` and ``RS/`` sub-folders is one case), plans each into ``out/<relative path>/``
and writes ``out/batch_summary.csv`` row by row, so an interrupted run still leaves its summary.
A folder holding only half a case (CT without RTSTRUCT, or the reverse) is reported as an error,
not silently skipped: the physicist expected a plan from it.

Safety: input folders are only read. Each output folder is written whole and renamed into place
(``folder.write_folder``), so a crash never leaves a half-written output, and only a finished output
(its completion marker, ``folder.is_finished``) is kept unless ``force=True``; anything else in its
place is re-planned. A ROOT that is itself a case is planned into ``OUT/<ROOT's name>/`` (the
summary stays beside it).

One folder is planned by ``folder.plan_folder`` (read_case → plan_case → write_outputs), the
unit the other shells (``hook``, ``node``) share.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pydicom
from pydicom.errors import InvalidDicomError

from rtautoplan.errors import InputError
from rtautoplan.folder import PlanOptions, is_finished, plan_folder
from rtautoplan.outputs import LOG_FILE
from rtautoplan.plan import Step

log = logging.getLogger(__name__)

SUMMARY_FILE = "batch_summary.csv"
SUMMARY_COLUMNS = ("case", "status", "acceptable", "scoring", "initial_score", "final_score", "seconds", "message")
_HEADER_TAGS = ["SOPClassUID", "Modality", "ImagePositionPatient", "SeriesInstanceUID"]
_RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class BatchRow:
    """One line of the summary. status: ok, unacceptable (planned, written, but fails the clinical
    gate; message: its reasons), error or skipped (finished before, kept). acceptable: the gate's
    verdict ("yes"/"no"; "" when nothing was planned)."""

    case: str
    status: str
    output: Path
    scoring: str = ""
    initial: float | None = None
    final: float | None = None
    seconds: float = 0.0
    message: str = ""
    acceptable: str = ""


def dicom_kind(path: Path) -> str | None:
    """"ct", "rtstruct" or None (not DICOM, unreadable, or another object), from the header alone.
    The rule is read_case's: an image with a position that is not an RT object is a CT slice."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None  # read_case reports a broken file inside a case; here it only fails to mark one
    modality = str(ds.get("Modality", ""))
    if ds.get("SOPClassUID") == _RTSTRUCT_CLASS or modality == "RTSTRUCT":
        return "rtstruct"
    if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds and not modality.startswith("RT"):
        return "ct"
    return None


def find_cases(root: str | Path, exclude: Path | None = None) -> tuple[list[Path], dict[Path, set[str]]]:
    """(case folders, incomplete folders → what they hold) below ``root``, sorted; ``exclude`` (the
    output folder) is not searched. A case folder is the deepest folder whose files hold both."""
    root = Path(root).resolve()
    held: dict[Path, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if exclude is None or (here / d).resolve() != exclude)
        for name in filenames:
            kind = dicom_kind(here / name)
            if kind:
                held.setdefault(here, set()).add(kind)
    subtree: dict[Path, set[str]] = {}
    for folder, kinds in held.items():
        for up in (folder, *folder.parents):
            subtree.setdefault(up, set()).update(kinds)
            if up == root:
                break
    complete = {d for d, kinds in subtree.items() if kinds >= {"ct", "rtstruct"}}
    cases = sorted(d for d in complete if not any(o != d and o.is_relative_to(d) for o in complete))
    incomplete: dict[Path, set[str]] = {}
    for folder, kinds in held.items():
        if any(folder.is_relative_to(c) for c in cases):
            continue
        group = folder
        for up in folder.parents:
            if not up.is_relative_to(root) or any(c.is_relative_to(up) for c in cases):
                break
            group = up
        incomplete.setdefault(group, set()).update(kinds)
    return cases, dict(sorted(incomplete.items()))


def _incomplete_message(kinds: set[str]) -> str:
    if kinds == {"ct"}:
        return "holds a CT series but no RTSTRUCT. Export the structure set drawn on it into this folder"
    if kinds == {"rtstruct"}:
        return "holds an RTSTRUCT but no CT series. Export the CT images it was drawn on into this folder"
    return ("holds a CT series and an RTSTRUCT beside the case folder(s) below it. Move each case into a folder "
            "of its own")


def _check_out(root: Path, out: Path, cases: list[Path]) -> None:
    """The output folder must not be the input or inside a case: outputs would mix with (and, for
    read_case, become part of) the patient's data."""
    inside = [c for c in cases if out.is_relative_to(c)]
    if out == root or inside:
        raise InputError(f"output folder {out}", "is the input folder or inside a case folder"
                         + (f" ({inside[0]})" if inside else ""), "Write the outputs to a folder of their own")


@dataclass(frozen=True)
class Job:
    """One case to plan: its folder, its output folder and its name in the summary (the relative path)."""

    case_dir: Path
    target: Path
    name: str


def skipped_row(job: Job) -> BatchRow | None:
    """The row of a case whose output is finished (kept: not planned again), else None."""
    finished = job.target / LOG_FILE
    if not is_finished(job.target):
        return None
    try:
        done = json.loads(finished.read_text())
    except (OSError, ValueError):
        done = {}
    verdict = {True: "yes", False: "no"}.get(done.get("acceptable"), "")
    return BatchRow(job.name, "skipped", job.target, done.get("scoring", ""), done.get("initial score"),
                    done.get("final score"), 0.0, f"already planned ({finished} exists); --force re-plans it",
                    verdict)


def plan_row(job: Job, options: PlanOptions, on_step: Callable[[Step], None] | None = None) -> BatchRow:
    """Plan one case into its output folder and describe the outcome; every failure becomes an error row."""
    start = time.perf_counter()
    try:
        planned = plan_folder(job.case_dir, job.target, options, on_step=on_step)
    except InputError as error:
        return BatchRow(job.name, "error", job.target, seconds=round(time.perf_counter() - start, 2),
                        message=_one_line(str(error)))
    except Exception as error:  # batch boundary: one case's crash is that case's error row, the rest go on
        log.debug("case %s failed", job.name, exc_info=True)
        return BatchRow(job.name, "error", job.target, seconds=round(time.perf_counter() - start, 2),
                        message=_one_line(f"internal error: {type(error).__name__}: {error}"))
    r = planned.result
    return BatchRow(job.name, "ok" if r.acceptable else "unacceptable", job.target, r.score.system,
                    round(float(r.initial_score.total), 4), round(float(r.score.total), 4), round(planned.seconds, 2),
                    _one_line("; ".join(r.gate.reasons)), "yes" if r.acceptable else "no")


def run_serially(jobs: list[Job], options: PlanOptions, force: bool, status: Callable[[str], None]) -> Iterator[BatchRow]:
    """The default runner: one case after another in this process, rows in case order."""
    for job in jobs:
        row = None if force else skipped_row(job)
        if row is None:
            def on_step(step: Step, name=job.name) -> None:
                status(f"{name}: step {step.step}, score {step.score:.4g}")

            status(f"{job.name}: dose influence …")
            row = plan_row(job, options, on_step)
        yield row


def _one_line(text: str) -> str:
    return " ".join(text.split())


Runner = Callable[[list[Job], PlanOptions, bool, Callable[[str], None]], Iterable[BatchRow]]


def replan_folder(root: str | Path, out: str | Path, *, force: bool = False, console=None,
                  runner: Runner = run_serially, **plan_options) -> list[BatchRow]:
    """Plan every case below ``root`` into ``out/<relative path>/``; returns one row per case folder
    (and per incomplete folder), as written to ``out/batch_summary.csv``. ``plan_options`` are
    PlanOptions' fields; ``console`` is the rich Console of the progress bar (default: stderr).
    ``runner(jobs, options, force, status)`` plans the cases and yields their rows in any order
    (default: ``run_serially``; ``cluster.ray_runner`` runs each case as a Ray task); the summary is
    written row by row as they come, then in case order."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    options = PlanOptions(**plan_options)
    root, out = Path(root).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise InputError(str(root), "is not a folder", "Give the folder that holds the case folders")
    cases, incomplete = find_cases(root, exclude=out)
    _check_out(root, out, [*cases, *incomplete])
    out.mkdir(parents=True, exist_ok=True)
    rows: list[BatchRow] = []
    columns = (TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with (out / SUMMARY_FILE).open("w", newline="") as summary, \
            Progress(*columns, console=console or Console(stderr=True)) as progress:
        writer = csv.writer(summary)
        writer.writerow(SUMMARY_COLUMNS)
        task = progress.add_task("batch", total=len(cases) + len(incomplete), status="")

        def record(row: BatchRow) -> None:
            rows.append(row)
            writer.writerow(_csv_row(row))
            summary.flush()
            progress.update(task, advance=1, status=f"{row.case}: {row.status}")
            log.debug("%s: %s %s", row.case, row.status, row.message)

        for folder, kinds in incomplete.items():
            name = folder.relative_to(root).as_posix()
            record(BatchRow(name, "error", out / name, message=f"{folder}: {_incomplete_message(kinds)}"))
        jobs = [Job(c, out / n, n) for c in cases
                for n in [c.relative_to(root).as_posix() if c != root else root.name]]
        for row in runner(jobs, options, force, lambda text: progress.update(task, status=text)):
            record(row)
    order = {name: k for k, name in enumerate([r.case for r in rows[:len(incomplete)]] + [j.name for j in jobs])}
    ordered = sorted(rows, key=lambda r: order[r.case])
    if ordered != rows:
        _rewrite_summary(out / SUMMARY_FILE, ordered)
    return ordered


def _csv_row(row: BatchRow) -> list:
    return [row.case, row.status, row.acceptable, row.scoring, row.initial, row.final, row.seconds, row.message]


def _rewrite_summary(path: Path, rows: list[BatchRow]) -> None:
    """The summary in case order, replacing the one written as rows came (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUMMARY_COLUMNS)
        writer.writerows(_csv_row(r) for r in rows)
    os.replace(tmp, path)
