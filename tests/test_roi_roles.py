"""How a ROI gets its role (RTROIInterpretedType first, then its name; prescription.json "levels" and
"goals" recognise ROIs without a mapping) and which name suggestions the unknown-name error may make."""

import json
import logging

import numpy as np
import pydicom
import pytest

from rtautoplan.case import Role
from rtautoplan.dicom.read import read_case, write_case
from rtautoplan.errors import InputError
from rtautoplan.structures import apply_rules, names, objectives_for


@pytest.fixture
def folder(tmp_path, small_case):
    """small_case as written: External, CTV_6000, SpinalCord, Esophagus, Lens_L; 60 Gy in 30 fractions."""
    write_case(small_case, tmp_path / "case")
    return tmp_path / "case"


def relabel(folder, old, new=None, interpreted_type=None):
    """Rename the ROI ``old`` and/or set its RTROIInterpretedType ("" deletes it)."""
    path = folder / "RTSTRUCT.dcm"
    ds = pydicom.dcmread(path)
    item = next(r for r in ds.StructureSetROISequence if r.ROIName == old)
    observation = next(o for o in ds.RTROIObservationsSequence if o.ReferencedROINumber == item.ROINumber)
    if new is not None:
        item.ROIName = new
    if interpreted_type == "":
        del observation.RTROIInterpretedType
    elif interpreted_type is not None:
        observation.RTROIInterpretedType = interpreted_type
    ds.save_as(path)


def prescription(folder, **keys):
    data = json.loads((folder / "prescription.json").read_text())
    data.update(keys)
    (folder / "prescription.json").write_text(json.dumps(data))


def refused(folder, *patterns):
    with pytest.raises(InputError) as info:
        read_case(folder)
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    return str(info.value)


# --- suggestions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("roi_name, suggestion", [
    ("Parotid Lft", "Parotid_L"), ("Lft Parotid", "Parotid_L"), ("Parotd_R", "Parotid_R"),
    ("Brainstm", "Brainstem"), ("SpinalCrd", "SpinalCord"), ("Mandibel", "Bone_Mandible"),
    ("OuterTarget", None),  # was Heart
    ("Breast", None),  # was Brainstem
    ("Core", None), ("Rueckenmark", None), ("Parotid", None),  # no side: Parotid_L or _R is the user's call
    ("Brainstm L", None),  # a side on a midline organ
    ("PTV_boost", None), ("CTV_Hgh", None), ("Target2", None), ("Boost_Heart", None),
])
def test_suggestions_are_only_spelling_and_laterality_variants(roi_name, suggestion):
    assert names.suggest(roi_name) == suggestion


def test_unknown_target_like_name_is_told_to_give_a_dose_not_an_organ(folder):
    relabel(folder, "Esophagus", "OuterTarget", "")
    message = refused(folder, "ROI 'OuterTarget'", "unknown structure name",
                      '"levels": [{"target": "OuterTarget", "dose_gy": ...}]', '"ignore": ["OuterTarget"]')
    assert "did you mean" not in message and "Heart" not in message


def test_misspelt_lateral_organ_suggestion_keeps_the_side(folder):
    relabel(folder, "Lens_L", "Parotid Lft")
    refused(folder, "'Parotid Lft' (did you mean Parotid_L?)", '"structure_names": {"Parotid Lft": "Parotid_L"}')


# --- RTROIInterpretedType -------------------------------------------------------------------------

@pytest.mark.parametrize("interpreted_type, role", [
    ("PTV", Role.PTV), ("CTV", Role.CTV), ("GTV", Role.GTV), ("EXTERNAL", Role.EXTERNAL),
    ("ORGAN", Role.OAR), ("AVOIDANCE", Role.OAR), ("CAVITY", Role.OAR),
    ("SUPPORT", Role.OTHER), ("MARKER", Role.OTHER), ("ISOCENTER", Role.OTHER), ("BOLUS", Role.OTHER),
    ("CONTROL", Role.OTHER), ("TREATED_VOLUME", Role.OTHER), ("IRRAD_VOLUME", Role.OTHER),
    ("DOSE_REGION", Role.OTHER), ("FIXATION", Role.OTHER), ("registration", Role.OTHER),
    ("", None), ("ORGAN_AT_RISK", None),
])
def test_role_of_each_interpreted_type(interpreted_type, role):
    assert names.role_of_type(interpreted_type) is role


def test_non_anatomical_type_wins_over_an_organ_name(folder, caplog):
    """'Mark' is German for the spinal cord, but a ROI typed MARKER is a marker."""
    relabel(folder, "SpinalCord", "Mark", "MARKER")
    with caplog.at_level(logging.WARNING, logger="rtautoplan"):
        case = read_case(folder)
    mark = case.structure("Mark")
    assert (mark.role, mark.level) == (Role.OTHER, None) and not case.has("SpinalCord")
    assert "named as SpinalCord but its RTROIInterpretedType is MARKER" in caplog.text


@pytest.mark.parametrize("interpreted_type", ["ORGAN", "AVOIDANCE", ""])
def test_anatomy_typed_unknown_name_is_still_an_error(folder, interpreted_type):
    relabel(folder, "SpinalCord", "Rueckenmark", interpreted_type)
    refused(folder, "ROI 'Rueckenmark'", "unknown structure name")
    assert read_case(folder, unknown_rois="keep").structure("Rueckenmark").role is Role.OTHER


