"""Our DVH metrics against an independent implementation, dicompyler-core, on sample_data/hn01.

The dose (``estimate_dose``) and structures go through our RTDOSE and RTSTRUCT writers and
dicompyler-core reads them back, so this also checks that the two files put dose and contours in
the same place (a half-voxel or orientation error in the RTDOSE would shift every DVH). For the
structures of at least 5 cm³, Dmean must agree within 1 % and D95 within 2 %; dicompyler's D95 is
read off its cumulative DVH by interpolation, as its ``.D95`` statistic does not interpolate
(benchmarks/bench_dvh.py explains; it also reports the small structures).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pydicom.dicomio
import pytest

from rtautoplan import dvh

pytestmark = pytest.mark.tools

# dicompyler-core 0.5.6 imports pydicom.dicomio.read_file, which pydicom 3 removed: alias it first.
if not hasattr(pydicom.dicomio, "read_file"):
    pydicom.dicomio.read_file = pydicom.dcmread
pytest.importorskip("dicompylercore")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dvh.py"
LARGE_CM3 = 5.0


def _bench():
    spec = importlib.util.spec_from_file_location("bench_dvh", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    bench = _bench()
    case, dose, rtstruct, rtdose = bench.prepare(tmp_path_factory.mktemp("hn01"))
    return bench, case, dose, rtstruct, rtdose


def test_large_structures_agree_with_dicompyler(written):
    bench, case, dose, rtstruct, rtdose = written
    vox = case.grid.voxel_volume_cm3
    checked, failures = 0, []
    for number, s in enumerate(case.structures, start=1):
        if s.volume_cm3(case.grid) < LARGE_CM3:
            continue
        ref = bench.dicompyler_dvh(rtstruct, rtdose, number)
        ours = dvh.metrics(dose.gy, s.mask, vox)
        ref_d95 = bench.curve_d(ref, 95.0)
        if abs(ref.volume - ours["volume_cm3"]) > 1e-6 * ours["volume_cm3"] + 1e-3:
            failures.append(f"{s.name}: volume {ours['volume_cm3']:.3f} vs dicompyler {ref.volume:.3f} cm³")
        if abs(ours["Dmean"] - ref.mean) > 0.01 * ref.mean:
            failures.append(f"{s.name}: Dmean {ours['Dmean']:.3f} vs dicompyler {ref.mean:.3f} Gy")
        if not abs(ours["D95"] - ref_d95) <= 0.02 * ref_d95:
            failures.append(f"{s.name}: D95 {ours['D95']:.3f} vs dicompyler {ref_d95:.3f} Gy")
        checked += 1
    assert checked >= 20, checked  # hn01 has 26 structures of ≥ 5 cm³
    assert not failures, "\n".join(failures)


def test_curve_d95_on_a_known_dvh(written):
    """curve_d on dicompyler's DVH of a uniform-dose target gives the dose (dicompyler-core 0.5.6's
    `.D95` gives 0 Gy there)."""
    bench, case, dose, rtstruct, rtdose = written
    number = [s.name for s in case.structures].index("CTV_7000") + 1
    ref = bench.dicompyler_dvh(rtstruct, rtdose, number)
    assert np.isclose(bench.curve_d(ref, 95.0), 70.0, atol=0.011)
