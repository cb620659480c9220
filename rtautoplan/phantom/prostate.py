"""Synthetic prostate case (seed 000, SPEC §1.2): prostate CTV and PTV (78 Gy in 39
fractions), Bladder, Rectum, Femur_Head_L/R and the body, on about 3 mm voxels.

A seed varies bladder filling, rectal diameter, prostate size and organ positions.
HFS coordinates in mm (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

import numpy as np

from rtautoplan.case import Grid
from rtautoplan.phantom.shapes import capsule, ellipsoid, elliptic_cylinder, sphere

GRID = Grid(origin=(-180.0, -120.0, -60.0), spacing=(3.0, 3.0, 3.0), shape=(41, 81, 121))
PRESCRIPTION = {"fractions": 39, "levels": [("PTV_7800", 78.0)]}
PTV_MARGIN_MM = 5.0
HU = {"air": -1000, "soft": 40, "fat": -90, "urine": 10, "bone": 700, "gas": -600}


def anatomy(rng: np.random.Generator, grid: Grid = GRID):
    """(roi_name, mask) pairs and the HU volume of one pelvis."""
    from rtautoplan.structures.margins import expand

    xyz = grid.centres()
    scale = rng.uniform(0.94, 1.06)

    def at(x, y, z, sd=2.0):
        return tuple(scale * c + rng.normal(0.0, sd) for c in (x, y, z))

    body = elliptic_cylinder(xyz, (0, 0), (170 * scale, 110 * scale), (-200, 200))
    fat = body & ~elliptic_cylinder(xyz, (0, 0), (155 * scale, 95 * scale), (-200, 200))
    rois = {}
    ctv = ellipsoid(xyz, at(0, 5, -10), tuple(a * scale * rng.uniform(0.85, 1.15) for a in (22, 17, 20)))
    # Bladder base and anterior rectal wall press on the prostate, as in a real pelvis: the
    # bladder dips 4–14 mm into the prostate's top, the rectum 1–7 mm into its back, so the PTV
    # overlaps both and the OAR criteria of SPEC §1.7 are a real trade-off against coverage.
    filling = rng.uniform(0.8, 1.25)
    bladder_dip = rng.uniform(4.0, 14.0)
    rois["Bladder"] = ellipsoid(xyz, at(0, -12, 10 - bladder_dip + 26 * filling),
                                (38 * filling, 30 * filling, 26 * filling))
    rectum_r = rng.uniform(13.0, 18.0)
    rectum_y = (22.0 - rng.uniform(1.0, 7.0)) * scale + rectum_r
    rois["Rectum"] = capsule(xyz, at(0, rectum_y, -38, 1), at(0, rectum_y + 5, 12, 1), rectum_r)
    for tag, sx in (("L", 1), ("R", -1)):
        rois[f"Femur_Head_{tag}"] = sphere(xyz, at(sx * 95, 5, -15), 24.0 * scale)
    femur_necks = capsule(xyz, at(95, 5, -15), at(130, 12, -60), 14.0) | capsule(xyz, at(-95, 5, -15), at(-130, 12, -60), 14.0)
    pelvic_bones = (ellipsoid(xyz, at(0, 80, 20), (40, 15, 40)) | ellipsoid(xyz, at(0, -55, -28), (30, 10, 12))
                    | femur_necks)
    rois["CTV_7800"] = ctv & ~rois["Bladder"] & ~rois["Rectum"]
    rois["PTV_7800"] = expand(rois["CTV_7800"], grid.spacing, PTV_MARGIN_MM) & body
    rois["Body"] = body

    hu = np.full(grid.shape, HU["air"], np.int16)
    hu[body] = HU["soft"]
    hu[fat] = HU["fat"]
    hu[rois["Bladder"]] = HU["urine"]
    hu[pelvic_bones | rois["Femur_Head_L"] | rois["Femur_Head_R"]] = HU["bone"]
    gas = capsule(xyz, at(0, rectum_y, -40, 1), at(0, rectum_y + 5, 15, 1), rectum_r * 0.35)
    hu[gas] = HU["gas"]
    hu[body] += rng.normal(0.0, 8.0, int(body.sum())).round().astype(np.int16)
    return rois, hu
