"""Synthetic prostate case (seed 000, SPEC §1.2): prostate CTV and PTV (78 Gy in 39
fractions), Bladder, Rectum, Femur_Head_L/R and the body, on about 3 mm voxels.

A seed varies bladder filling, rectal diameter, prostate size and organ positions. Two
populations (``POPULATIONS``): ``anatomy`` ("v1", the first generator, kept bit-identical so
earlier results re-run) and ``anatomy_v2`` ("v2", issue 16: prostate and proximal seminal
vesicles, PTV margin, bladder filling and rectum extent drawn from ranges reported for real
patients, so the PTV overlaps bladder and rectum as in a clinic; sources in docs/decisions.md,
"Calibrated phantom populations").
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

    gas = capsule(xyz, at(0, rectum_y, -40, 1), at(0, rectum_y + 5, 15, 1), rectum_r * 0.35)
    return rois, _hu(rng, grid, rois, fat, pelvic_bones, gas)


def _hu(rng: np.random.Generator, grid: Grid, rois: dict, fat: np.ndarray, bones: np.ndarray,
        gas: np.ndarray) -> np.ndarray:
    """The CT (HU) of a pelvis: tissues by mask, then 8 HU of noise in the body."""
    body = rois["Body"]
    hu = np.full(grid.shape, HU["air"], np.int16)
    hu[body] = HU["soft"]
    hu[fat] = HU["fat"]
    hu[rois["Bladder"]] = HU["urine"]
    hu[bones | rois["Femur_Head_L"] | rois["Femur_Head_R"]] = HU["bone"]
    hu[gas] = HU["gas"]
    hu[body] += rng.normal(0.0, 8.0, int(body.sum())).round().astype(np.int16)
    return hu


# v2 ranges (docs/decisions.md, "Calibrated phantom populations": sources, and which are our choices).
V2 = {
    "prostate_cc": (20.0, 100.0),  # CTV prostate volume: log-normal, median PROSTATE_MEDIAN_CC, clipped
    "sv_length_mm": (5.0, 20.0),  # proximal seminal vesicles in the CTV: 0.5–2 cm (EORTC / RTOG 0815)
    "ptv_margin_mm": (5.0, 10.0),  # CTV → PTV, isotropic
    "bladder_cc": (60.0, 400.0),  # bladder filling at the planning CT, log-uniform
    "bladder_dip_mm": (0.0, 10.0),  # how far the bladder base sits below the prostate's top
    "rectum_radius_mm": (12.0, 19.0),
    "rectum_indent_mm": (0.0, 10.0),  # anterior rectal wall pressed into the prostate's back
    "rectum_below_mm": (10.0, 30.0),  # rectum contoured from this far below the prostate's apex …
    "rectum_above_mm": (10.0, 30.0),  # … to this far above its top
}
PROSTATE_MEDIAN_CC, PROSTATE_LOG_SD = 40.0, 0.35
_PROSTATE_AXES_MM = (22.0, 17.0, 20.0)  # the v1 gland's semi-axes (31 cc), scaled to the drawn volume
_BLADDER_AXES_MM = (38.0, 30.0, 26.0)  # the v1 bladder's semi-axes (124 cc), scaled to the drawn filling


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _axes_for(axes_mm, volume_cc: float) -> tuple[float, float, float]:
    """``axes_mm`` scaled so the ellipsoid holds ``volume_cc`` (cm³)."""
    v0 = 4.0 / 3.0 * np.pi * np.prod(axes_mm) / 1000.0
    k = (volume_cc / v0) ** (1.0 / 3.0)
    return tuple(a * k for a in axes_mm)


def anatomy_v2(rng: np.random.Generator, grid: Grid = GRID):
    """(roi_name, mask) pairs and the HU volume of one pelvis of the calibrated population (v2):
    gland, seminal vesicles, margin, bladder and rectum drawn from ``V2`` (mm, cm³)."""
    from rtautoplan.structures.margins import expand

    xyz = grid.centres()
    scale = rng.uniform(0.94, 1.06)

    def jitter(x, y, z, sd=2.0):
        return tuple(c + rng.normal(0.0, sd) for c in (x, y, z))

    body = elliptic_cylinder(xyz, (0, 0), (170 * scale, 110 * scale), (-200, 200))
    fat = body & ~elliptic_cylinder(xyz, (0, 0), (155 * scale, 95 * scale), (-200, 200))
    prostate_cc = float(np.clip(PROSTATE_MEDIAN_CC * np.exp(rng.normal(0.0, PROSTATE_LOG_SD)), *V2["prostate_cc"]))
    axes = _axes_for(_PROSTATE_AXES_MM, prostate_cc)
    centre = jitter(0.0, 5.0, -10.0)
    top, back, apex = centre[2] + axes[2], centre[1] + axes[1], centre[2] - axes[2]
    gland = ellipsoid(xyz, centre, axes)
    # Proximal seminal vesicles: two tubes from the gland's posterior-superior edge, up, back and out.
    sv_length = rng.uniform(*V2["sv_length_mm"])
    vesicles = np.zeros(grid.shape, bool)
    for sx in (1.0, -1.0):
        start = (sx * 0.3 * axes[0], centre[1] + 0.5 * axes[1], top - 0.3 * axes[2])
        end = (start[0] + sx * 0.6 * sv_length, start[1] + 0.3 * sv_length, start[2] + 0.7 * sv_length)
        vesicles |= capsule(xyz, start, end, 6.0)
    margin = rng.uniform(*V2["ptv_margin_mm"])

    rois = {}
    b_axes = _axes_for(_BLADDER_AXES_MM, _log_uniform(rng, *V2["bladder_cc"]))
    dip = rng.uniform(*V2["bladder_dip_mm"])
    ctv = gland | vesicles
    # The gland and vesicles stay whole; the bladder base cups them and the rectum's anterior wall is
    # indented by them (organs yield to the gland, not the reverse: the CTV keeps its drawn volume).
    rois["Bladder"] = ellipsoid(xyz, jitter(0.0, centre[1] - 3.0, top - dip + b_axes[2]), b_axes) & ~ctv
    r = rng.uniform(*V2["rectum_radius_mm"])
    rectum_y = back - rng.uniform(*V2["rectum_indent_mm"]) + r
    low, high = apex - rng.uniform(*V2["rectum_below_mm"]), top + rng.uniform(*V2["rectum_above_mm"])
    rectum_axis = (jitter(0.0, rectum_y, low + r, 1.0), jitter(0.0, rectum_y + 5.0, high - r, 1.0))
    rois["Rectum"] = capsule(xyz, *rectum_axis, r) & ~ctv & ~rois["Bladder"]
    for tag, sx in (("L", 1), ("R", -1)):
        rois[f"Femur_Head_{tag}"] = sphere(xyz, jitter(sx * 95 * scale, 5, -15), 24.0 * scale)
    femur_necks = capsule(xyz, (95 * scale, 5, -15), (130 * scale, 12, -60), 14.0) | capsule(
        xyz, (-95 * scale, 5, -15), (-130 * scale, 12, -60), 14.0)
    pelvic_bones = (ellipsoid(xyz, (0, 80 * scale, 20), (40, 15, 40)) | ellipsoid(xyz, (0, -55 * scale, -28), (30, 10, 12))
                    | femur_necks)
    rois["CTV_7800"] = ctv
    rois["PTV_7800"] = expand(rois["CTV_7800"], grid.spacing, margin) & body
    rois["Body"] = body

    return rois, _hu(rng, grid, rois, fat, pelvic_bones, capsule(xyz, *rectum_axis, 0.35 * r))


POPULATIONS = {"v1": anatomy, "v2": anatomy_v2}
