"""Synthetic patients written as real DICOM (CT in HU + RTSTRUCT + prescription.json).

``make_case("hn", seed)`` builds a head-and-neck patient, ``make_case("prostate", seed)`` a
pelvis; each seed is a different but plausible anatomy, so the same generator gives the
bundled samples (``sample_data/hn01`` is hn seed 1, ``prostate01`` is prostate seed 1), the
training variants and the held-out evaluation variants. ``rtautoplan phantom`` is the CLI.

``population`` picks the generator: "v1" (the first one, the default, so the bundled samples and
every earlier result re-run bit-identically) or "v2" (issue 16: anatomy drawn from ranges reported
for real patients, the population new training and evaluation use; docs/decisions.md,
"Calibrated phantom populations"). A v2 case's id carries the version (``prostate1000-v2``).

``size`` picks the grid the anatomy (analytic solids in mm) is sampled on: "standard" (the
bundled samples), "clinical" (hn: 512 × 512 pixels of 0.98 mm, 180 slices of 2 mm; benchmarks
only, never committed as data) or any :class:`Grid` (e.g. a coarsened clinical grid in tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtautoplan.case import Case, DicomRefs, DoseLevel, Grid, Prescription, Structure
from rtautoplan.phantom import hn, liver, prostate
from rtautoplan.structures import names

SITES = {"hn": hn, "prostate": prostate, "liver": liver}

COLORS = {
    "External": (0, 255, 0), "Skin": (255, 200, 150), "SpinalCord": (255, 255, 0), "Brainstem": (160, 32, 240),
    "Bone_Mandible": (230, 230, 230), "Cavity_Oral": (255, 105, 180), "Larynx": (0, 200, 200),
    "Esophagus": (139, 69, 19), "OpticChiasm": (255, 128, 0), "Bladder": (255, 255, 0), "Rectum": (139, 69, 19),
    "Liver": (160, 82, 45), "Heart": (220, 0, 80), "Bowel": (255, 200, 120),
}
SIDE_COLORS = {
    "Parotid": (0, 0, 255), "Eye": (0, 255, 255), "Lens": (255, 0, 255), "OpticNrv": (255, 165, 0),
    "Cochlea": (128, 128, 0), "Lobe_Temporal": (173, 216, 230), "Joint_TM": (205, 133, 63),
    "Femur_Head": (222, 184, 135), "Kidney": (150, 75, 200),
}
TARGET_COLORS = [(255, 0, 0), (255, 140, 0), (255, 215, 0), (220, 20, 60)]


def color_for(name: str, role_index: int = 0) -> tuple[int, int, int]:
    """Display colour (RGB) of a structure: a fixed table for organs, by dose level for targets."""
    if name in COLORS:
        return COLORS[name]
    stem = name.rsplit("_", 1)[0]
    if stem in SIDE_COLORS:
        return SIDE_COLORS[stem]
    return TARGET_COLORS[role_index % len(TARGET_COLORS)]


def phantom_grid(site: str, size: str | Grid = "standard") -> Grid:
    """The grid of a ``site`` phantom of ``size`` ("standard", "clinical" or a Grid, module docstring)."""
    if isinstance(size, Grid):
        return size
    grids = {"standard": SITES[site].GRID, "clinical": getattr(SITES[site], "CLINICAL_GRID", None)}
    if grids.get(size) is None:
        raise ValueError(f"no {size!r} size for the {site} phantom; sizes: "
                         f"{', '.join(k for k, g in grids.items() if g is not None)}")
    return grids[size]


POPULATION_DEFAULT = "v1"  # make_case's default: the bundled samples' generator
POPULATION_NEW = "v2"  # what new training and evaluation draw from (``rtautoplan train`` / ``evaluate``)


def populations(site: str) -> tuple[str, ...]:
    """The population versions of ``site``'s generator."""
    return tuple(SITES[site].POPULATIONS)


def make_case(site: str, seed: int, size: str | Grid = "standard", population: str = POPULATION_DEFAULT) -> Case:
    """One synthetic patient of ``site`` ("hn" or "prostate") from ``population`` ("v1", "v2"); the
    same seed and population give the same patient, sampled on the grid of ``size`` (module docstring)."""
    module = SITES[site]
    if population not in module.POPULATIONS:
        raise ValueError(f"no population {population!r} for the {site} phantom; populations: "
                         f"{', '.join(module.POPULATIONS)}")
    grid = phantom_grid(site, size)
    rng = np.random.default_rng(seed)
    rois, hu = module.POPULATIONS[population](rng, grid)
    spec = module.PRESCRIPTION
    prescription = Prescription(tuple(DoseLevel(t, d) for t, d in spec["levels"]), spec["fractions"])
    structures = []
    for roi_name, mask in rois.items():
        parsed = names.parse(roi_name)
        level = names.priority_level(parsed.name, parsed.role)
        dose_index = [lv.dose_gy for lv in prescription.levels].index(parsed.dose_gy) if parsed.dose_gy else 0
        structures.append(Structure(name=parsed.name, mask=mask, role=parsed.role, level=level, rx_gy=parsed.dose_gy,
                                    roi_name=roi_name, color=color_for(parsed.name, dose_index)))
    case_id = f"{site}{seed:02d}" if size == "standard" else f"{site}{seed:02d}-{'x'.join(map(str, grid.shape[::-1]))}"
    if population != "v1":
        case_id += f"-{population}"
    refs = _refs(case_id, grid.shape[0])
    return Case(case_id, grid, hu, tuple(structures), prescription, refs)


def _refs(case_id: str, n_slices: int) -> DicomRefs:
    from rtautoplan.dicom.uid import new_uid

    return DicomRefs(
        patient_id=f"RTAP-{case_id.upper()}",
        patient_name=f"Phantom^{case_id}",
        study_instance_uid=new_uid(f"{case_id}/study"),
        frame_of_reference_uid=new_uid(f"{case_id}/for"),
        ct_series_instance_uid=new_uid(f"{case_id}/ct"),
        ct_sop_instance_uids=tuple(new_uid(f"{case_id}/ct/{k}") for k in range(n_slices)),
        extra={"StudyID": "1", "StudyDate": "20260101", "StudyTime": "120000",
               "StudyDescription": "rtautoplan synthetic phantom"},
    )


def write_phantom(site: str, seed: int, folder: Path, size: str | Grid = "standard",
                  population: str = POPULATION_DEFAULT) -> Case:
    """Generate a phantom and write it to ``folder`` as CT + RTSTRUCT + prescription.json."""
    from rtautoplan.dicom.read import write_case

    case = make_case(site, seed, size, population)
    write_case(case, Path(folder))
    return case
