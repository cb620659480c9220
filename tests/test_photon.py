"""6 MV pencil-beam model against reference water data (BJR Suppl. 25), through the planner's path:
water phantom → IEC beam frame → radiological depth → sum of 5 mm beamlets."""

import numpy as np
import pytest

from rtautoplan.case import Grid
from rtautoplan.physics import photon
from rtautoplan.physics.geometry import SAD_MM, beam_frame, hu_to_red, radiological_depth
from rtautoplan.plan import Beam

SIZE = 5.0  # beamlet side (mm)


def square_field(side_mm, size_mm=SIZE):
    """Beamlet centres (n, 2) tiling a square field of side ``side_mm`` at the isocentre plane."""
    c = (np.arange(int(side_mm / size_mm)) + 0.5) * size_mm - side_mm / 2
    return np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)


@pytest.fixture(scope="module")
def water_field():
    """10 × 10 cm² field, SSD 100 cm (isocentre on the surface), gantry 0, HFS water phantom
    (HU 0 below y = 0, air above): dose on the central axis and on an x profile at 10 cm depth."""
    grid = Grid(origin=(-80.0, -4.5, -100.0), spacing=(2.0, 1.0, 1.0), shape=(101, 255, 161))
    _, y, _ = grid.centres()
    hu = np.broadcast_to(np.where(y > 0, 0.0, -1000.0), grid.shape)
    frame = beam_frame(Beam("AP", 0.0, (0.0, 0.0, 0.0)))
    k0, j10, i0 = 50, 104, 80  # z = 0; y = 99.5 mm; x = 0
    wanted = np.zeros(grid.shape, bool)
    wanted[k0, :, i0] = True  # central axis
    wanted[k0, j10, :] = True  # profile
    depth = radiological_depth(hu_to_red(hu), grid, frame, voxels=wanted)
    flat = np.flatnonzero(wanted)
    xb, yb, t = frame.to_beam(grid.index_to_patient(np.stack(np.unravel_index(flat, grid.shape), -1)))
    beamlets = square_field(100.0)
    per_beamlet = photon.beamlet_dose(
        depth.flat[flat][:, None], xb[:, None] - beamlets[:, 0], yb[:, None] - beamlets[:, 1], t[:, None], SIZE
    )
    dose = np.zeros(grid.shape)
    dose.flat[flat] = per_beamlet.sum(axis=1)
    y = grid.index_to_patient([[k0, j, i0] for j in range(grid.shape[1])])[:, 1]
    x = grid.index_to_patient([[k0, j10, i] for i in range(grid.shape[2])])[:, 0]
    return y, dose[k0, :, i0], x, dose[k0, j10, :]


def test_depth_of_maximum_dose(water_field):
    y, d, _, _ = water_field
    d_max = y[np.argmax(d)]
    assert d_max == pytest.approx(15.0, abs=3.0)  # BJR Suppl. 25, 6 MV: 1.5 cm
    assert photon.d_max_mm() == pytest.approx(15.0, abs=3.0)


def test_pdd_at_10_cm(water_field):
    y, d, _, _ = water_field
    pdd10 = 100 * np.interp(100.0, y, d) / d.max()
    assert pdd10 == pytest.approx(67.0, abs=2.0)  # BJR Suppl. 25, 6 MV, 10 × 10 cm², SSD 100 cm
    assert photon.pdd(100.0) == pytest.approx(67.0, abs=2.0)
    # The beamlet sum on the grid reproduces the analytic open-field PDD (same model) beyond the
    # build-up, where the depth sampling (≤ 0.25 mm on this grid) shows in the steep gradient.
    beyond = y > 10.0
    np.testing.assert_allclose(100 * d[beyond] / d.max(), photon.pdd(y[beyond]), atol=0.3)


def test_penumbra_80_20_at_10_cm(water_field):
    _, _, x, p = water_field
    rel = p / p[np.argmin(np.abs(x))]
    edge = x >= 0
    x80 = np.interp(0.8, rel[edge][::-1], x[edge][::-1])
    x20 = np.interp(0.2, rel[edge][::-1], x[edge][::-1])
    assert 3.0 <= x20 - x80 <= 9.0
    # The 50 % point is the geometric field edge projected to 10 cm depth: 50 · 1100/1000 mm.
    x50 = np.interp(0.5, rel[edge][::-1], x[edge][::-1])
    assert x50 == pytest.approx(55.0, abs=1.0)
    assert np.allclose(rel, rel[::-1], atol=1e-4)  # symmetric


def test_depth_dose_shape():
    assert 10.0 <= photon.pdd(0.0) <= 30.0  # surface dose of a 10 × 10 cm² field ≈ 16 %
    assert photon.pdd(200.0) == pytest.approx(38.5, abs=2.0)  # BJR Suppl. 25: 20 cm
    # More scatter in larger fields: PDD(10 cm) grows with field size (62.7, 67.0, 71.0 %).
    assert photon.pdd(100.0, field_mm=50) < photon.pdd(100.0) < photon.pdd(100.0, field_mm=200)
    assert photon.pdd(100.0, field_mm=50) == pytest.approx(62.7, abs=2.0)
    assert photon.pdd(100.0, field_mm=200) == pytest.approx(71.0, abs=2.0)


