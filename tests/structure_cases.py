"""Tiny constructed cases for the structures tests: boolean masks on a small anisotropic grid."""

import numpy as np

from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure
from rtautoplan.structures.names import target_name

SHAPE = (20, 60, 60)
SPACING = (2.0, 1.0, 1.0)  # (dz, dy, dx) mm


def ball(centre_mm, radius_mm):
    """Voxels whose centre lies within radius_mm of centre_mm = (z, y, x) in mm from voxel [0, 0, 0]."""
    k, j, i = np.indices(SHAPE, dtype=float)
    rho2 = sum((a * s - c) ** 2 for a, s, c in zip((k, j, i), SPACING, centre_mm))
    return rho2 <= radius_mm**2


def cuboid(k, j, i):
    mask = np.zeros(SHAPE, bool)
    mask[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = True
    return mask


def ctv(dose_gy, mask):
    return Structure(target_name(Role.CTV, dose_gy), mask, Role.CTV, 2, dose_gy, roi_name=f"CTV {dose_gy:g}")


def oar(name, mask, level=None):
    return Structure(name, mask, Role.OAR, level, roi_name=name)


def make_case(*structures, levels=(70.0,), external=None):
    """A case with these structures, an External (whole grid unless given) and the dose levels (Gy)."""
    body = Structure("External", np.ones(SHAPE, bool) if external is None else external, Role.EXTERNAL,
                     roi_name="BODY")
    rx = Prescription(tuple(DoseLevel(target_name(Role.CTV, d), d) for d in levels), 35)
    return Case("test", Grid((0.0, 0.0, 0.0), SPACING, SHAPE), np.zeros(SHAPE, np.int16), (body, *structures), rx)


def two_levels(*extra):
    """CTV_7000 and CTV_6000, 5 mm radius balls 12 mm apart along x (surfaces 2 mm apart)."""
    return make_case(ctv(70.0, ball((20, 30, 22), 5)), ctv(60.0, ball((20, 30, 34), 5)), *extra, levels=(70.0, 60.0))
