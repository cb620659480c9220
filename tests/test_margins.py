"""Margins are exact in mm on anisotropic grids (structures/margins.py)."""

import numpy as np
import pytest

from rtautoplan.structures.margins import distance_mm, expand, shell, shrink

SPACING = (3.0, 1.0, 2.0)  # (dz, dy, dx) mm
HALF_DIAGONAL = 0.5 * float(np.linalg.norm(SPACING))


def radius_map(shape, spacing, centre_mm):
    """Distance (mm) of every voxel centre from a point."""
    k, j, i = np.indices(shape, dtype=float)
    return np.sqrt(sum(((a * s) - c) ** 2 for a, s, c in zip((k, j, i), spacing, centre_mm)))


def assert_ball(mask, rho, radius):
    """mask ⇔ rho ≤ radius for every voxel farther than half a voxel diagonal from the sphere."""
    clear = np.abs(rho - radius) > HALF_DIAGONAL
    assert np.array_equal(mask[clear], (rho <= radius)[clear])


@pytest.mark.parametrize("centre", [(30.0, 30.0, 30.0), (31.3, 29.6, 30.9)])
@pytest.mark.parametrize("r, m", [(10.0, 5.0), (8.0, 2.0), (12.0, 20.0)])
def test_expand_sphere_is_ball_of_radius_r_plus_m(centre, r, m):
    rho = radius_map((21, 61, 31), SPACING, centre)
    assert_ball(expand(rho <= r, SPACING, m), rho, r + m)


@pytest.mark.parametrize("centre", [(30.0, 30.0, 30.0), (31.3, 29.6, 30.9)])
@pytest.mark.parametrize("r, m", [(15.0, 5.0), (20.0, 3.0)])
def test_shrink_sphere_is_ball_of_radius_r_minus_m(centre, r, m):
    rho = radius_map((21, 61, 31), SPACING, centre)
    assert_ball(shrink(rho <= r, SPACING, m), rho, r - m)


def box_distance_brute_force(mask, spacing):
    """Distance (mm) from every voxel centre to the nearest mask voxel's box, by enumeration."""
    k, j, i = np.indices(mask.shape, dtype=float)
    points = np.stack([k, j, i], -1).reshape(-1, 3) * spacing
    inside = points[mask.ravel()]
    gaps = np.maximum(np.abs(points[:, None, :] - inside[None]) - np.asarray(spacing) / 2, 0.0)
    return np.sqrt((gaps**2).sum(-1)).min(1).reshape(mask.shape)


def test_expand_is_exact_per_voxel_against_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 12, 10)) > 0.97
    nearest = box_distance_brute_force(mask, SPACING)
    for mm in (0.0, 1.0, 2.0, 3.0, 3.5, 7.0):
        assert np.array_equal(expand(mask, SPACING, mm), nearest <= mm + 1e-9), mm
    assert np.allclose(distance_mm(mask, SPACING), nearest)


def test_sub_voxel_margin_adds_one_layer():
    """A 2 mm Gap on 2.5 mm pixels: face neighbours' centres are 1.25 mm from the voxel surface."""
    mask = np.zeros((5, 9, 9), bool)
    mask[2, 3:6, 3:6] = True
    out = expand(mask, (3.0, 2.5, 2.5), 2.0)
    assert out[2, 2, 4] and out[1, 4, 4] and not out[2, 1, 4]
    assert np.array_equal(shrink(out, (3.0, 2.5, 2.5), 2.0), mask)


def test_margin_is_a_ball_not_iterated_dilation():
    mask = np.zeros((11, 31, 21), bool)
    mask[5, 15, 10] = True
    out = expand(mask, SPACING, 6.0)
    assert out[5, 15, 13] and out[7, 15, 10] and out[5, 21, 10]  # 6 mm along x, z and y
    assert not out[7, 21, 10]  # (6, 6, 0) mm is 8.5 mm away: outside the ball, inside a cube
    assert np.count_nonzero(out) == np.count_nonzero(box_distance_brute_force(mask, SPACING) <= 6.0)


