"""The batch re-planner: every case below a folder, one failure never stops the rest.

The root holds the prostate sample, a broken copy (a CT slice removed) in a sub-folder, a CT
series without its RTSTRUCT, and a folder of notes (not DICOM). Plans use a coarse in-house engine
and 2 steps, so the whole file stays well under 30 s.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.batch import SUMMARY_COLUMNS, SUMMARY_FILE, find_cases, replan_folder
from rtautoplan.cli import main
from rtautoplan.errors import InputError
from rtautoplan.folder import MARKER, check_output, clean_stale, is_finished, read_marker, write_folder
from rtautoplan.outputs import LOG_FILE

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"


def mixed_folder(root: Path, empty: bool = False) -> Path:
    """A batch root of one good case, one with a CT slice missing (clinic/broken), a CT without an
    RTSTRUCT, a folder of notes and, if ``empty``, an empty folder."""
    shutil.copytree(SAMPLE, root / "prostate01")
    shutil.copytree(SAMPLE, root / "clinic" / "broken")
    (root / "clinic" / "broken" / "CT_10.dcm").unlink()
    (root / "ct_only").mkdir()
    for ct in SAMPLE.glob("CT_*.dcm"):
        shutil.copy(ct, root / "ct_only")
    if empty:
        (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a case")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("cases"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dij")


@pytest.fixture(scope="module")
def batch(root, cache, tmp_path_factory):
    """One batch run: (output folder, rows)."""
    out = tmp_path_factory.mktemp("out")

    def fast():
        return InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30, cache_dir=cache)

    return out, replan_folder(root, out, tps=fast, max_steps=2)


def test_cases_are_found_by_header_and_half_cases_reported(root):
    cases, incomplete = find_cases(root)
    assert [c.relative_to(root).as_posix() for c in cases] == ["clinic/broken", "prostate01"]
    assert {f.relative_to(root).as_posix(): kinds for f, kinds in incomplete.items()} == {"ct_only": {"ct"}}


def test_good_case_is_planned_and_failures_are_rows(batch):
    out, rows = batch
    by_case = {r.case: r for r in rows}
    assert set(by_case) == {"prostate01", "clinic/broken", "ct_only"}
    good = by_case["prostate01"]
    assert good.status in ("ok", "unacceptable") and good.acceptable == ("yes" if good.status == "ok" else "no")
    assert good.scoring == "proknow9" and good.final >= good.initial
    assert {p.name for p in (out / "prostate01").iterdir()} >= {"RP_rtautoplan.dcm", "RD_rtautoplan.dcm",
                                                                 "RS_rtautoplan.dcm", "report.html", LOG_FILE}
    assert not list((out / "prostate01").glob(".partial-*")) and not list(out.glob(".prostate01.*"))
    assert is_finished(out / "prostate01")
    broken = by_case["clinic/broken"]
    assert broken.status == "error" and "slices missing" in broken.message and "\n" not in broken.message
    assert not (out / "clinic" / "broken").exists()
    assert by_case["ct_only"].status == "error" and "no RTSTRUCT" in by_case["ct_only"].message


def test_summary_csv_has_one_row_per_case(batch):
    out, rows = batch
    with (out / SUMMARY_FILE).open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == SUMMARY_COLUMNS
    assert [(t["case"], t["status"]) for t in table] == [(r.case, r.status) for r in rows]
    ok = next(t for t in table if t["status"] in ("ok", "unacceptable"))
    assert ok["acceptable"] == ("yes" if ok["status"] == "ok" else "no")
    assert float(ok["final_score"]) >= float(ok["initial_score"]) and float(ok["seconds"]) > 0


def test_finished_output_is_kept_unless_forced(batch, root, cache, monkeypatch):
    out, _ = batch
    log = out / "prostate01" / LOG_FILE
    before = log.stat().st_mtime_ns
    again = {r.case: r for r in replan_folder(root, out, max_steps=2)}
    assert again["prostate01"].status == "skipped" and "--force" in again["prostate01"].message
    assert log.stat().st_mtime_ns == before
    monkeypatch.setenv("RTAUTOPLAN_CACHE", str(cache))
    code = main(["batch", str(root), "-o", str(out), "--force", "--max-steps", "1", "--dose-grid-factor", "2", "4", "4"])
    assert code == 2  # the broken cases are bad input; the good one was re-planned
    assert log.stat().st_mtime_ns != before
    assert sorted(p.name for p in SAMPLE.iterdir()) == sorted(p.name for p in (root / "prostate01").iterdir())


def test_output_inside_a_case_is_refused(root):
    with pytest.raises(InputError, match="inside a case folder"):
        replan_folder(root, root / "prostate01" / "plans")
    with pytest.raises(InputError, match="is the input folder"):
        replan_folder(root, root)


def _write(names):
    def write(tmp):
        for name in names:
            (tmp / name).write_text(name)
        return {name: tmp / name for name in names}
    return write


def test_outputs_are_replaced_as_a_whole_or_not_at_all(tmp_path):
    out = tmp_path / "plans" / "case"
    files = write_folder(out, _write(["RP.dcm", "RD.dcm"]), {"input": "a"})
    assert files == {"RP.dcm": out / "RP.dcm", "RD.dcm": out / "RD.dcm"} and is_finished(out)
    write_folder(out, _write(["RP.dcm"]), {"input": "b"})
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "RP.dcm"]  # nothing of the old output is left

    def crash(tmp):
        (tmp / "RP.dcm").write_text("half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        write_folder(out, crash, {})
    assert (out / "RP.dcm").read_text() == "RP.dcm" and read_marker(out)["input"] == "b"
    assert sorted(p.name for p in out.parent.iterdir()) == ["case"]
    dead = out.parent / ".case.partial-999999999-abcd"  # what a kill -9 leaves: removed by the next run
    dead.mkdir()
    assert clean_stale(out.parent) == [dead] and not dead.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_folder(tmp_path / "file", _write(["RP.dcm"]), {})


def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("the physicist's notes")
    with pytest.raises(InputError, match="holds other files"):
        check_output(tmp_path)
    check_output(tmp_path / "new")  # a new folder, an empty one, or an earlier output are fine
    write_folder(tmp_path / "plan", _write(["RP.dcm"]), {})
    check_output(tmp_path / "plan")
