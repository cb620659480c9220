"""The file-exchange TPS: the in-house engine stands in for an external TPS across a folder."""

import threading

import numpy as np
import pytest

from rtautoplan.adapters.base import check_tps
from rtautoplan.adapters.dicom_export import DicomExport, serve
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.dvh import d_percent, dmean
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules


@pytest.fixture
def planning_case(small_case):
    case = apply_rules(small_case, site="hn")
    return case, objectives_for(case, np.random.default_rng(0))


@pytest.fixture
def far_side(planning_case, tmp_path):
    """An in-house engine answering requests in tmp_path/exchange from a background thread."""
    case, _ = planning_case
    done = threading.Event()
    engine = InHousePhoton(n_beams=5, dose_grid_factor=1, cache_dir=tmp_path / "dij", max_iter=60)
    thread = threading.Thread(target=serve, args=(tmp_path / "exchange", case, engine, done.is_set), daemon=True)
    thread.start()
    yield tmp_path / "exchange"
    done.set()
    thread.join(timeout=10)


def test_dicom_export_conforms(planning_case, far_side):
    case, objectives = planning_case
    check_tps(DicomExport(far_side, n_beams=5, timeout_s=120), case, objectives)


def test_same_objectives_same_dvh_through_files_and_directly(planning_case, far_side, tmp_path):
    """Shared physics: DVH metrics through the folder equal the direct engine's within 0.5 %
    (the only difference is the RTDOSE round trip: 32-bit quantisation, far below that)."""
    case, objectives = planning_case
    via_files = DicomExport(far_side, n_beams=5, timeout_s=120)
    via_files.prepare(case)
    direct = InHousePhoton(n_beams=5, dose_grid_factor=1, cache_dir=tmp_path / "dij", max_iter=60)
    direct.prepare(case)
    a, b = via_files.optimize(objectives), direct.optimize(objectives)
    for name in ("CTV_6000", "SpinalCord", "Esophagus"):
        mask = case.structure(name).mask
        assert dmean(a.gy, mask) == pytest.approx(dmean(b.gy, mask), rel=5e-3), name
        assert d_percent(a.gy, mask, 95) == pytest.approx(d_percent(b.gy, mask, 95), rel=5e-3, abs=0.05), name
    assert (far_side / case.case_id / "case" / "prescription.json").exists()


def test_no_answer_times_out_with_a_clear_error(planning_case, tmp_path):
    case, objectives = planning_case
    tps = DicomExport(tmp_path / "nobody", n_beams=5, timeout_s=0.3)
    tps.prepare(case)
    with pytest.raises(RuntimeError, match="no result.json .* after 0.3 s"):
        tps.optimize(objectives)


def test_far_side_failure_comes_back_as_an_error(planning_case, tmp_path):
    case, objectives = planning_case

    class Failing(InHousePhoton):
        def optimize(self, objectives):
            raise ValueError("licence server unreachable")

    done = threading.Event()
    engine = Failing(n_beams=5, dose_grid_factor=1, cache_dir=tmp_path / "dij")
    thread = threading.Thread(target=serve, args=(tmp_path / "x", case, engine, done.is_set), daemon=True)
    thread.start()
    try:
        tps = DicomExport(tmp_path / "x", n_beams=5, timeout_s=60)
        tps.prepare(case)
        with pytest.raises(RuntimeError, match="licence server unreachable"):
            tps.optimize(objectives)
    finally:
        done.set()
        thread.join(timeout=10)
