"""IEC 61217 beam geometry in patient coordinates, HU → RED, radiological depth, beamlet grid."""

import numpy as np
import pytest

from rtautoplan.case import Grid
from rtautoplan.physics.geometry import SAD_MM, beam_frame, beamlet_grid, hu_to_red, radiological_depth
from rtautoplan.plan import Beam

ISO = (10.0, -20.0, 30.0)


def frame(gantry, couch=0.0, collimator=0.0, position="HFS", iso=ISO):
    return beam_frame(Beam("B", gantry, iso, couch_deg=couch, collimator_deg=collimator), position)


def test_hu_to_red_follows_the_table_and_clamps():
    assert hu_to_red(0) == pytest.approx(1.0)
    assert hu_to_red(-1000) == pytest.approx(0.001)
    assert hu_to_red(-3000) == pytest.approx(0.001)  # padding values below air
    assert hu_to_red(20) == pytest.approx((1.0 + 1.043) / 2)
    hu = np.linspace(-1000, 3071, 500)
    assert np.all(np.diff(hu_to_red(hu)) > 0)


@pytest.mark.parametrize(
    "gantry,direction",
    [(0, (0, 1, 0)), (90, (-1, 0, 0)), (180, (0, -1, 0)), (270, (1, 0, 0))],
)
def test_hfs_gantry_angles(gantry, direction):
    # Gantry 0: beam from anterior to posterior (+y); 90: source at the patient's left (+x).
    f = frame(gantry)
    np.testing.assert_allclose(f.direction, direction, atol=1e-12)
    np.testing.assert_allclose(f.source, np.asarray(ISO) - SAD_MM * np.asarray(direction), atol=1e-9)


def test_bev_axes_at_zero_and_collimator_rotation():
    f = frame(0)
    np.testing.assert_allclose(f.u, (1, 0, 0), atol=1e-12)  # X_b: patient left
    np.testing.assert_allclose(f.v, (0, 0, 1), atol=1e-12)  # Y_b: towards the gantry = superior
    f = frame(0, collimator=90)  # right-handed about Z_b (towards the source): X_b → Y_f
    np.testing.assert_allclose(f.u, (0, 0, 1), atol=1e-12)
    np.testing.assert_allclose(f.v, (-1, 0, 0), atol=1e-12)
    f = frame(90)  # X_b turns down, towards the floor: posterior for HFS
    np.testing.assert_allclose(f.u, (0, 1, 0), atol=1e-12)


def test_couch_rotation():
    # Couch 90 (counter-clockwise from above): the head turns to −X_f, the feet to +X_f, so
    # gantry 90 (source at +X_f) shoots from the feet towards the head.
    np.testing.assert_allclose(frame(90, couch=90).direction, (0, 0, 1), atol=1e-12)
    np.testing.assert_allclose(frame(270, couch=90).direction, (0, 0, -1), atol=1e-12)
    np.testing.assert_allclose(frame(0, couch=90).direction, (0, 1, 0), atol=1e-12)  # vertical unchanged
    np.testing.assert_allclose(frame(0, couch=90).u, (0, 0, -1), atol=1e-12)


def test_patient_positions():
    np.testing.assert_allclose(frame(0, position="HFP").direction, (0, -1, 0), atol=1e-12)  # enters the back
    np.testing.assert_allclose(frame(90, position="FFS").direction, (1, 0, 0), atol=1e-12)  # source at the right
    np.testing.assert_allclose(frame(90, position="FFP").direction, (-1, 0, 0), atol=1e-12)
    with pytest.raises(ValueError, match="HFS"):
        frame(0, position="HFDL")


@pytest.mark.parametrize("gantry,couch,collimator", [(0, 0, 0), (37, 15, 20), (210, 300, 95), (123, 80, 45)])
def test_frames_are_orthonormal_right_handed_and_opposed_beams_oppose(gantry, couch, collimator):
    f = frame(gantry, couch, collimator)
    basis = np.stack([f.u, f.v, -f.direction])
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(basis) == pytest.approx(1.0)
    np.testing.assert_allclose(frame(gantry + 180, couch, collimator).direction, -f.direction, atol=1e-12)
    x, y, t = f.to_beam(np.asarray(ISO) + 7.0 * f.u - 4.0 * f.v)
    assert (x, y, t) == pytest.approx((7.0, -4.0, SAD_MM))


# --- radiological depth ----------------------------------------------------------------------

GRID = Grid(origin=(-60.0, -45.0, -50.0), spacing=(3.0, 2.0, 1.5), shape=(41, 46, 67))  # anisotropic
BOX = (slice(6, 35), slice(8, 40), slice(10, 58))  # k, j, i voxel ranges of the slab


