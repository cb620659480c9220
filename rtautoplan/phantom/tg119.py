"""The AAPM TG-119 IMRT test suite as cases: multi-target, mock prostate, mock head and neck, C-shape
(easier) and C-shape (harder), with the report's planning goals.

Source: G. A. Ezzell et al., "IMRT commissioning: Multiple institution planning and dosimetry
comparisons, a report from AAPM Task Group 119", Med. Phys. 36(11), 5359–5373 (2009), and its
test description (G. Ezzell, "TG-119 Commissioning Plans and Measurements", AAPM, draft 9/15/2008),
whose structure sets the AAPM distributes as DICOM. What the report does not state, and we had to
choose (the phantom, the exact placement of the organs, the fractions), is in docs/decisions.md,
"TG-119 test suite (issue 12)".

Every case lies in one water phantom (0 HU): a box 30 cm (left–right) × 20 cm (anterior–posterior)
× 20 cm (superior–inferior), centred on the isocentre, on 3 mm voxels with 1.2–1.5 cm of air
around it. HFS coordinates in mm (+x patient left, +y posterior, +z superior).

``make_case(name)`` builds one case; ``write_tg119(folder)`` writes all five as case folders
(``rtautoplan phantom tg119 -o DIR``; the bundled copy is ``sample_data/tg119``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtautoplan.case import Case, DicomRefs, DoseLevel, Goal, Grid, Normalisation, Prescription, Role, Structure
from rtautoplan.phantom.shapes import ellipsoid, elliptic_cylinder
from rtautoplan.structures.names import target_name

GRID = Grid(origin=(-165.0, -114.0, -102.0), spacing=(3.0, 3.0, 3.0), shape=(69, 77, 111))
BODY_HALF_MM = (150.0, 100.0, 100.0)  # water box half-extents x, y, z
WATER_HU = 0
AIR_HU = -1000
CASES = ("multitarget", "prostate", "headneck", "cshape_easy", "cshape_hard")
REPORT = "AAPM TG-119 (Ezzell et al., Med. Phys. 36:5359, 2009)"

# Geometry (mm) from the TG-119 test description; the placements marked "assumed" are ours.
MULTITARGET_RADIUS, MULTITARGET_LENGTH = 20.0, 40.0  # three 4 cm × 4 cm cylinders, stacked along z (abutting: assumed)
PROSTATE_SEMI_AXES = (20.0, 13.0, 32.5)  # prostate (CTV) 4.0 × 2.6 × 6.5 cm (LR, AP, SI)
PROSTATE_PTV_MARGIN = 6.0  # PTV = prostate + 0.6 cm
RECTUM_RADIUS, RECTUM_Y, RECTUM_Z = 7.5, 15.0, (-60.0, 60.0)  # 1.5 cm cylinder indenting the prostate (assumed 5.5 mm)
BLADDER_SEMI_AXES, BLADDER_CENTRE = (25.0, 20.0, 25.0), (0.0, 0.0, 47.5)  # 5 × 4 × 5 cm on the prostate's top
CSHAPE_CORE_RADIUS, CSHAPE_CORE_LENGTH = 10.0, 100.0  # core: 1 cm radius, 10 cm long
CSHAPE_INNER, CSHAPE_OUTER, CSHAPE_LENGTH = 15.0, 37.0, 80.0  # C: 0.5 cm from the core, outer radius 3.7 cm, 8 cm long
HN_CORD_RADIUS, HN_CORD_Y, HN_CORD_Z = 7.5, 40.0, (-70.0, 70.0)  # assumed: 1.5 cm cord, 4 cm posterior
HN_PTV_SEMI_XY, HN_PTV_Y, HN_PTV_Z = (60.0, 45.0), -10.0, (-40.0, 40.0)  # assumed: anterior to the cord, 8 cm long
HN_CORD_GAP = 15.0  # assumed: 1.5 cm between PTV and cord
HN_PAROTID_SEMI_AXES, HN_PAROTID_CENTRE = (14.0, 15.0, 18.0), (50.0, 25.0, 20.0)  # assumed; x is ± for L/R


@dataclass(frozen=True)
class PublishedGoal:
    """One TG-119 planning goal and the report's multi-institution result for it.

    roi: the ROI name in the case. metric: D<x>% or Dmax (Gy). lower / upper: the goal (Gy).
    mean_gy / sd_gy: the institutions' achieved mean and SD (Gy); None where we could not read the
    report's number (never estimated). table: where in the report the goal is stated.
    """

    case: str
    roi: str
    metric: str
    lower: float | None
    upper: float | None
    mean_gy: float | None = None
    sd_gy: float | None = None
    table: str = "planning-goal table"

    def goal(self) -> Goal:
        return Goal(self.roi, self.metric, "Gy", self.lower, self.upper, 1,
                    f"{REPORT}, {self.table} ({self.case})")


def _goals(case: str, rows) -> tuple[PublishedGoal, ...]:
    return tuple(PublishedGoal(case, roi, metric, lower, upper) for roi, metric, lower, upper in rows)


# The report's planning goals, per case (Gy). The multi-institution means and SDs could not be read
# from the report through our sources: every mean_gy / sd_gy is None (docs/decisions.md).
PUBLISHED: tuple[PublishedGoal, ...] = (
    _goals("multitarget", (("CentralTarget", "D99%", 50.0, None), ("CentralTarget", "D10%", None, 53.0),
                           ("SuperiorTarget", "D99%", 25.0, None), ("SuperiorTarget", "D10%", None, 35.0),
                           ("InferiorTarget", "D99%", 12.5, None), ("InferiorTarget", "D10%", None, 25.0)))
    + _goals("prostate", (("PTV", "D95%", 75.6, None), ("PTV", "D5%", None, 83.0),
                          ("Rectum", "D30%", None, 70.0), ("Rectum", "D10%", None, 75.0),
                          ("Bladder", "D30%", None, 70.0), ("Bladder", "D10%", None, 75.0)))
    + _goals("headneck", (("PTV", "D90%", 50.0, None), ("PTV", "D99%", 46.5, None), ("PTV", "D20%", None, 55.0),
                          ("Cord", "Dmax", None, 40.0), ("Parotid_L", "D50%", None, 20.0),
                          ("Parotid_R", "D50%", None, 20.0)))
    + _goals("cshape_easy", (("OuterTarget", "D95%", 50.0, None), ("OuterTarget", "D10%", None, 55.0),
                             ("Core", "D10%", None, 25.0)))
    + _goals("cshape_hard", (("OuterTarget", "D95%", 50.0, None), ("OuterTarget", "D10%", None, 55.0),
                             ("Core", "D10%", None, 10.0)))
)

# Prescription per case: (target ROI, Gy) levels and fractions (fractions assumed: 2 Gy, prostate 1.8 Gy).
LEVELS = {
    "multitarget": ((("CentralTarget", 50.0), ("SuperiorTarget", 25.0), ("InferiorTarget", 12.5)), 25),
    "prostate": ((("PTV", 75.6),), 42),
    "headneck": ((("PTV", 50.0),), 25),
    "cshape_easy": ((("OuterTarget", 50.0),), 25),
    "cshape_hard": ((("OuterTarget", 50.0),), 25),
}
CTVS = {"Prostate": 75.6}  # CTVs (Gy): the mock prostate's gland, the level of its PTV
# Normalisation: each case's primary target goal, as the report states the prescription (a planner
# normalises so that the goal the prescription is written as holds; D95 = Rx would leave a D99 or D90
# prescription under-dosed by construction).
NORMALISATION = {"multitarget": ("CentralTarget", "D99%", 50.0), "prostate": ("PTV", "D95%", 75.6),
                 "headneck": ("PTV", "D90%", 50.0), "cshape_easy": ("OuterTarget", "D95%", 50.0),
                 "cshape_hard": ("OuterTarget", "D95%", 50.0)}
# ROI names of the report that are not TG-263 names → what rtautoplan reads them as (prescription.json).
STRUCTURE_NAMES = {"CentralTarget": target_name(Role.PTV, 50.0), "SuperiorTarget": target_name(Role.PTV, 25.0),
                   "InferiorTarget": target_name(Role.PTV, 12.5), "OuterTarget": target_name(Role.PTV, 50.0),
                   "Prostate": target_name(Role.CTV, 75.6), "Core": "Core"}


def published(case: str) -> tuple[PublishedGoal, ...]:
    return tuple(p for p in PUBLISHED if p.case == case)


def _cylinder(xyz, centre_xy, radius: float, z_range) -> np.ndarray:
    return elliptic_cylinder(xyz, centre_xy, (radius, radius), z_range)


def _body(xyz) -> np.ndarray:
    x, y, z = xyz
    hx, hy, hz = BODY_HALF_MM
    return (np.abs(x) <= hx) & (np.abs(y) <= hy) & (np.abs(z) <= hz)


def multitarget(xyz) -> dict[str, np.ndarray]:
    """Three cylinders (4 cm diameter, 4 cm long) stacked along the axis of rotation."""
    half = MULTITARGET_LENGTH / 2
    return {name: _cylinder(xyz, (0, 0), MULTITARGET_RADIUS, (zc - half, zc + half))
            for name, zc in (("CentralTarget", 0.0), ("SuperiorTarget", MULTITARGET_LENGTH),
                             ("InferiorTarget", -MULTITARGET_LENGTH))}


def prostate(xyz) -> dict[str, np.ndarray]:
    """Prostate 4.0 × 2.6 × 6.5 cm, PTV = prostate + 0.6 cm, a 1.5 cm rectum indenting its back, a
    5 × 4 × 5 cm bladder on its top."""
    from rtautoplan.structures.margins import expand

    rectum = _cylinder(xyz, (0, RECTUM_Y), RECTUM_RADIUS, RECTUM_Z)
    bladder = ellipsoid(xyz, BLADDER_CENTRE, BLADDER_SEMI_AXES)
    gland = ellipsoid(xyz, (0, 0, 0), PROSTATE_SEMI_AXES) & ~rectum & ~bladder
    return {"PTV": expand(gland, GRID.spacing, PROSTATE_PTV_MARGIN), "Prostate": gland, "Rectum": rectum,
            "Bladder": bladder}


def headneck(xyz) -> dict[str, np.ndarray]:
    """A PTV anterior to the cord, 1.5 cm from it, with the parotids lateral-posterior to it."""
    cord = _cylinder(xyz, (0, HN_CORD_Y), HN_CORD_RADIUS, HN_CORD_Z)
    px, py, pz = HN_PAROTID_CENTRE
    parotids = {f"Parotid_{side}": ellipsoid(xyz, (sign * px, py, pz), HN_PAROTID_SEMI_AXES)
                for side, sign in (("L", 1), ("R", -1))}
    near_cord = _cylinder(xyz, (0, HN_CORD_Y), HN_CORD_RADIUS + HN_CORD_GAP, HN_CORD_Z)
    ptv = elliptic_cylinder(xyz, (0, HN_PTV_Y), HN_PTV_SEMI_XY, HN_PTV_Z) & ~near_cord
    for mask in parotids.values():
        ptv &= ~mask
    return {"PTV": ptv, "Cord": cord, **parotids}


def cshape(xyz) -> dict[str, np.ndarray]:
    """A C-shaped target 0.5 cm around a cylindrical core (1 cm radius, 10 cm long), open posteriorly."""
    x, y, z = xyz
    r = np.sqrt(x**2 + y**2)
    half = CSHAPE_LENGTH / 2
    opening = (y > 0) & (np.abs(x) < CSHAPE_INNER)
    ring = (r >= CSHAPE_INNER) & (r <= CSHAPE_OUTER) & (np.abs(z) <= half) & ~opening
    core = _cylinder(xyz, (0, 0), CSHAPE_CORE_RADIUS, (-CSHAPE_CORE_LENGTH / 2, CSHAPE_CORE_LENGTH / 2))
    return {"OuterTarget": ring, "Core": core}


COLORS = ((255, 0, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))  # display RGB, in ROI order
GEOMETRY = {"multitarget": multitarget, "prostate": prostate, "headneck": headneck, "cshape_easy": cshape,
            "cshape_hard": cshape}


def _chord_area(radius: float, half_width: float) -> float:
    """Area (mm²) of the half-disc of ``radius`` (y > 0) within |x| ≤ half_width."""
    a = half_width
    return a * math.sqrt(radius**2 - a**2) + radius**2 * math.asin(a / radius)


def nominal_volumes_cm3() -> dict[str, dict[str, float]]:
    """Volumes (cm³) of the analytic shapes before voxelisation, per case and ROI (overlaps not removed)."""
    multi = math.pi * MULTITARGET_RADIUS**2 * MULTITARGET_LENGTH / 1000
    opening = _chord_area(CSHAPE_OUTER, CSHAPE_INNER) - _chord_area(CSHAPE_INNER, CSHAPE_INNER)  # posterior slot
    ring = (math.pi * (CSHAPE_OUTER**2 - CSHAPE_INNER**2) - opening) * CSHAPE_LENGTH / 1000
    core = math.pi * CSHAPE_CORE_RADIUS**2 * CSHAPE_CORE_LENGTH / 1000
    c = {"OuterTarget": ring, "Core": core}
    return {"multitarget": dict.fromkeys(("CentralTarget", "SuperiorTarget", "InferiorTarget"), multi),
            "prostate": {"Rectum": math.pi * RECTUM_RADIUS**2 * (RECTUM_Z[1] - RECTUM_Z[0]) / 1000,
                         "Bladder": 4 / 3 * math.pi * math.prod(BLADDER_SEMI_AXES) / 1000},
            "headneck": {"Cord": math.pi * HN_CORD_RADIUS**2 * (HN_CORD_Z[1] - HN_CORD_Z[0]) / 1000,
                         "Parotid_L": 4 / 3 * math.pi * math.prod(HN_PAROTID_SEMI_AXES) / 1000,
                         "Parotid_R": 4 / 3 * math.pi * math.prod(HN_PAROTID_SEMI_AXES) / 1000},
            "cshape_easy": c, "cshape_hard": c}


def make_case(name: str) -> Case:
    """The TG-119 case ``name`` (one of ``CASES``): water phantom, structures, prescription, goals."""
    if name not in GEOMETRY:
        raise ValueError(f"unknown TG-119 case {name!r}; the cases are {', '.join(CASES)}")
    xyz = GRID.centres()
    body = _body(xyz)
    rois = {roi: mask & body for roi, mask in GEOMETRY[name](xyz).items()}
    hu = np.full(GRID.shape, AIR_HU, np.int16)
    hu[body] = WATER_HU
    levels, fractions = LEVELS[name]
    rx = dict(levels) | CTVS
    structures = []
    for n, (roi, mask) in enumerate(rois.items()):
        role = Role.CTV if roi in CTVS else Role.PTV if roi in rx else Role.OAR
        structures.append(Structure(name=roi, mask=mask, role=role, rx_gy=rx.get(roi), roi_name=roi,
                                    color=COLORS[n % len(COLORS)]))
    structures.append(Structure(name="BODY", mask=body, role=Role.EXTERNAL, roi_name="BODY", color=(0, 255, 0)))
    prescription = Prescription(tuple(DoseLevel(t, d) for t, d in levels), fractions,
                                goals=tuple(p.goal() for p in published(name)), site="generic",
                                normalisation=Normalisation(*NORMALISATION[name]))
    refs = DicomRefs(patient_id=f"TG119-{name.upper()}", patient_name=f"TG119^{name}",
                     extra={"StudyID": "1", "StudyDate": "20090101", "StudyTime": "120000",
                            "StudyDescription": f"AAPM TG-119 {name}"})
    return Case(f"tg119_{name}", GRID, hu, tuple(structures), prescription, refs)



def write_tg119(folder: str | Path, names=CASES) -> dict[str, Path]:
    """Write each case as ``folder/<case>/`` (CT series, RTSTRUCT, prescription.json with its goals);
    returns case → folder. The same call writes the same files (UIDs seeded by the case name)."""
    from rtautoplan.dicom.read import write_case

    out = {}
    for name in names:
        case = make_case(name)
        path = Path(folder) / name
        path.mkdir(parents=True, exist_ok=True)
        names_used = {roi: mapped for roi, mapped in STRUCTURE_NAMES.items() if case.has(roi)}
        write_case(case, path, uid_seed=f"tg119/{name}", structure_names=names_used)
        out[name] = path
    return out
