"""Held-out real TPS exports (issue 12): what the product does with DICOM-RT nobody here wrote.

pydicom's own RT test files ship with pydicom and always run; the Eclipse breast export of dicompyler-core
and the MIM structure set of rt-utils are fetched by tests/data/real/fetch.py (skipped when absent).
Sources, licences and what each case shows: tests/data/real/README.md.
"""

from __future__ import annotations

import json
import logging

import pydicom
import pytest
from pydicom.data import get_testdata_file

import numpy as np
from real_exports import copy_case, density_ct_case, real_export
from rtautoplan.case import Role, Structure
from rtautoplan.cli import main
from rtautoplan.dicom.read import read_case
from rtautoplan.dicom.rtplan_prescription import plan_for, read_plan_prescription
from rtautoplan.errors import InputError
from rtautoplan.gate import OUTSIDE_MAX, hotspots
from rtautoplan.physics.dij import _target_mask
from rtautoplan.structures.names import parse
from structure_cases import cuboid, ctv, make_case

TUMOUR_BED_ROI = 9  # ROINumber of 'Tumor Bed' in the dicompyler-core RTSTRUCT
IGNORED = ["Areola", "Nodes", "Scar", "Borders"]  # unknown names (Areola has no contour) and a 2-slice helper CTV
# the SlicerRT prostate's unknown names and its empty ROIs (PROS, the RTPLAN's SITE target, has no contour)
PROSTATE_UNKNOWN = ["Vessels - left", "Vessels - right", "X1", "X2", "X3", "optBladder", "optRectum"]


@pytest.mark.parametrize("roi_name, tg263", [("Lt Lung", "Lung_L"), ("Rt Lung", "Lung_R"), ("Lung_L", "Lung_L"),
                                             ("LUNG RT", "Lung_R"), ("Lung", "Lungs"), ("Left Kidney", "Kidney_L")])
def test_side_first_and_lung_names(roi_name, tg263):
    assert parse(roi_name).name == tg263


def test_side_first_never_makes_a_midline_organ_lateral():
    assert parse("L_Lips") is None and parse("Lt") is None


def _boost_beside_a_doseless_gtv():
    """A 60 Gy CTV and, apart from it, a GTV without a dose level (a whole breast typed GTV)."""
    gtv = Structure("Breast", cuboid((2, 18), (5, 25), (35, 55)), Role.GTV, 2, roi_name="Breast")
    return make_case(ctv(60.0, cuboid((5, 15), (30, 45), (5, 20))), gtv, levels=(60.0,))


def test_beamlets_go_only_on_targets_with_a_dose_level():
    case = _boost_beside_a_doseless_gtv()
    assert np.array_equal(_target_mask(case), case.structure("CTV_6000").mask)


def test_a_hot_spot_in_a_doseless_target_fails_the_gate():
    case = _boost_beside_a_doseless_gtv()
    dose = np.where(case.structure("CTV_6000").mask, 60.0, 0.0)
    dose[case.structure("Breast").mask] = 90.0
    outside = next(h for h in hotspots(case, dose) if h.rule == "max outside the targets")
    assert outside.value_gy == 90.0 and outside.limit_gy == OUTSIDE_MAX * 60.0 and not outside.met


def test_pydicom_rtplan_point_prescription_is_no_level():
    """pydicom's rtplan.dcm prescribes 30.8 Gy to a COORDINATES point named 'PTV' in 30 fractions."""
    rtstruct = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    plan = read_plan_prescription(get_testdata_file("rtplan.dcm", read=False), rtstruct)
    assert plan.levels == () and plan.fractions == 30
    assert plan.points == ("DoseReference 2 'PTV' (COORDINATES): 30.8262 Gy",)


def test_rtplan_of_another_structure_set_is_not_used(caplog):
    """pydicom's rtplan.dcm references an RTSTRUCT other than pydicom's rtstruct.dcm."""
    rtplan = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    with caplog.at_level(logging.WARNING):
        assert plan_for({"rtplan.dcm": rtplan}, "1.2.826.0.1.3680043.8.498.2010020400001", "1.2.3") is None
    assert "references another structure set" in caplog.text


@pytest.fixture(scope="module")
def breast(tmp_path_factory):
    """The Eclipse breast export on a density-override CT (tests/real_exports.py), with its RTPLAN."""
    source = real_export("dicompyler-core")
    return density_ct_case(source, tmp_path_factory.mktemp("real") / "breast", source / "ct.0.dcm")


def _variant(breast, tmp_path, rx: dict | None = None, volume_roi: int | None = None):
    """A copy of the breast case with ``rx`` as prescription.json; ``volume_roi``: the RTPLAN's first dose
    reference made a VOLUME reference to that ROINumber (as a TPS that links the prescription writes it)."""
    case = copy_case(breast.iterdir(), tmp_path / "case")
    if rx is not None:
        (case / "prescription.json").write_text(json.dumps(rx))
    if volume_roi is not None:
        plan = pydicom.dcmread(case / "rtplan.dcm")
        plan.DoseReferenceSequence[0].DoseReferenceStructureType = "VOLUME"
        plan.DoseReferenceSequence[0].ReferencedROINumber = volume_roi
        plan.save_as(case / "rtplan.dcm")
    return case


