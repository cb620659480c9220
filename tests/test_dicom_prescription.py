"""prescription.json validation and prescriptions from target names."""

import json

import pytest

from rtautoplan.case import DoseLevel, Prescription
from rtautoplan.dicom.prescription import (PrescriptionFile, Target, prescribe, read_prescription_file,
                                           write_prescription)
from rtautoplan.errors import InputError
from rtautoplan.structures.names import parse


def targets(*roi_names, mapping=None):
    mapping = mapping or {}
    return [Target(n, mapping.get(n, n), parse(mapping.get(n, n))) for n in roi_names]


def from_json(tmp_path, data):
    path = tmp_path / "prescription.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return read_prescription_file(path)


def test_levels_from_names_and_conventional_fractions():
    rx, resolved = prescribe(targets("CTV_7000", "CTV 54Gy", "PTV70", "GTV"), PrescriptionFile())
    assert rx == Prescription((DoseLevel("CTV_7000", 70.0), DoseLevel("CTV_5400", 54.0)), 35)
    assert resolved == {"CTV_7000": ("CTV_7000", 70.0), "CTV 54Gy": ("CTV_5400", 54.0),
                        "PTV70": ("PTV_7000", 70.0), "GTV": ("GTV", None)}


def test_without_ctv_doses_any_target_with_a_dose_is_a_level():
    rx, _ = prescribe(targets("PTV_6000", "GTV"), PrescriptionFile())
    assert rx.levels == (DoseLevel("PTV_6000", 60.0),) and rx.fractions == 30


def test_json_levels_name_doseless_targets(tmp_path):
    rx_file = from_json(tmp_path, {"fractions": 33, "levels": [{"target": "CTV_High", "dose_gy": 66},
                                                               {"target": "CTV_5400", "dose_gy": 54}]})
    rx, resolved = prescribe(targets("CTV_High", "CTV_5400", "CTV_5000"), rx_file)
    assert resolved["CTV_High"] == ("CTV_6600", 66.0)
    assert rx == Prescription((DoseLevel("CTV_6600", 66.0), DoseLevel("CTV_5400", 54.0),
                               DoseLevel("CTV_5000", 50.0)), 33)


def test_json_level_may_name_the_mapped_name(tmp_path):
    rx_file = from_json(tmp_path, {"levels": [{"target": "CTV_7000", "dose_gy": 70}],
                                   "structure_names": {"Boost": "CTV_7000"}})
    rx, resolved = prescribe(targets("Boost", mapping=rx_file.structure_names), rx_file)
    assert resolved == {"Boost": ("CTV_7000", 70.0)} and rx.fractions == 35


@pytest.mark.parametrize("data, problem", [
    ('{"fractions": 35,', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"fraction": 35}, 'unknown key "fraction"'),
    ({"fractions": 0}, '"fractions" is 0'),
    ({"fractions": 35.5}, '"fractions" is 35.5'),
    ({"levels": {"target": "CTV"}}, '"levels" must be a list'),
    ({"levels": [{"target": "CTV_7000"}]}, '"levels"[0] has no "dose_gy"'),
    ({"levels": [{"dose_gy": 70}]}, '"levels"[0] has no "target"'),
    ({"levels": [{"target": "CTV_7000", "dose_gy": -70}]}, '"levels"[0]."dose_gy" is -70'),
    ({"levels": [{"target": "CTV_7000", "dose_gy": "70"}]}, '"levels"[0]."dose_gy" is \'70\''),
    ({"levels": [{"target": "CTV_7000", "dose_gy": 70, "unit": "Gy"}]}, 'unknown key "unit"'),
    ({"structure_names": ["a"]}, '"structure_names" must map'),
    ({"ignore": "Couch"}, '"ignore" must be a list'),
])
def test_invalid_json_names_the_file_and_the_key(tmp_path, data, problem):
    with pytest.raises(InputError, match="prescription.json") as info:
        from_json(tmp_path, data)
    assert problem in str(info.value)


def test_level_target_not_in_the_rtstruct(tmp_path):
    rx_file = from_json(tmp_path, {"levels": [{"target": "CTV_Boost", "dose_gy": 70}]})
    with pytest.raises(InputError, match=r'prescription\.json.*"levels"\[0\]\."target" "CTV_Boost" is not a target'):
        prescribe(targets("CTV_7000"), rx_file)


def test_dose_in_name_and_json_must_agree(tmp_path):
    rx_file = from_json(tmp_path, {"levels": [{"target": "CTV_7000", "dose_gy": 66}]})
    with pytest.raises(InputError, match=r'"dose_gy" is 66 Gy but the ROI name "CTV_7000" says 70 Gy'):
        prescribe(targets("CTV_7000"), rx_file)


def test_no_dose_anywhere():
    with pytest.raises(InputError, match="no prescription"):
        prescribe(targets("GTV"), PrescriptionFile())


def test_write_then_read(tmp_path):
    rx = Prescription((DoseLevel("CTV_5400", 54.0), DoseLevel("CTV_7000", 70.0)), 35)
    path = write_prescription(rx, tmp_path / "prescription.json", {"Parotis li": "Parotid_L"}, ["Couch"])
    rx_file = read_prescription_file(path)
    assert rx_file.levels == (("CTV_7000", 70.0), ("CTV_5400", 54.0)) and rx_file.fractions == 35
    assert rx_file.structure_names == {"Parotis li": "Parotid_L"} and rx_file.ignore == {"Couch"}


def test_ctv_and_ptv_of_one_dose_are_one_level(tmp_path):
    """prescription.json names the PTV; the CTV of the same dose joins that level, not a second one."""
    from rtautoplan.dicom.read import read_case
    from rtautoplan.phantom import write_phantom

    write_phantom("prostate", 3, tmp_path)
    case = read_case(tmp_path)
    assert [lv.dose_gy for lv in case.prescription.levels] == [78.0]
    assert {s.name: s.rx_gy for s in case.structures if s.role.is_target} == {"CTV_7800": 78.0, "PTV_7800": 78.0}