def test_unknown_name_typed_external_is_the_body(folder):
    relabel(folder, "External", "Patient contour 2", "EXTERNAL")
    external = read_case(folder).structure("External")
    assert (external.role, external.roi_name) == (Role.EXTERNAL, "Patient contour 2")


def test_target_typed_roi_without_a_dose_is_the_no_dose_level_error(folder):
    relabel(folder, "Esophagus", "PTV_eval", "PTV")
    refused(folder, "ROI 'PTV_eval'", "no dose level", '"levels"', '"ignore"')


def test_target_named_roi_with_a_non_target_type_is_refused(folder):
    relabel(folder, "Esophagus", "PTV_6600", "CONTROL")
    refused(folder, "ROI 'PTV_6600'", "named as a target but its RTROIInterpretedType is CONTROL",
            "Set its type to PTV, CTV or GTV", '"levels"', '"ignore"')


@pytest.mark.parametrize("roi_name", ["CTV_6000", "CTV 60Gy"])  # levels names it by ROIName or TG-263 name
def test_a_roi_in_levels_is_a_target_whatever_its_type(folder, roi_name):
    relabel(folder, "CTV_6000", roi_name, "CONTROL")
    ctv = read_case(folder).structure("CTV_6000")
    assert (ctv.role, ctv.roi_name) == (Role.CTV, roi_name)


def test_target_kinds_of_name_and_type_must_agree(folder):
    relabel(folder, "CTV_6000", interpreted_type="PTV")
    refused(folder, "ROI 'CTV_6000'", "named as a CTV but its RTROIInterpretedType is PTV",
            "Correct the name or the type")


def test_an_organ_name_typed_as_a_target_is_refused(folder):
    relabel(folder, "Esophagus", interpreted_type="PTV")
    refused(folder, "ROI 'Esophagus'", "named as Esophagus (OAR) but its RTROIInterpretedType is PTV")


def test_itv_takes_the_kind_of_its_type(folder):
    relabel(folder, "CTV_6000", "ITV_6000", "PTV")
    prescription(folder, levels=[{"target": "ITV_6000", "dose_gy": 60.0}])
    itv = read_case(folder).structure("PTV_6000")
    assert (itv.role, itv.rx_gy, itv.roi_name) == (Role.PTV, 60.0, "ITV_6000")


def test_a_target_name_typed_organ_is_planned_as_the_target(folder, caplog):
    """Many systems type every ROI ORGAN by default; a CTV name is unmistakable."""
    relabel(folder, "Esophagus", "PTV_5000", "ORGAN")
    with caplog.at_level(logging.WARNING, logger="rtautoplan"):
        assert read_case(folder).structure("PTV_5000").role is Role.PTV
    assert "named as a target but its RTROIInterpretedType is ORGAN" in caplog.text


def test_planning_only_names_stay_other_whatever_the_type(folder):
    relabel(folder, "Esophagus", "zPTV_opt", "PTV")
    assert read_case(folder).structure("zPTV_opt").role is Role.OTHER


# --- prescription.json levels and goals -----------------------------------------------------------

def test_roi_in_levels_is_a_target_without_a_mapping(folder):
    relabel(folder, "CTV_6000", "Boost", "")
    prescription(folder, levels=[{"target": "Boost", "dose_gy": 60.0}])
    boost = read_case(folder).structure("PTV_6000")  # a target of unknown kind is planned as drawn: a PTV
    assert (boost.role, boost.rx_gy, boost.level, boost.roi_name) == (Role.PTV, 60.0, 2, "Boost")


def test_roi_in_levels_takes_its_kind_from_its_type(folder):
    relabel(folder, "CTV_6000", "Boost", "CTV")
    prescription(folder, levels=[{"target": "Boost", "dose_gy": 60.0}])
    assert read_case(folder).structure("CTV_6000").role is Role.CTV


def test_tg119_names_in_goals_and_levels_plan_downstream(folder):
    """TG-119's C-shape: OuterTarget (PTV, in levels) and Core (an OAR only its goals name)."""
    relabel(folder, "CTV_6000", "OuterTarget", "PTV")
    relabel(folder, "Esophagus", "Core", "ORGAN")
    prescription(folder, levels=[{"target": "OuterTarget", "dose_gy": 50.0}],
                 goals=[{"roi": "OuterTarget", "metric": "D95%", "min_gy": 50},
                        {"roi": "core", "metric": "D10%", "max_gy": 25}])
    case = read_case(folder)
    core, target = case.structure("Core"), case.structure("PTV_5000")
    assert (core.role, core.level, core.roi_name) == (Role.OAR, 3, "Core")
    assert (target.role, target.rx_gy, target.roi_name) == (Role.PTV, 50.0, "OuterTarget")
    assert names.organ("Core") == names.Organ("Core", 3, "Dmean")
    planned = apply_rules(case, "hn")
    objectives = objectives_for(planned, np.random.default_rng(0))
    assert any(o.structure == "Core" and o.kind.name == "DMEAN" for o in objectives)


def test_goal_roi_with_a_non_anatomical_type_is_other(folder):
    relabel(folder, "Esophagus", "Ring help", "CONTROL")
    prescription(folder, goals=[{"roi": "Ring help", "metric": "Dmax", "max_gy": 50}])
    assert read_case(folder).structure("Ring help").role is Role.OTHER


def test_goal_roi_with_a_tg263_name_keeps_its_tg263_meaning(folder):
    prescription(folder, goals=[{"roi": "SpinalCord", "metric": "Dmax", "max_gy": 45}])
    cord = read_case(folder).structure("SpinalCord")
    assert (cord.role, cord.level) == (Role.OAR, 1)