def test_calibration_1_cgy_per_unit_weight():
    # 10 × 10 cm² at the isocentre, isocentre at d_max on the axis (SAD set-up): 0.01 Gy.
    d = photon.d_max_mm()
    assert photon.beamlet_dose(d, 0.0, 0.0, SAD_MM, size_mm=100.0) == pytest.approx(0.01, rel=1e-9)
    ssd = SAD_MM - d
    assert photon.field_dose(d, field_mm=100.0 * ssd / SAD_MM, ssd_mm=ssd) == pytest.approx(0.01, rel=1e-9)


def test_inverse_square():
    # A broad beamlet (fluence uniform over the kernel) at the same radiological depth: the dose
    # scales as (t1/t2)² with the distance t from the source.
    d1 = photon.beamlet_dose(50.0, 0.0, 0.0, 1000.0, size_mm=400.0)
    d2 = photon.beamlet_dose(50.0, 0.0, 0.0, 1250.0, size_mm=400.0)
    assert d2 / d1 == pytest.approx((1000.0 / 1250.0) ** 2, rel=2e-3)


def test_beamlets_tile_into_the_open_field():
    # Twenty 5 mm beamlets across a 10 cm field sum to the analytic square-field dose.
    beamlets = square_field(100.0)
    depth, t = np.array([15.0, 100.0]), np.array([1015.0, 1100.0])
    tiled = photon.beamlet_dose(depth[:, None], -beamlets[:, 0], -beamlets[:, 1], t[:, None], SIZE).sum(axis=1)
    field = photon.beamlet_dose(depth, 0.0, 0.0, t, 100.0)
    np.testing.assert_allclose(tiled, field, rtol=1e-9)


def strip_penumbra_mm(depth_mm, width_mm=10.0, length_mm=200.0, size_mm=SIZE):
    """80–20 % penumbra (mm) across a ``width`` × ``length`` field of ``size_mm`` beamlets, SSD 100 cm, in
    water at ``depth_mm``: the distance between the 80 % and 20 % points of the profile across the width,
    relative to the field's centre."""
    cx = (np.arange(int(width_mm / size_mm)) + 0.5) * size_mm - width_mm / 2
    cy = (np.arange(int(length_mm / size_mm)) + 0.5) * size_mm - length_mm / 2
    centres = np.stack(np.meshgrid(cx, cy), -1).reshape(-1, 2)
    t = SAD_MM + depth_mm
    x = np.arange(0.0, width_mm, 0.01)
    profile = photon.beamlet_dose(depth_mm, (x * SAD_MM / t)[:, None] - centres[:, 0], -centres[:, 1], t, size_mm)
    rel = profile.sum(axis=1) / profile[0].sum()
    return float(np.interp(0.2, rel[::-1], x[::-1]) - np.interp(0.8, rel[::-1], x[::-1]))


@pytest.mark.parametrize("depth_mm, measured_mm, tolerance_mm", [(15.0, 1.7, 0.3), (100.0, 3.7, 0.3)])
def test_narrow_field_penumbra_against_measurement(depth_mm, measured_mm, tolerance_mm):
    # JACMP 12(3):142 (2011), doi:10.1120/jacmp.v12i3.3475, Table 2: 6 MV, 1 × 20 cm² MLC field, 80–20 %
    # penumbra 0.17 ± 0.01 cm at 1.5 cm and 0.37 ± 0.03 cm at 10 cm depth. The beamlet edge IMRT modulates
    # with; the model before this fit gave 3.75 and 4.87 mm (a 50 → 10 Gy fall needs a sharp edge).
    assert strip_penumbra_mm(depth_mm) == pytest.approx(measured_mm, abs=tolerance_mm)


def test_large_field_penumbra_in_the_clinical_range():
    # A 10 × 10 cm² field's edge is wider than a narrow field's at depth (phantom scatter); a plausibility
    # range for a 6 MV linac at 10 cm (3–5 mm), not a fit target: the model before this fit gave 6.2 mm.
    wide = strip_penumbra_mm(100.0, width_mm=100.0, length_mm=100.0)
    assert strip_penumbra_mm(100.0) < wide
    assert 3.0 <= wide <= 5.0


def test_trained_photon_planners_keep_the_beam_model_they_learned_on():
    """ACER's prostate setup and SARSA's plan on the jaw-fit model their weights learned on; every other photon
    setup on the refitted one; an unknown model name is refused with the known ones."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.physics.photon import SIX_MV, SIX_MV_JAW
    from rtautoplan.pipeline import setup_for, tps_with_options

    assert tps_with_options(setup_for("prostate", "photon"), None, {}).model is SIX_MV_JAW
    assert tps_with_options(setup_for("hn", "photon", "sarsa"), None, {}).model is SIX_MV_JAW
    for site in ("hn", "liver", "generic"):
        assert tps_with_options(setup_for(site, "photon"), None, {}).model is SIX_MV
    assert SIX_MV_JAW.sigma_primary_mm > SIX_MV.sigma_primary_mm
    with pytest.raises(ValueError, match="unknown photon beam model '10MV'; known: 6MV, 6MV-jaw"):
        InHousePhoton(model="10MV")
