"""RT Ion Plan (dicom/rtionplan.py) of real plans on ``small_case``: in-house IMPT (protons, MU) and
PHOENIX (carbon, 10⁶ ions). Round trip of the spots, the attributes of the IOD, and the
independent checkers (dciodvfy, dcmdump), alone and with an RTDOSE that references the plan."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
from pydicom.uid import RTIonPlanStorage

from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtionplan import FWHM_PER_SIGMA, read_rtionplan, write_rtionplan
from rtautoplan.physics.ion_dose import sigma0_mm
from rtautoplan.plan import Modality
from dicom_checks import dciodvfy, dcmdump, to_16_bit

FL_RELATIVE = 1e-6  # ScanSpotPositionMap and ScanSpotMetersetWeights are FL (32-bit float)
STRUCTURE_SET_UID = "1.2.826.0.1.3680043.8.498.2"


def proton_plan(tmp):
    from rtautoplan.adapters.inhouse_proton import InHouseProton
    from rtautoplan.structures.objectives import objectives_for
    from rtautoplan.structures.rules import apply_rules
    from conftest import build_small_case

    case = apply_rules(build_small_case(), "hn")
    tps = InHouseProton(cache_dir=tmp, max_iter=60, mu_rounds=3, spot_spacing_mm=6.0, layer_spacing_mm=4.0)
    tps.prepare(case)
    tps.optimize(objectives_for(case, np.random.default_rng(0)))
    return case, tps.plan()


def carbon_plan(tmp):
    from conftest import build_small_case
    from test_phoenix import seed003_objectives

    from rtautoplan.adapters.phoenix import PhoenixAdapter
    from rtautoplan.adapters.phoenix_api import PhoenixServer

    case = build_small_case()
    with PhoenixServer(workers=1) as server:
        tps = PhoenixAdapter(server=server, max_iterations=30)
        tps.prepare(case)
        tps.optimize(seed003_objectives("CTV_6000", 60.0))
        return case, tps.plan()


@pytest.fixture(scope="module", params=["proton", "carbon"])
def written(request, tmp_path_factory):
    """(case, plan, RT Ion Plan path) for each modality."""
    tmp = tmp_path_factory.mktemp(request.param)
    case, plan = (proton_plan if request.param == "proton" else carbon_plan)(tmp)
    path = write_rtionplan(case, plan, tmp / "RTIONPLAN.dcm", structure_set_uid=STRUCTURE_SET_UID, uid_seed="t")
    return case, plan, path


def expected_spots(positions, weights) -> np.ndarray:
    """The written spots: weight > 0, layers from the highest energy down, plan order within a layer."""
    spots = np.column_stack([positions, weights])[weights > 0]
    return spots[np.argsort(-spots[:, 2], kind="stable")]


def test_round_trip_reproduces_spots(written):
    case, plan, path = written
    back = read_rtionplan(path)
    assert back.fractions == case.prescription.fractions
    assert len(back.beams) == len(plan.beams)
    for beam, p, w, read in zip(plan.beams, plan.positions, plan.weights, back.beams):
        want = expected_spots(p, w)
        assert read.name == beam.name and read.gantry_deg == pytest.approx(beam.gantry_deg % 360)
        np.testing.assert_allclose(read.isocenter_mm, beam.isocenter_mm, atol=1e-9)
        assert read.spots.shape == want.shape
        np.testing.assert_allclose(read.spots[:, :2], want[:, :2], rtol=FL_RELATIVE, atol=1e-5)
        np.testing.assert_allclose(read.spots[:, 2], want[:, 2], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(read.spots[:, 3], want[:, 3], rtol=FL_RELATIVE)


def test_ion_plan_attributes(written):
    case, plan, path = written
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == RTIonPlanStorage and ds.Modality == "RTPLAN"
    assert (ds.RTPlanGeometry, ds.ApprovalStatus) == ("PATIENT", "UNAPPROVED")
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == STRUCTURE_SET_UID
    assert ds.PatientSetupSequence[0].PatientPosition == case.refs.patient_position
    carbon = plan.modality is Modality.CARBON
    group = ds.FractionGroupSequence[0]
    for beam, w, ref in zip(ds.IonBeamSequence, plan.weights, group.ReferencedBeamSequence):
        assert (beam.BeamType, beam.ScanMode) == ("STATIC", "MODULATED")
        assert beam.TreatmentMachineName == ("RTAP_CARBON" if carbon else "RTAP_PROTON")
        if carbon:
            assert (beam.RadiationType, beam.PrimaryDosimeterUnit) == ("ION", "NP")
            assert (beam.RadiationMassNumber, beam.RadiationAtomicNumber, beam.RadiationChargeState) == (12, 6, 6)
        else:
            assert (beam.RadiationType, beam.PrimaryDosimeterUnit) == ("PROTON", "MU")
            assert "RadiationMassNumber" not in beam
        for keyword in ("NumberOfRangeShifters", "NumberOfLateralSpreadingDevices", "NumberOfRangeModulators",
                        "NumberOfCompensators", "NumberOfBoli", "NumberOfBlocks", "NumberOfWedges"):
            assert beam[keyword].value == 0
        assert float(beam.FinalCumulativeMetersetWeight) == pytest.approx(w.sum(), rel=1e-9)
        assert float(ref.BeamMeterset) == pytest.approx(w.sum() * (1e6 if carbon else 1.0), rel=1e-9)
        cps = beam.IonControlPointSequence
        assert len(cps) == beam.NumberOfControlPoints and len(cps) % 2 == 0
        energies = [float(cp.NominalBeamEnergy) for cp in cps]
        assert energies[0::2] == energies[1::2] and energies[0::2] == sorted(set(energies), reverse=True)
        cumulative = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert cumulative[0] == 0 and cumulative[-1] == float(beam.FinalCumulativeMetersetWeight)
        for first, second in zip(cps[0::2], cps[1::2]):
            assert int(first.NumberOfScanSpotPositions) == int(second.NumberOfScanSpotPositions)
            assert not np.any(np.atleast_1d(second.ScanSpotMetersetWeights))  # the second CP of a pair: zeros
            assert np.all(np.atleast_1d(first.ScanSpotMetersetWeights) > 0)
            assert first.NumberOfPaintings == 1 and first.ScanSpotTuneID
            fwhm = FWHM_PER_SIGMA * float(sigma0_mm(float(first.NominalBeamEnergy), "carbon" if carbon else "proton"))
            np.testing.assert_allclose(first.ScanningSpotSize, [fwhm, fwhm], rtol=1e-6)


def test_zero_weight_spots_are_not_written(written):
    _, plan, path = written
    written_spots = sum(b.spots.shape[0] for b in read_rtionplan(path).beams)
    assert written_spots == sum(int((w > 0).sum()) for w in plan.weights)


def test_rejects_photon_plans_and_missing_structure_set(written, tmp_path):
    from dataclasses import replace

    case, plan, _ = written
    with pytest.raises(ValueError, match="proton and carbon"):
        write_rtionplan(case, replace(plan, modality=Modality.PHOTON), tmp_path / "a.dcm", structure_set_uid="1.2")
    with pytest.raises(ValueError, match="structure_set_uid"):
        write_rtionplan(case, plan, tmp_path / "b.dcm", structure_set_uid="")


@pytest.mark.tools
def test_dciodvfy_finds_no_error_or_warning(written, tool):
    errors, output = dciodvfy(tool, written[-1])
    assert not errors, output
    assert "RTIonPlan" in output  # it recognised the IOD
    assert "Warning" not in output, output


@pytest.mark.tools
def test_dcmdump_parses(written, tool):
    out = dcmdump(tool, written[-1])
    assert "IonControlPointSequence" in out and "ScanSpotPositionMap" in out


@pytest.mark.tools
def test_rtdose_referencing_the_ion_plan_passes_with_it(written, tool, tmp_path):
    """An EFFECTIVE (RBE-weighted) RTDOSE referencing the RT Ion Plan; both pass dciodvfy (the
    RTDOSE as a 16-bit copy, see test_rtdose)."""

    case, plan, path = written
    uid = pydicom.dcmread(path).SOPInstanceUID
    rtdose = write_rtdose(case, plan.dose, tmp_path / "RTDOSE.dcm", plan_sop_instance_uid=uid, uid_seed="t")
    assert pydicom.dcmread(rtdose).ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == uid
    for checked in (path, to_16_bit(rtdose, tmp_path / "RTDOSE16.dcm")):
        errors, output = dciodvfy(tool, checked)
        assert not errors, output


def test_rtdose_references_the_ion_plan_sop_class(written, tmp_path):
    case, plan, path = written
    rtdose = write_rtdose(case, plan.dose, tmp_path / "RTDOSE.dcm", plan_sop_instance_uid="1.2.3",
                          plan_sop_class_uid=RTIonPlanStorage)
    assert pydicom.dcmread(rtdose).ReferencedRTPlanSequence[0].ReferencedSOPClassUID == RTIonPlanStorage