def test_expansion_reaching_the_grid_edge():
    rho = radius_map((8, 30, 16), SPACING, (3.0, 2.0, 28.0))  # sphere centre near three faces
    mask = rho <= 4.0
    out = expand(mask, SPACING, 10.0)
    full_grid = box_distance_brute_force(mask, SPACING) <= 10.0
    assert np.array_equal(out, full_grid)  # the box clipped by the grid edge changes nothing
    assert out[0, 0, -1] and out[0, 0].sum() == 9  # reaches the faces (x ≥ 14 mm)
    assert_ball(out, rho, 14.0)
    full = np.ones((4, 5, 6), bool)
    assert expand(full, SPACING, 50.0).all()


def test_shrink_at_the_grid_edge_is_not_a_boundary():
    mask = np.zeros((10, 30, 20), bool)
    mask[:5] = True  # cut by the first slice of the scan
    out = shrink(mask, SPACING, 6.0)
    assert out[0].all() and out[2].all() and not out[3:].any()  # only 6 mm from the real face (k=4|5)
    assert np.array_equal(shrink(np.ones((3, 4, 5), bool), SPACING, 9.0), np.ones((3, 4, 5), bool))


def test_shrink_is_dual_of_expand():
    rng = np.random.default_rng(1)
    mask = rng.random((12, 20, 15)) > 0.3
    for mm in (1.0, 2.5, 4.0):
        assert np.array_equal(shrink(mask, SPACING, mm), ~expand(~mask, SPACING, mm))


def test_empty_masks_and_zero_margin():
    empty = np.zeros((4, 5, 6), bool)
    assert not expand(empty, SPACING, 5).any() and not shrink(empty, SPACING, 5).any()
    assert np.isinf(distance_mm(empty, SPACING)).all()
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2:4, 1:5] = True
    assert np.array_equal(expand(mask, SPACING, 0), mask) and np.array_equal(shrink(mask, SPACING, 0), mask)
    with pytest.raises(ValueError):
        expand(mask, SPACING, -1.0)


def test_shell_and_bounded_distance():
    rho = radius_map((21, 61, 31), SPACING, (30.0, 30.0, 30.0))
    mask = rho <= 8.0
    ring = shell(mask, SPACING, 2.0, 22.0)
    assert np.array_equal(ring, expand(mask, SPACING, 22.0) & ~expand(mask, SPACING, 2.0))
    near = distance_mm(mask, SPACING, within_mm=5.0)
    full = distance_mm(mask, SPACING)
    assert np.array_equal(near <= 5.0, full <= 5.0)
    assert np.allclose(near[np.isfinite(near)], full[np.isfinite(near)])


def _squared_box_distance_in_axis_order(mask, spacing):
    """Squared distances by enumeration, summed as the separable transform sums them: ((c_k + c_j) + c_i),
    c = ((|n| − ½)·s)² per axis with the cost of each offset computed once, as the transform does."""
    cost = [np.array([0.0] + [((n - 0.5) * s) ** 2 for n in range(1, size)]) for s, size in zip(spacing, mask.shape)]
    index = np.indices(mask.shape).reshape(3, -1).T
    inside = index[mask.ravel()]
    offsets = np.abs(index[:, None, :] - inside[None])
    total = (cost[0][offsets[..., 0]] + cost[1][offsets[..., 1]]) + cost[2][offsets[..., 2]]
    return total.min(1).reshape(mask.shape)


@pytest.mark.parametrize("seed", range(4))
def test_distance_is_bitwise_the_enumerated_minimum(seed):
    """The early-stopping line kernel visits fewer offsets, never a different minimum: equal to the bit."""
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(4, 14, 3))
    mask = rng.random(shape) > (0.9 if seed % 2 else 0.99)
    spacing = tuple(float(s) for s in rng.choice([0.977, 1.2, 2.0, 2.5, 3.0], 3))
    if not mask.any():
        mask[tuple(n // 2 for n in shape)] = True
    expected = np.sqrt(_squared_box_distance_in_axis_order(mask, spacing))
    assert np.array_equal(distance_mm(mask, spacing), expected)
    near = distance_mm(mask, spacing, within_mm=4.0)
    assert np.array_equal(near, np.where(expected <= 4.0 + 1e-6, expected, np.inf))