def box_bounds(grid, box):
    """Patient-coordinate bounds (x, y, z) of a box of voxels, on the voxel faces."""
    lo = grid.index_to_patient([s.start - 0.5 for s in box])
    hi = grid.index_to_patient([s.stop - 0.5 for s in box])
    return np.minimum(lo, hi), np.maximum(lo, hi)


def path_in_box(source, points, lo, hi):
    """Length (mm) of the segment source → point inside the axis-aligned box [lo, hi] (slab method)."""
    d = points - source
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - source) / d, (hi - source) / d
    t_in = np.clip(np.nanmax(np.minimum(t1, t2), axis=-1), 0, 1)
    t_out = np.clip(np.nanmin(np.maximum(t1, t2), axis=-1), 0, 1)
    return np.maximum(t_out - t_in, 0) * np.linalg.norm(d, axis=-1)


@pytest.mark.parametrize("gantry,couch", [(0, 0), (90, 0), (33, 0), (250, 20)])
@pytest.mark.parametrize("density", [1.0, 2.0])
def test_radiological_depth_in_a_slab_is_the_geometric_path_times_density(gantry, couch, density):
    red = np.zeros(GRID.shape)
    red[BOX] = density
    f = beam_frame(Beam("B", gantry, (0.0, 0.0, 0.0), couch_deg=couch))
    depth = radiological_depth(red, GRID, f)
    inside = np.zeros(GRID.shape, bool)
    inside[BOX] = True
    x, y, z = GRID.centres()
    pts = np.stack(np.broadcast_arrays(x, y, z), -1)[inside]
    expected = density * path_in_box(f.source, pts, *box_bounds(GRID, BOX))
    # At most half a voxel (largest spacing) of water per unit density; typically within the
    # documented bound of half a sampling step (step = half the finest spacing) per edge crossed.
    error = np.abs(depth[inside] - expected)
    assert np.max(error) <= 0.5 * max(GRID.spacing) * density
    assert np.median(error) <= 0.25 * min(GRID.spacing) * density + 1e-3


def test_radiological_depth_of_selected_voxels_only():
    red = np.ones(GRID.shape)
    f = beam_frame(Beam("B", 0, (0.0, 0.0, 0.0)))
    some = np.zeros(GRID.shape, bool)
    some[20, :, 30] = True
    part = radiological_depth(red, GRID, f, voxels=some)
    full = radiological_depth(red, GRID, f)
    assert np.isnan(part[~some]).all()
    np.testing.assert_allclose(part[some], full[some], atol=0.05)


# --- beamlet grid ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.0, 5.0])
def test_beamlet_grid_covers_the_projected_target_plus_margin(margin):
    grid = Grid(origin=(-30.0, -30.0, -30.0), spacing=(2.0, 2.0, 2.0), shape=(31, 31, 31))
    target = np.zeros(grid.shape, bool)
    target[12:22, 10:20, 8:16] = True  # off-centre box
    f = frame(30, couch=10, collimator=15, iso=(0.0, 0.0, 0.0))
    beamlets = beamlet_grid(target, grid, f, size_mm=5.0, margin_mm=margin)
    # Brute force: every lattice centre whose square comes within the margin of a projected voxel.
    x, y, z = grid.centres()
    pts = np.stack(np.broadcast_arrays(x, y, z), -1)[target]
    px, py, _ = f.to_beam(pts)
    lattice = (np.arange(-20, 20) + 0.5) * 5.0
    cx, cy = np.meshgrid(lattice, lattice)
    gx = np.maximum(np.abs(cx.ravel()[:, None] - px) - 2.5, 0)
    gy = np.maximum(np.abs(cy.ravel()[:, None] - py) - 2.5, 0)
    hit = np.any(gx**2 + gy**2 <= margin**2 + 1e-9, axis=1)
    expected = {(a, b) for a, b in zip(cx.ravel()[hit], cy.ravel()[hit])}
    assert {tuple(b) for b in beamlets} == expected
    assert len(beamlets) == len(expected)
    order = np.lexsort((beamlets[:, 0], beamlets[:, 1]))
    assert np.array_equal(order, np.arange(len(beamlets)))  # sorted by y_b, then x_b


def test_beamlet_grid_rejects_an_empty_target():
    grid = Grid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (4, 4, 4))
    with pytest.raises(ValueError, match="empty"):
        beamlet_grid(np.zeros(grid.shape, bool), grid, frame(0))
