"""Photon RTPLAN (dicom/rtplan.py) of a real in-house IMRT plan on ``small_case``: round trip of
segments and metersets, the attributes a TPS needs, the delivered dose, and the independent
checkers (dciodvfy, dcmdump), alone and with an RTDOSE that references the plan."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
from pydicom.uid import RTPlanStorage, RTStructureSetStorage

from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtplan import read_rtplan, write_rtplan
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.physics.sequencing import sequence_plan
from dicom_checks import dciodvfy, dcmdump, to_16_bit

DS_RELATIVE = 1e-8  # DS text keeps ≥ 10 significant digits; format_ds also rounds to 1e-9 absolute,
# so a segment weight (a difference of two cumulative weights) is exact within 2e-9


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(case, tps, plan, sequenced, RTSTRUCT path, RTPLAN path) of a 5-beam plan, 10 levels."""
    from conftest import build_small_case

    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules

    tmp = tmp_path_factory.mktemp("rtplan")
    case = apply_rules(build_small_case(), "hn")
    tps = InHousePhoton(n_beams=5, dose_grid_factor=1, cache_dir=tmp / "dij", max_iter=60)
    tps.prepare(case)
    tps.optimize(objectives_for(case, np.random.default_rng(0)))
    plan = tps.plan()
    sequenced = sequence_plan(plan, levels=10)
    rtstruct = write_rtstruct(case, tmp / "RTSTRUCT.dcm", uid_seed="t")
    uid = pydicom.dcmread(rtstruct).SOPInstanceUID
    rtplan = write_rtplan(case, plan, sequenced, tmp / "RTPLAN.dcm", structure_set_uid=uid, uid_seed="t")
    return case, tps, plan, sequenced, rtstruct, rtplan


def test_round_trip_reproduces_segments_and_metersets(written):
    case, _, plan, sequenced, _, path = written
    back = read_rtplan(path)
    assert back.fractions == case.prescription.fractions == 30
    assert len(back.beams) == len(plan.beams)
    for beam, seq, read in zip(plan.beams, sequenced, back.beams):
        assert read.name == beam.name and read.gantry_deg == pytest.approx(beam.gantry_deg % 360)
        np.testing.assert_allclose(read.isocenter_mm, beam.isocenter_mm, atol=1e-9)
        np.testing.assert_array_equal(read.leaf_boundaries_mm, seq.leaf_boundaries_mm)
        np.testing.assert_allclose(read.left_mm, seq.left_mm, atol=1e-9)
        np.testing.assert_allclose(read.right_mm, seq.right_mm, atol=1e-9)
        np.testing.assert_allclose(read.jaw_x_mm, seq.jaw_x_mm, atol=1e-9)
        np.testing.assert_allclose(read.jaw_y_mm, seq.jaw_y_mm, atol=1e-9)
        np.testing.assert_allclose(read.segment_weights, seq.meterset_weights, rtol=DS_RELATIVE, atol=2e-9)
        course_mu = read.meterset_mu * back.fractions  # MU = fluence units (physics.photon calibration)
        np.testing.assert_allclose(read.segment_weights * course_mu, seq.segment_fluence, rtol=DS_RELATIVE,
                                   atol=2e-9 * course_mu)


def test_plan_attributes(written):
    case, _, plan, sequenced, rtstruct, path = written
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RTPlanStorage and ds.Modality == "RTPLAN"
    assert (ds.RTPlanGeometry, ds.ApprovalStatus) == ("PATIENT", "UNAPPROVED")
    ref = ds.ReferencedStructureSetSequence[0]
    assert ref.ReferencedSOPClassUID == RTStructureSetStorage
    assert ref.ReferencedSOPInstanceUID == pydicom.dcmread(rtstruct).SOPInstanceUID
    assert ds.StudyInstanceUID == case.refs.study_instance_uid
    assert ds.FrameOfReferenceUID == case.refs.frame_of_reference_uid
    assert ds.PatientSetupSequence[0].PatientPosition == case.refs.patient_position
    group = ds.FractionGroupSequence[0]
    assert int(group.NumberOfBeams) == len(plan.beams) == len(group.ReferencedBeamSequence)
    for n, (beam, seq) in enumerate(zip(ds.BeamSequence, sequenced), start=1):
        assert (beam.BeamNumber, beam.BeamType, beam.RadiationType) == (n, "STATIC", "PHOTON")
        assert beam.TreatmentMachineName == "RTAP_LINAC" and beam.ReferencedPatientSetupNumber == 1
        devices = [d.RTBeamLimitingDeviceType for d in beam.BeamLimitingDeviceSequence]
        assert devices == ["ASYMX", "ASYMY", "MLCX"]
        np.testing.assert_allclose(np.diff(beam.BeamLimitingDeviceSequence[2].LeafPositionBoundaries),
                                   plan.beamlet_mm)
        cps = beam.ControlPointSequence
        assert len(cps) == beam.NumberOfControlPoints == 2 * seq.n_segments
        cumulative = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert cumulative[0] == 0 and cumulative[-1] == float(beam.FinalCumulativeMetersetWeight) == 1
        assert all(a <= b for a, b in zip(cumulative, cumulative[1:]))
        assert all(cumulative[k] == cumulative[k + 1] for k in range(1, len(cps) - 1, 2))  # beam off while moving
        assert float(cps[0].NominalBeamEnergy) == 6 and cps[0].GantryRotationDirection == "NONE"
        assert float(group.ReferencedBeamSequence[n - 1].BeamMeterset) > 0


