"""The phantom generator: reproducible, anatomically complete, and the source of sample_data/."""

from pathlib import Path

import numpy as np
import pytest

from rtautoplan.case import Role
from rtautoplan.dicom.read import read_case
from rtautoplan.phantom import make_case

SAMPLES = Path(__file__).parent.parent / "sample_data"

HN_ROIS = {"Body", "Skin", "SpinalCord", "Brainstem", "Parotid_L", "Parotid_R", "Mandible", "Cavity_Oral", "Larynx",
           "Esophagus", "OpticChiasm", "OpticNrv_L", "OpticNrv_R", "Lens_L", "Lens_R", "Eye_L", "Eye_R",
           "Cochlea_L", "Cochlea_R", "TemporalLobe_L", "TemporalLobe_R", "TMJ_L", "TMJ_R",
           "CTV_7000", "CTV_6000", "CTV_5400"}
PROSTATE_ROIS = {"CTV_7800", "PTV_7800", "Bladder", "Rectum", "Femur_Head_L", "Femur_Head_R", "Body"}


@pytest.fixture(scope="module")
def hn():
    return make_case("hn", 1)


def test_hn_has_every_structure_the_rules_and_seeds_need(hn):
    assert {s.roi_name for s in hn.structures} == HN_ROIS
    body = hn.external.mask
    for s in hn.structures:
        assert s.mask.any(), s.name
        assert not (s.mask & ~body).any(), f"{s.name} leaves the body"
    assert [lv.dose_gy for lv in hn.prescription.levels] == [70.0, 60.0, 54.0]
    assert 33 <= hn.prescription.fractions <= 35


def test_hn_ctvs_overlap_each_other_and_a_parotid(hn):
    ctv = {s.name: s.mask for s in hn.by_role(Role.CTV)}
    assert (ctv["CTV_7000"] & ctv["CTV_6000"]).any() and (ctv["CTV_6000"] & ctv["CTV_5400"]).any()
    any_ctv = np.logical_or.reduce(list(ctv.values()))
    assert any((hn.structure(p).mask & any_ctv).any() for p in ("Parotid_L", "Parotid_R"))


def test_hn_hu_are_tissue_values(hn):
    body = hn.external.mask
    assert np.median(hn.hu[body]) == pytest.approx(40, abs=15)  # soft tissue
    assert (hn.hu[hn.structure("Bone_Mandible").mask] > 700).mean() > 0.9  # bone
    assert (hn.hu[~body] == -1000).all()  # air


def test_same_seed_same_patient_other_seed_other_patient(hn):
    again = make_case("hn", 1)
    other = make_case("hn", 2)
    assert np.array_equal(again.hu, hn.hu)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(again.structures, hn.structures))
    assert not np.array_equal(other.structure("CTV_7000").mask, hn.structure("CTV_7000").mask)


def test_prostate_has_the_seed_000_structures():
    case = make_case("prostate", 1)
    assert {s.roi_name for s in case.structures} == PROSTATE_ROIS
    ptv, ctv = case.structure("PTV_7800").mask, case.structure("CTV_7800").mask
    assert not (ctv & ~ptv).any()
    assert (ptv & case.structure("Rectum").mask).any() and (ptv & case.structure("Bladder").mask).any()


@pytest.mark.parametrize("site", ["hn", "prostate"])
def test_committed_sample_is_what_the_documented_command_writes(site):
    """sample_data/<site>01 = `rtautoplan phantom <site> --seed 1`, read back through read_case."""
    made, read = make_case(site, 1), read_case(SAMPLES / f"{site}01")
    assert read.grid == made.grid
    assert np.array_equal(read.hu, made.hu)
    for s in made.structures:
        assert np.array_equal(read.structure(s.name).mask, s.mask), s.name


