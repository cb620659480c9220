"""Synthetic liver case (seed 002 §2.15): a hepatic tumour (CTV, 50 Gy(RBE) in 10 fractions, a
hypofractionated liver scheme) in the liver, with the seed's OARs — SpinalCord, Liver, Heart,
Kidney_L/R, Bowel — and the body, on about 3 mm voxels.

A seed varies the abdomen's size, the liver's size and position, where in the right lobe or dome the
tumour sits (so it lies near the heart, a kidney or the bowel from case to case) and its size
(CTV 15–150 cm³, log-uniform). The PTV is not drawn: the liver rules make it (CTV + 5 mm, SPEC §2.3).
One population ("v1"). HFS coordinates in mm (+x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

import numpy as np

from rtautoplan.case import Grid
from rtautoplan.phantom.shapes import capsule, ellipsoid, elliptic_cylinder, sphere

GRID = Grid(origin=(-210.0, -135.0, -120.0), spacing=(3.0, 3.0, 3.0), shape=(81, 91, 141))
PRESCRIPTION = {"fractions": 10, "levels": [("CTV_5000", 50.0)]}
HU = {"air": -1000, "soft": 40, "fat": -90, "liver": 60, "bone": 700, "lung": -800, "gas": -600}
CTV_CC = (15.0, 150.0)  # tumour volume range, log-uniform (our choice: solitary HCC / metastases treated with PBS)


def anatomy(rng: np.random.Generator, grid: Grid = GRID):
    """(roi_name, mask) pairs and the HU volume of one upper abdomen."""
    xyz = grid.centres()
    scale = rng.uniform(0.92, 1.08)

    def at(x, y, z, sd=3.0):
        return tuple(scale * c + rng.normal(0.0, sd) for c in (x, y, z))

    body = elliptic_cylinder(xyz, (0, 0), (190 * scale, 125 * scale), (-300, 300))
    fat = body & ~elliptic_cylinder(xyz, (0, 0), (175 * scale, 110 * scale), (-300, 300))
    liver_size = rng.uniform(0.9, 1.12)
    liver = ellipsoid(xyz, at(-55, 0, 20), tuple(a * scale * liver_size for a in (95, 80, 70)))
    liver &= ~ellipsoid(xyz, at(40, -40, 20), (60, 40, 50))  # the left lobe tapers under the stomach
    heart = ellipsoid(xyz, at(10, -20, 110), (60, 50, 40))
    lungs = (ellipsoid(xyz, at(-90, 10, 125), (60, 70, 45)) | ellipsoid(xyz, at(90, 10, 125), (60, 70, 45))) & ~heart
    liver &= ~heart & ~lungs
    kidneys = {"L": ellipsoid(xyz, at(75, 60, -50), (30, 30, 55)), "R": ellipsoid(xyz, at(-70, 60, -65), (30, 30, 55))}
    bowel = (ellipsoid(xyz, at(0, -35, -95), (130, 60, 50)) | ellipsoid(xyz, at(30, -20, -40), (60, 45, 35)))
    bowel &= ~liver & ~kidneys["L"] & ~kidneys["R"]
    vertebrae = elliptic_cylinder(xyz, at(0, 75, 0, 1), (22, 20), (-300, 300))
    cord = capsule(xyz, at(0, 80, -300, 1), at(0, 80, 300, 1), 6.0)

    # the tumour: a sphere of the drawn volume around a voxel drawn inside the liver
    radius = (3.0 * np.exp(rng.uniform(*np.log(CTV_CC))) * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    centre = tuple(grid.index_to_patient(np.argwhere(liver)[rng.integers(int(liver.sum()))]))
    ctv = sphere(xyz, centre, radius) & body & ~heart & ~lungs & ~kidneys["L"] & ~kidneys["R"]

    rois = {"CTV_5000": ctv, "Liver": liver, "Heart": heart, "Kidney_L": kidneys["L"], "Kidney_R": kidneys["R"],
            "Bowel": bowel & ~ctv, "SpinalCord": cord, "Body": body}
    hu = np.full(grid.shape, HU["air"], np.int16)
    hu[body] = HU["soft"]
    hu[fat] = HU["fat"]
    hu[liver] = HU["liver"]
    hu[lungs & body] = HU["lung"]
    hu[vertebrae & ~cord] = HU["bone"]
    hu[body] += rng.normal(0.0, 8.0, int(body.sum())).round().astype(np.int16)
    return rois, hu


POPULATIONS = {"v1": anatomy}
