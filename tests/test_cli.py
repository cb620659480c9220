"""The command line: the structures job on the sample, and bad input as one line, no traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

from rtautoplan.cli import main

SAMPLE = Path(__file__).parent.parent / "sample_data" / "hn01"


def test_structures_writes_rtstruct_png_objectives_and_prints_the_table(tmp_path, capsys):
    assert main(["structures", str(SAMPLE), "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("PTV_7000", "zGap_6000", "zRing_5400", "Parotid_L", "SpinalCord"):
        assert name in printed
    assert "Dmin 71.4 Gy" in printed  # CTV_7000: 1.02 × 70 Gy, SPEC §2.6
    rs = pydicom.dcmread(tmp_path / "RS_rtautoplan.dcm")
    ct = pydicom.dcmread(next(SAMPLE.glob("CT_*.dcm")), stop_before_pixels=True)
    assert rs.Modality == "RTSTRUCT"
    assert rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert rs.StudyInstanceUID == ct.StudyInstanceUID
    names = {roi.ROIName for roi in rs.StructureSetROISequence}
    assert {"External", "CTV_7000", "PTV_7000", "zGap_7000", "zRing_7000", "Bone_Mandible"} <= names
    assert (tmp_path / "structures.png").stat().st_size > 10_000
    assert (tmp_path / "objectives.json").exists()


def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys):
    case = tmp_path / "case"
    shutil.copytree(SAMPLE, case)
    for path in sorted(case.glob("CT_*.dcm"))[10:12]:
        path.unlink()
    assert main(["structures", str(case), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "missing" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "RS_rtautoplan.dcm").exists()


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rtautoplan.cli", "structures", str(tmp_path / "nothing"),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert str(tmp_path / "nothing") in result.stderr


def test_beamlet_option_reaches_the_photon_adapter_or_is_refused(capsys, tmp_path):
    """--beamlet-mm 2.5 becomes the adapter's beamlet_mm beside the dose grid; 0 is an input error."""
    from rtautoplan.cli import _plan_options, parser

    args = parser().parse_args(["benchmark", "tg119", "--beamlet-mm", "2.5", "--dose-grid-mm", "2"])
    assert _plan_options(args).adapter_options == {"beamlet_mm": 2.5, "dose_grid_mm": 2.0}
    assert main(["benchmark", "tg119", "--cases", "cshape_hard", "--beamlet-mm", "0", "-o", str(tmp_path)]) != 0
    assert "--beamlet-mm 0" in capsys.readouterr().err