def test_machine_name_and_reproducible_uids(written, tmp_path):
    case, _, plan, sequenced, _, path = written
    other = write_rtplan(case, plan, sequenced, tmp_path / "p.dcm", structure_set_uid="1.2.3", machine="TrueBeam1",
                         uid_seed="t")
    ds = pydicom.dcmread(other)
    assert {b.TreatmentMachineName for b in ds.BeamSequence} == {"TrueBeam1"}
    assert ds.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    assert read_rtplan(other).machine == "TrueBeam1"


def test_rejects_missing_structure_set_and_ion_plans(written, tmp_path):
    from dataclasses import replace

    from rtautoplan.plan import Modality

    case, _, plan, sequenced, _, _ = written
    with pytest.raises(ValueError, match="structure_set_uid"):
        write_rtplan(case, plan, sequenced, tmp_path / "a.dcm", structure_set_uid="")
    with pytest.raises(ValueError, match="rtionplan"):
        write_rtplan(case, replace(plan, modality=Modality.PROTON), sequenced, tmp_path / "b.dcm",
                     structure_set_uid="1.2.3")


def test_dose_of_the_segments_is_close_to_the_optimised_dose(written):
    """10 levels: each beamlet within 5 % of its beam's maximum fluence; overlapping beams average it
    out, so the rounded segments' dose is within 4 % of Dmax everywhere (3.7 % measured with the
    narrow-field edge of ``SIX_MV``). Rounding can shift the CTV mean (+2.1 % here), which is why the
    pipeline re-optimises the segment weights (``optimize_segments``): those segments give the CTV mean
    within 1 % of the optimised fluence's."""
    from rtautoplan.physics.sequencing import apertures, with_segment_weights

    case, tps, plan, sequenced, _, _ = written
    delivered = tps.dose_of([s.delivered for s in sequenced])
    top = float(plan.dose.gy.max())
    assert np.max(np.abs(delivered.gy - plan.dose.gy)) <= 0.04 * top
    shapes = apertures(plan, sequenced)
    weights = tps.optimize_segments(plan.objectives, shapes, [s.segment_fluence for s in sequenced])
    reweighted = [with_segment_weights(s, a, w, np.asarray(p, float))
                  for s, a, w, p in zip(sequenced, shapes, weights, plan.weights)]
    ctv = case.structure("CTV_6000").mask
    planned = float(plan.dose.gy[ctv].mean())
    assert float(tps.dose_of([s.delivered for s in reweighted]).gy[ctv].mean()) == pytest.approx(planned, rel=0.01)
    assert float(delivered.gy[ctv].mean()) == pytest.approx(planned, rel=0.03)


@pytest.mark.tools
def test_dciodvfy_finds_no_error_or_warning(written, tool):
    errors, output = dciodvfy(tool, written[-1])
    assert not errors, output
    assert "RTPlan" in output  # it recognised the IOD
    assert "Warning" not in output, output


@pytest.mark.tools
def test_dcmdump_parses(written, tool):
    out = dcmdump(tool, written[-1])
    assert "ControlPointSequence" in out and "LeafJawPositions" in out


@pytest.mark.tools
def test_rtdose_of_the_segments_and_its_rtplan_pass_together(written, tool, tmp_path):
    """The RTDOSE of the delivered (sequenced) weights references the RTPLAN; both pass dciodvfy.
    The RTDOSE is checked as a 16-bit copy (dciodvfy aborts on 32-bit pixels; see test_rtdose)."""

    case, tps, _, sequenced, _, rtplan = written
    plan_uid = pydicom.dcmread(rtplan).SOPInstanceUID
    dose = tps.dose_of([s.delivered for s in sequenced])
    rtdose = write_rtdose(case, dose, tmp_path / "RTDOSE.dcm", plan_sop_instance_uid=plan_uid, uid_seed="t")
    ds = pydicom.dcmread(rtdose)
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == plan_uid
    assert ds.StudyInstanceUID == pydicom.dcmread(rtplan).StudyInstanceUID
    assert ds.FrameOfReferenceUID == pydicom.dcmread(rtplan).FrameOfReferenceUID
    for path in (rtplan, to_16_bit(rtdose, tmp_path / "RTDOSE16.dcm")):
        errors, output = dciodvfy(tool, path)
        assert not errors, output