def test_eclipse_export_with_one_ct_slice_is_an_input_error(tmp_path):
    case = copy_case(real_export("dicompyler-core").iterdir(), tmp_path / "breast")
    with pytest.raises(InputError, match="has 1 slice. Export the complete CT series"):
        read_case(case)


def test_site_prescription_in_the_rtplan_is_stated_not_guessed(breast, tmp_path):
    """Eclipse writes the reference point 'Breast' as a SITE dose reference: it names no ROI, so the case
    stops with the RTPLAN's doses and fractions rather than planning a guessed target."""
    with pytest.raises(InputError) as error:
        read_case(_variant(breast, tmp_path, {"ignore": IGNORED}))
    message = str(error.value)
    assert "rtplan.dcm" in message and "DoseReference 1 'Breast' (SITE): 14 Gy" in message
    assert "which names no ROI" in message and "(7 in the RTPLAN)" in message


def test_unknown_names_of_a_real_export_stop_with_the_fix(breast, tmp_path):
    with pytest.raises(InputError, match="'Areola' \\(no contour\\), 'Nodes', 'Scar': unknown structure name"):
        read_case(_variant(breast, tmp_path, volume_roi=TUMOUR_BED_ROI))


def test_volume_prescription_in_the_rtplan_is_read_and_stated(breast, tmp_path):
    case = read_case(_variant(breast, tmp_path, {"ignore": IGNORED}, volume_roi=TUMOUR_BED_ROI))
    rx = case.prescription
    assert [(lv.target, lv.dose_gy) for lv in rx.levels] == [("CTV_1400", 14.0)] and rx.fractions == 7
    assert rx.source.startswith("RTPLAN rtplan.dcm: 14 Gy to 'Tumor Bed' in 7 fractions")
    by_roi = {s.roi_name: s for s in case.structures}
    assert by_roi["Lt Lung"].name == "Lung_L" and by_roi["Tumor Bed"].rx_gy == 14.0
    assert {"Breast", "Heart", "BODY", "Tumor Bed Block"} <= set(by_roi)


def test_a_target_the_rtplan_leaves_without_dose(breast, tmp_path):
    """'Borders' (typed CTV) has no dose: levels written in prescription.json replace the RTPLAN's, so the
    message lists the RTPLAN's levels to write with it."""
    rx = {"ignore": ["Areola", "Nodes", "Scar"]}
    with pytest.raises(InputError, match="ROI 'Borders': this target has no dose level.*with every level of the "
                                         r"RTPLAN \(Tumor Bed 14 Gy\)"):
        read_case(_variant(breast, tmp_path, rx, volume_roi=TUMOUR_BED_ROI))


def test_prescription_json_fractions_over_the_rtplans_are_stated(breast, tmp_path):
    case = read_case(_variant(breast, tmp_path, {"fractions": 5, "ignore": IGNORED}, volume_roi=TUMOUR_BED_ROI))
    assert case.prescription.fractions == 5 and case.prescription.levels[0].dose_gy == 14.0
    assert case.prescription.source.endswith("5 fractions from " + str(tmp_path / "case" / "prescription.json")
                                             + ", not the RTPLAN's 7")


def test_prescription_json_levels_win_over_the_rtplan(breast, tmp_path):
    rx = {"fractions": 5, "levels": [{"target": "Tumor Bed", "dose_gy": 10}], "ignore": IGNORED}
    case = read_case(_variant(breast, tmp_path, rx, volume_roi=TUMOUR_BED_ROI))
    assert case.prescription.levels[0].dose_gy == 10.0 and case.prescription.fractions == 5
    assert case.prescription.source.endswith("prescription.json")


@pytest.fixture(scope="module")
def prostate(tmp_path_factory):
    """SlicerRT's Eclipse prostate phantom export on a density-override CT, with its RTPLAN."""
    template = real_export("dicompyler-core") / "ct.0.dcm"
    return density_ct_case(real_export("slicerrt"), tmp_path_factory.mktemp("real") / "prostate", template)


def test_site_reference_named_like_a_ptv_is_its_level(prostate):
    plan = read_plan_prescription(prostate / "rtplan.dcm", pydicom.dcmread(prostate / "rtss.dcm"))
    assert plan.levels == (("PROS", 46.0),) and plan.fractions == 23
    assert plan.matched == ("DoseReference 1 'PROS' (SITE) → ROI 'PROS'",)


