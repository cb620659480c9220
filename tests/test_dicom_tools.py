"""Independent checkers: dicom3tools' dciodvfy (IOD conformance) and dcmtk's dcmdump (parsing).

dciodvfy warnings we leave: "Missing attribute or value that would be needed to build DICOMDIR -
Study Date / Study Time" when the input had none (StudyDate and StudyTime are type 2, empty is
valid; we do not invent a study date for a patient).
"""

import subprocess

import pytest

from rtautoplan.case import Role, Structure
from rtautoplan.dicom.read import write_case
from rtautoplan.dicom.rtstruct import write_rtstruct

pytestmark = pytest.mark.tools


@pytest.fixture
def written(tmp_path, small_case):
    paths = write_case(small_case, tmp_path / "case")
    generated = Structure("zGap_6000", small_case.structure("CTV_6000").mask, Role.OTHER)  # roi_name "": AUTOMATIC
    aux = write_rtstruct(small_case.with_structures(small_case.structures + (generated,)), tmp_path / "aux.dcm")
    return {"CT": paths[0], "RTSTRUCT": paths[-2], "RTSTRUCT with a generated ROI": aux}


def run(*command):
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("what", ["CT", "RTSTRUCT", "RTSTRUCT with a generated ROI"])
def test_dciodvfy_finds_no_error(written, tool, what):
    result = run(tool("/usr/bin/dciodvfy"), str(written[what]))
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert not errors, output
    assert ("CTImage" if what == "CT" else "RTStructureSet") in output  # it recognised the IOD


@pytest.mark.parametrize("what", ["CT", "RTSTRUCT"])
def test_dcmdump_parses(written, tool, what):
    result = run(tool("/usr/bin/dcmdump"), "-E", str(written[what]))
    assert result.returncode == 0, result.stderr
    assert "ROIContourSequence" in result.stdout if what == "RTSTRUCT" else "PixelData" in result.stdout
