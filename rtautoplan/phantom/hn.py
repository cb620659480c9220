"""Synthetic head-and-neck case: three dose levels (70 / 60 / 54 Gy in 35 fractions, SIB)
with overlapping CTVs, and the OARs the seed-002 rules, the seed-003 OAR list and the
seed-004 goals need (SPEC §2.4, §3.1, §4.2).

Anatomy is built from analytic solids placed where they sit in an adult (HFS: +x patient
left, +y posterior, +z superior, mm). A seed moves and scales every organ a little and puts
the primary tumour on the left or the right, so seeds give distinct but plausible patients.
Two populations (``POPULATIONS``): "v1" (the first generator, bit-identical) and "v2" (issue 16:
parotid volumes, parotid–target overlaps and the primary's nearness to the oral cavity drawn as in
real cohorts; docs/decisions.md, "Calibrated phantom populations").
"""

from __future__ import annotations

import numpy as np

from rtautoplan.case import Grid
from rtautoplan.phantom.shapes import capsule, ellipsoid, elliptic_cylinder, parabolic_arch, sphere

GRID = Grid(origin=(-100.0, -115.0, -90.0), spacing=(3.0, 2.5, 2.5), shape=(70, 89, 81))
# A clinical H&N CT: 512 × 512 pixels of 0.98 mm (50 cm field of view), 180 slices of 2 mm from
# below the neck (z = -238 mm) to the vertex.
CLINICAL_GRID = Grid(origin=(-250.0, -250.0, -238.0), spacing=(2.0, 0.98, 0.98), shape=(180, 512, 512))
PRESCRIPTION = {"fractions": 35, "levels": [("CTV_7000", 70.0), ("CTV_6000", 60.0), ("CTV_5400", 54.0)]}

# HU of the tissues (ICRU 46-like soft tissue, cortical bone, air)
HU = {"air": -1000, "soft": 40, "brain": 35, "eye": 10, "bone": 900, "dense_bone": 1200, "airway": -900}


# v2 ranges (issue 16; docs/decisions.md, "Calibrated phantom populations": sources, and which are our choices).
V2 = {
    "parotid_cc": (12.0, 45.0),  # gland volume: log-normal, median PAROTID_MEDIAN_CC, clipped
    "ipsi_reach_mm": (-10.0, 8.0),  # how far the ipsilateral level II nodes reach up into the parotid
    "contra_reach_mm": (-10.0, 4.0),  # the same for the contralateral (elective) level II nodes
    "primary_medial_mm": (4.0, 18.0),  # |x| of the primary tumour's centre: toward the midline, the oral cavity
}
PAROTID_MEDIAN_CC, PAROTID_LOG_SD = 25.0, 0.3
_PAROTID_AXES_MM = (12.0, 18.0, 20.0)  # the v1 gland's semi-axes (18 cc), scaled to the drawn volume


def anatomy(rng: np.random.Generator, grid: Grid = GRID):
    """(roi_name, mask) pairs and the HU volume of one head-and-neck patient (v1)."""
    return _anatomy(rng, grid, v2=False)


def anatomy_v2(rng: np.random.Generator, grid: Grid = GRID):
    """One patient of the calibrated population (v2): parotid volumes, how far the nodal targets
    reach into each parotid and how near the primary sits to the oral cavity drawn from ``V2``."""
    return _anatomy(rng, grid, v2=True)