def test_rtplan_target_without_contours(prostate, tmp_path):
    """The RTPLAN prescribes to 'PROS', a PTV with no contour: the empty ROIs stop the read (all named at
    once), and ignoring them leaves the RTPLAN's prescription unplannable, which is said too."""
    rx = {"ignore": list(PROSTATE_UNKNOWN)}
    with pytest.raises(InputError, match=r"ROIs 'CTV', 'PROS': are empty .*\"ignore\": \[\"CTV\", \"PROS\"\]"):
        read_case(_prostate(prostate, tmp_path / "a", rx))
    rx["ignore"] += ["CTV", "PROS"]
    with pytest.raises(InputError, match="prescribes 46 Gy to ROI 'PROS', which .*prescription.json ignores"):
        read_case(_prostate(prostate, tmp_path / "b", rx))


def test_prostate_phantom_reads_with_its_prescription_json(prostate, tmp_path):
    rx = {"fractions": 23, "levels": [{"target": "PTV", "dose_gy": 46}], "ignore": PROSTATE_UNKNOWN + ["CTV", "PROS"]}
    case = read_case(_prostate(prostate, tmp_path, rx))
    by_roi = {s.roi_name: s.name for s in case.structures}
    assert by_roi["Femoral Head Lt"] == "Femur_Head_L" and by_roi["Femoral Head RT"] == "Femur_Head_R"
    assert by_roi["PTV"] == "PTV_4600" and case.prescription.fractions == 23


def _prostate(prostate, folder, rx):
    case = copy_case(prostate.iterdir(), folder)
    (case / "prescription.json").write_text(json.dumps(rx))
    return case


def test_mim_structure_set_on_a_two_slice_ct(tmp_path):
    """rt-utils' MIM export: four ROIs named ROI-1 … ROI-4 with no RTROIInterpretedType."""
    source = real_export("rt-utils")
    case = copy_case([source / "ct_1.dcm", source / "ct_2.dcm", source / "rtstruct_mim.dcm"], tmp_path / "mim")
    with pytest.raises(InputError, match="'ROI-1', 'ROI-2', 'ROI-3', 'ROI-4': unknown structure name"):
        read_case(case)


def test_oblique_ct_without_rtstruct(tmp_path):
    source = real_export("rt-utils")
    case = copy_case(sorted(source.glob("oblique_*.dcm")), tmp_path / "oblique")
    with pytest.raises(InputError, match="no RTSTRUCT found"):
        read_case(case)


def test_cli_states_the_rtplan_prescription(breast, tmp_path, capsys):
    case = _variant(breast, tmp_path, {"ignore": IGNORED}, volume_roi=TUMOUR_BED_ROI)
    assert main(["structures", str(case), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "prescription: CTV_1400 14 Gy in 7 fractions (from RTPLAN rtplan.dcm: 14 Gy to 'Tumor Bed'" in out
    assert "site generic" in out


@pytest.mark.slow
def test_eclipse_breast_boost_plans_within_the_gate(breast, tmp_path, capsys):
    """The tumour-bed boost beside a whole breast typed GTV: with beamlets over the whole breast the
    photon plan had 120 Gy at the skin for 14 Gy (docs/results.md, "Held-out real exports")."""
    case = _variant(breast, tmp_path, {"ignore": IGNORED}, volume_roi=TUMOUR_BED_ROI)
    code = main(["plan", str(case), "-o", str(tmp_path / "out"), "--dose-grid-mm", "5", "--max-steps", "0"])
    log = json.loads((tmp_path / "out" / "plan_log.json").read_text())
    outside = next(h for h in log["hotspots"] if h["rule"] == "max outside the targets")
    assert outside["value_gy"] <= OUTSIDE_MAX * 14.0 + 0.005
    assert code == 0 and log["acceptable"] is True
    assert log["prescription"].startswith("CTV_1400 14 Gy in 7 fractions (from RTPLAN rtplan.dcm")


def test_a_site_read_from_the_rois_without_a_setup_falls_back_to_generic():
    """Bladder and Rectum make a prostate, which has no proton setup: generic plans it, and says so; a
    site the user names stops instead."""
    from rtautoplan.folder import PlanOptions, _site_setup
    from rtautoplan.phantom import make_case as phantom

    case = phantom("prostate", 1)
    site, reason, setup = _site_setup(case, PlanOptions(modality="proton"))
    assert site == "generic" and reason.endswith("but prostate has no proton setup")
    assert setup.adapter == "inhouse-proton"
    with pytest.raises(InputError, match="no planning setup for site 'prostate' with 'proton'"):
        _site_setup(case, PlanOptions(site="prostate", modality="proton"))


def test_eclipse_16_structure_set_without_a_target(tmp_path):
    """DicomRTTool's anonymised Eclipse 16.1 RTSTRUCT (BODY, SpinalCord) on 4 CT slices of 1 mm."""
    case = copy_case(sorted(real_export("dicomrttool").glob("*.dcm")), tmp_path / "eclipse16")
    with pytest.raises(InputError, match="no prescription: no target ROI carries a dose"):
        read_case(case)
