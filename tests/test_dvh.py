"""DVH and metrics: exact on analytic shapes, consistent with each other."""

import numpy as np
import pytest
from scipy.optimize import brentq

from rtautoplan import dvh as D

R = 30.0  # sphere radius (mm)
D0, G = 50.0, 0.5  # dose at the centre (Gy) and gradient (Gy/mm)


def cap_fraction(z0):
    """Volume fraction of a sphere of radius R above the plane z = z0 (sphere-cap volume)."""
    z0 = np.clip(z0, -R, R)
    return (R - z0) ** 2 * (2 * R + z0) / (4 * R**3)


def sphere_case(spacing, axis):
    """Voxelised sphere (centre on a voxel centre) with dose D0 + G·(coordinate along ``axis``)."""
    n = [2 * int(np.ceil(R / s)) + 3 for s in spacing]
    coords = np.ogrid[tuple(slice(0, m) for m in n)]
    pos = [(c - m // 2) * s for c, m, s in zip(coords, n, spacing)]
    mask = (pos[0] ** 2 + pos[1] ** 2 + pos[2] ** 2) <= R**2
    dose = D0 + G * pos[axis] + 0 * mask
    return dose, mask


# (spacing, gradient axis): isotropic 1 mm; anisotropic CT-like grid with the gradient along
# the slices (z) or in-plane (x).
CASES = [((1.0, 1.0, 1.0), 0), ((2.5, 1.0, 1.0), 0), ((2.5, 1.0, 1.0), 2)]


@pytest.mark.parametrize("spacing,axis", CASES)
def test_sphere_with_linear_gradient_matches_the_analytic_dvh(spacing, axis):
    dose, mask = sphere_case(spacing, axis)
    vv = np.prod(spacing) / 1000.0
    h = D.dvh(dose, mask, bin_gy=0.01, voxel_volume_cm3=vv)
    analytic = cap_fraction((h.dose_gy - D0) / G)
    step = spacing[axis]
    # Doses are sampled at voxel centres, so the staircase DVH lies within half a voxel step
    # (G·step/2 in dose) of the continuous one: in volume, max|dV/dz|·step/2 with
    # max|dV/dz| = 3/(4R); 0.002 more for the voxelised surface (measured: 0.0127, 0.0313).
    assert np.max(np.abs(h.volume - analytic)) <= 3 / (4 * R) * step / 2 + 0.002
    assert h.total_cm3 == pytest.approx(4 / 3 * np.pi * R**3 / 1000, rel=0.01)
    # Dmean and D50: exact by symmetry; Dx within half a voxel step of dose (G·step/2).
    assert D.dmean(dose, mask) == pytest.approx(D0, abs=1e-9)
    assert D.d_percent(dose, mask, 50) == pytest.approx(D0, abs=1e-9)
    for x in (95, 98, 2, 10):
        z = brentq(lambda z0: cap_fraction(z0) - x / 100, -R, R)
        assert D.d_percent(dose, mask, x) == pytest.approx(D0 + G * z, abs=G * step / 2)


def test_uniform_dose_gives_a_step_dvh():
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True
    dose = np.full(mask.shape, 60.0)
    dose[~mask] = 0.0
    h = D.dvh(dose, mask, bin_gy=0.5)
    assert np.all(h.volume[h.dose_gy <= 60.0] == 1.0)
    assert np.all(h.volume[h.dose_gy > 60.0] == 0.0)
    assert h.dose_gy[0] == 0 and h.dose_gy[-1] > 60.0
    m = D.metrics(dose, mask, 0.001, rx_gy=60.0)
    assert m["Dmin"] == m["Dmax"] == m["Dmean"] == m["D95"] == m["D2"] == 60.0
    assert m["V100%"] == 1.0 and m["V107%"] == 0.0 and m["HI"] == 0.0


def test_d_cc_on_a_known_voxel_set():
    # Ten voxels of 0.1 cm³ with doses 1…10 Gy. Voxel k (ascending) stands for the volume
    # fraction (k + ½)/10 from the cold end; Dx is interpolated between those positions.
    dose = np.arange(1.0, 11.0)
    mask = np.ones(10, bool)
    assert D.d_cc(dose, mask, 0.5, 0.1) == pytest.approx(5.5)  # hottest 0.5 cm³: half-way 5 → 6
    assert D.d_cc(dose, mask, 0.2, 0.1) == pytest.approx(8.5)
    assert D.d_cc(dose, mask, 0.03, 0.1) == pytest.approx(10.0)  # within the hottest half voxel
    assert D.d_cc(dose, mask, 5.0, 0.1) == 1.0  # more than the structure: Dmin
    assert D.v_gy(dose, mask, 8.0) == pytest.approx(0.3)  # ≥ 8 Gy: 8, 9, 10
    assert D.v_gy_cc(dose, mask, 8.0, 0.1) == pytest.approx(0.3)
    assert D.v_percent(dose, mask, 80, rx_gy=10.0) == pytest.approx(0.3)


def test_metrics_are_consistent_with_the_single_functions():
    rng = np.random.default_rng(0)
    dose = rng.gamma(20.0, 3.0, size=(20, 30, 40))
    mask = rng.random(dose.shape) < 0.3
    vv = 0.027
    assert D.d_percent(dose, mask, 100) == D.dmin(dose, mask)
    assert D.d_percent(dose, mask, 0) == D.dmax(dose, mask)
    m = D.metrics(dose, mask, vv, rx_gy=60.0, v_gys=(40.0,), d_ccs=(0.03, 2.0))
    assert m["D2"] == D.d2(dose, mask) and m["D95"] == D.d95(dose, mask) and m["D98"] == D.d98(dose, mask)
    assert m["D0.03cc"] == D.d_cc(dose, mask, 0.03, vv) and m["D2cc"] == D.d_cc(dose, mask, 2.0, vv)
    assert m["V40Gy"] == D.v_gy(dose, mask, 40.0) and m["V95%"] == D.v_percent(dose, mask, 95, 60.0)
    assert m["Dmean"] == pytest.approx(D.dmean(dose, mask)) and m["volume_cm3"] == pytest.approx(mask.sum() * vv)
    assert m["Dmin"] <= m["D98"] <= m["D95"] <= m["D50"] <= m["D2"] <= m["D0.03cc"] <= m["Dmax"]
    # Flat voxel indices give the same answers as the bool mask.
    assert D.metrics(dose, np.flatnonzero(mask), vv, rx_gy=60.0) == D.metrics(dose, mask, vv, rx_gy=60.0)
    # The DVH agrees with Vx: V(≥ d) at each edge.
    h = D.dvh(dose, mask, bin_gy=0.5)
    for i in (0, 50, 120):
        assert h.volume[i] == D.v_gy(dose, mask, h.dose_gy[i])


def test_dvh_points_is_the_percent_volume_on_a_uniform_dose_axis():
    dose = np.linspace(0.0, 80.0, 1001)
    mask = np.ones_like(dose, bool)
    pts = D.dvh_points(dose, mask, rx_gy=60.0, n=100, max_rel=1.2)
    assert pts.shape == (100,) and pts[0] == 100.0
    assert np.all(np.diff(pts) <= 0)
    d = np.linspace(0, 72.0, 100)
    np.testing.assert_allclose(pts, 100 * (1 - d / 80.0), atol=0.11)


def test_empty_or_mismatched_masks_are_rejected():
    dose = np.ones((3, 3, 3))
    with pytest.raises(ValueError, match="no voxels"):
        D.dmean(dose, np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        D.dmean(dose, np.ones((3, 3), bool))