def _anatomy(rng: np.random.Generator, grid: Grid, v2: bool):
    xyz = grid.centres()
    scale = rng.uniform(0.94, 1.06)
    side = rng.choice([-1.0, 1.0])  # +1: primary tumour on the patient's left

    def at(x, y, z, sd=2.0):
        """An organ centre jittered by N(0, sd) mm and scaled with the patient."""
        return tuple(scale * c + rng.normal(0.0, sd) for c in (x, y, z))

    def size(*axes, spread=0.08):
        return tuple(a * scale * rng.uniform(1 - spread, 1 + spread) for a in axes)

    head = ellipsoid(xyz, (0, -5, 40), (72 * scale, 92 * scale, 72))
    face = ellipsoid(xyz, (0, -30, -15), (52 * scale, 55 * scale, 32))
    neck = elliptic_cylinder(xyz, (0, 5), (56 * scale, 60 * scale), (-300, 0))
    body = head | face | neck

    brain = ellipsoid(xyz, (0, 0, 55), (62 * scale, 80 * scale, 50)) & (xyz[2] > 20)
    skull = ellipsoid(xyz, (0, -2, 52), (68 * scale, 88 * scale, 58)) & ~brain & (xyz[2] > 15)
    vertebrae = elliptic_cylinder(xyz, (0, 24 * scale), (14, 14), (-300, -5))

    rois = {}
    rois["Brainstem"] = ellipsoid(xyz, at(0, 20, 12, 1), size(11, 12, 22))
    rois["SpinalCord"] = capsule(xyz, at(0, 28, -95, 1), at(0, 24, -8, 1), 5.0)
    vertebrae &= ~elliptic_cylinder(xyz, (0, 26 * scale), (7, 7), (-300, -5))
    arch_apex = at(0, -72, 0)
    rois["Mandible"] = parabolic_arch(xyz, arch_apex, 0.021 / scale, 46 * scale, 6.0, (-38, -14)) | capsule(
        xyz, at(-47, -25, -25), at(-50, -2, 6), 6.0) | capsule(xyz, at(47, -25, -25), at(50, -2, 6), 6.0)
    for tag, sx in (("L", 1), ("R", -1)):
        rois[f"TMJ_{tag}"] = sphere(xyz, at(sx * 50, 2, 10), 7.0 * scale)
        if v2:
            volume = float(np.clip(PAROTID_MEDIAN_CC * np.exp(rng.normal(0.0, PAROTID_LOG_SD)), *V2["parotid_cc"]))
            k = (volume / (4.0 / 3.0 * np.pi * np.prod(_PAROTID_AXES_MM) / 1000.0)) ** (1.0 / 3.0)
            rois[f"Parotid_{tag}"] = ellipsoid(xyz, at(sx * 45, 0, -12), tuple(a * k for a in _PAROTID_AXES_MM))
        else:
            rois[f"Parotid_{tag}"] = ellipsoid(xyz, at(sx * 45, 0, -12), size(12, 18, 20))
        eye_c = at(sx * 32, -68, 45, 1)
        rois[f"Eye_{tag}"] = sphere(xyz, eye_c, 12.0)
        rois[f"Lens_{tag}"] = sphere(xyz, (eye_c[0], eye_c[1] - 7, eye_c[2]), 4.0)
        rois[f"OpticNrv_{tag}"] = capsule(xyz, (eye_c[0] * 0.93, eye_c[1] + 11, eye_c[2] - 1), at(sx * 9, -20, 41, 1), 3.0)
        rois[f"Cochlea_{tag}"] = sphere(xyz, at(sx * 42, 18, 22, 1), 4.0)
        rois[f"TemporalLobe_{tag}"] = ellipsoid(xyz, at(sx * 42, -5, 48), size(20, 35, 20)) & brain
    rois["OpticChiasm"] = ellipsoid(xyz, at(0, -15, 41, 1), size(12, 6, 4.5))
    rois["Cavity_Oral"] = ellipsoid(xyz, at(0, -45, -18), size(28, 22, 12))
    larynx_c = at(0, -38, -58)
    rois["Larynx"] = ellipsoid(xyz, larynx_c, size(13, 13, 18))
    airway = ellipsoid(xyz, larynx_c, (5, 6, 14)) | capsule(xyz, (0, larynx_c[1], -200), larynx_c, 6.0)
    rois["Esophagus"] = capsule(xyz, at(0, 0, -95, 1), at(0, 0, -58, 1), 7.0)

    under_skin = _inner(body, grid, 3.0)
    rois = {name: mask & under_skin for name, mask in rois.items()}  # organs lie under the skin
    inner_body = _inner(body, grid, 6.0)
    if v2:
        # Primary nearer the midline (oropharynx / oral tongue, next to the oral cavity); high-risk
        # nodes below the parotid, reaching up into its tail by ipsi_reach; elective nodes likewise.
        ctv70 = ellipsoid(xyz, at(side * rng.uniform(*V2["primary_medial_mm"]), -22, -20),
                          size(16, 17, 18, spread=0.15))
        ctv60 = ellipsoid(xyz, at(side * 30, -3, -42 + rng.uniform(*V2["ipsi_reach_mm"])),
                          size(17, 21, 24, spread=0.12)) | ctv70
        contra = -side
        ctv54 = (ellipsoid(xyz, at(side * 35, 5, -50), size(15, 20, 30))
                 | ellipsoid(xyz, at(contra * 35, 5, -50 + rng.uniform(*V2["contra_reach_mm"])), size(15, 20, 30)))
    else:
        ctv70 = ellipsoid(xyz, at(side * 28, -22, -20), size(16, 17, 18, spread=0.15))
        ctv60 = ellipsoid(xyz, at(side * 32, -5, -30), size(20, 24, 30, spread=0.12)) | ctv70
        ctv54 = (ellipsoid(xyz, at(35, 5, -50), size(15, 20, 30)) | ellipsoid(xyz, at(-35, 5, -50), size(15, 20, 30)))
    rois["CTV_7000"] = ctv70 & inner_body
    rois["CTV_6000"] = ctv60 & inner_body
    rois["CTV_5400"] = (ctv54 | ctv60) & inner_body
    rois["Body"] = body
    rois["Skin"] = body & ~_inner(body, grid, 3.0)

    hu = np.full(grid.shape, HU["air"], np.int16)
    hu[body] = HU["soft"]
    hu[brain] = HU["brain"]
    for tissue, mask in (("bone", (skull | vertebrae) & body), ("dense_bone", rois["Mandible"]), ("airway", airway & body),
                         ("eye", rois["Eye_L"] | rois["Eye_R"])):
        hu[mask] = HU[tissue]
    hu[body] += rng.normal(0.0, 8.0, int(body.sum())).round().astype(np.int16)
    return rois, hu


POPULATIONS = {"v1": anatomy, "v2": anatomy_v2}


def _inner(mask: np.ndarray, grid: Grid, mm: float) -> np.ndarray:
    from rtautoplan.structures.margins import shrink

    return shrink(mask, grid.spacing, mm)