def test_clinical_size_geometry_and_metadata_on_a_reduced_grid(tmp_path):
    """The clinical H&N grid (512 × 512 × 180, 0.98 × 0.98 × 2 mm) and, coarsened 4× in plane and 3× in z
    over the same field of view, what it writes: the CT headers, every ROI, and the same anatomy read back."""
    import pydicom

    from rtautoplan.case import Grid
    from rtautoplan.phantom import phantom_grid
    from rtautoplan.phantom.hn import CLINICAL_GRID
    from rtautoplan.dicom.read import write_case

    assert phantom_grid("hn", "clinical") == CLINICAL_GRID
    assert CLINICAL_GRID.shape == (180, 512, 512) and CLINICAL_GRID.spacing == (2.0, 0.98, 0.98)
    with pytest.raises(ValueError, match="clinical"):
        phantom_grid("prostate", "clinical")
    small = Grid(CLINICAL_GRID.origin, (6.0, 3.92, 3.92), (60, 128, 128))
    case = make_case("hn", 1, small)
    assert case.case_id == "hn01-128x128x60" and case.grid == small
    assert {s.roi_name for s in case.structures} == HN_ROIS
    assert all(s.mask.any() and s.mask.shape == small.shape for s in case.structures)
    write_case(case, tmp_path)
    first, last = (pydicom.dcmread(tmp_path / f"CT_{k}.dcm") for k in (0, small.shape[0] - 1))
    assert (first.Rows, first.Columns) == (128, 128)
    assert [float(v) for v in first.PixelSpacing] == [3.92, 3.92] and float(first.SliceThickness) == 6.0
    assert [float(v) for v in first.ImagePositionPatient] == list(CLINICAL_GRID.origin)
    assert float(last.ImagePositionPatient[2]) == pytest.approx(CLINICAL_GRID.origin[2] + 6.0 * 59)
    read = read_case(tmp_path)
    assert read.grid == small and np.array_equal(read.hu, case.hu)
    for s in case.structures:
        assert np.array_equal(read.structure(s.name).mask, s.mask), s.name


def test_phantom_cli_size_option(tmp_path, capsys):
    from rtautoplan.cli import main

    assert main(["phantom", "prostate", "--size", "clinical", "-o", str(tmp_path)]) == 2
    assert "hn phantom only" in capsys.readouterr().err


def test_liver_has_the_seed_002_organs_and_its_margins_make_the_ptv():
    """Seed 002 §2.15: a liver tumour with SpinalCord, Liver, Heart, Kidneys and Bowel; the liver rules
    (CTV + 5 mm, Ring = Gap + 15 mm) build the PTV; the same seed gives the same patient."""
    from rtautoplan.structures.rules import apply_rules

    case = make_case("liver", 3)
    assert {s.name for s in case.structures} == {"CTV_5000", "Liver", "Heart", "Kidney_L", "Kidney_R", "Bowel",
                                                 "SpinalCord", "External"}
    assert case.prescription.levels[0].dose_gy == 50.0 and case.prescription.fractions == 10
    ctv, liver = case.structure("CTV_5000"), case.structure("Liver")
    assert 10.0 <= ctv.volume_cm3(case.grid) <= 160.0 and 1000.0 <= liver.volume_cm3(case.grid) <= 3500.0
    assert (np.asarray(ctv.mask) & np.asarray(liver.mask)).any()  # the tumour is in the liver
    assert np.array_equal(np.asarray(make_case("liver", 3).structure("CTV_5000").mask), np.asarray(ctv.mask))
    assert not np.array_equal(np.asarray(make_case("liver", 4).structure("CTV_5000").mask), np.asarray(ctv.mask))
    planned = apply_rules(case, "liver")
    ptv = planned.structure("PTV_5000")
    grown = ptv.volume_cm3(case.grid) / ctv.volume_cm3(case.grid)
    r = (3 * ctv.volume_cm3(case.grid) * 1000 / (4 * np.pi)) ** (1 / 3)  # mm, the sphere's radius
    assert not (np.asarray(ctv.mask) & ~np.asarray(ptv.mask)).any()
    assert ((r + 5.0) / r) ** 3 < grown < ((r + 5.0 + 3.0) / r) ** 3  # 5 mm on a 3 mm grid: within a voxel
