"""Masks stored on their bounding boxes (rtautoplan.mask): every read equals the full array's."""

import numpy as np
import pytest

from rtautoplan.case import Grid, Role, Structure
from rtautoplan.mask import Mask


def _random_mask(rng, shape=(9, 11, 13)):
    full = np.zeros(shape, bool)
    full[2:7, 3:9, 4:10] = rng.random((5, 6, 6)) < 0.4
    return full


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reads_equal_the_full_array(seed):
    rng = np.random.default_rng(seed)
    full = _random_mask(rng)
    mask = Mask.from_full(full)
    dose = rng.random(full.shape).astype(np.float32)
    assert mask.crop.shape[0] <= 5 and mask.crop.size < full.size / 3
    assert np.array_equal(mask.to_full(), full) and np.array_equal(np.asarray(mask), full)
    assert np.array_equal(mask.take(dose), dose[full])
    assert np.array_equal(mask.indices, np.flatnonzero(full)) and mask.indices.dtype == np.int64
    assert mask.count == np.count_nonzero(full) and mask.any()
    box = (slice(0, 4), slice(5, 11), slice(1, 6))
    assert np.array_equal(mask.window(box), full[box])
    assert np.array_equal(mask.slice_any(), full.any(axis=(1, 2)))
    other = rng.random(full.shape) < 0.5
    assert np.array_equal(mask & other, full & other) and np.array_equal(other | mask, other | full)
    assert np.array_equal(~mask, ~full) and mask[4, 5, 6] == full[4, 5, 6]


def test_empty_and_tight():
    empty = Mask.from_full(np.zeros((4, 5, 6), bool))
    assert not empty.any() and empty.count == 0 and empty.indices.size == 0
    assert empty.take(np.ones((4, 5, 6))).size == 0 and not empty.window((slice(0, 4),) * 3).any()
    crop = np.zeros((3, 3, 3), bool)
    crop[1, 1, 2] = True
    mask = Mask((4, 5, 6), (1, 2, 3), crop)
    tight = mask.tight()
    assert tight.start == (2, 3, 5) and tight.crop.shape == (1, 1, 1)
    assert np.array_equal(tight.to_full(), mask.to_full())


def test_bad_masks_are_clear_errors():
    with pytest.raises(ValueError, match="Parotid_L.*3-D bool"):
        Structure("Parotid_L", np.zeros((4, 5, 6), np.uint8), Role.OAR)
    with pytest.raises(ValueError, match="outside its grid"):
        Mask((4, 5, 6), (3, 0, 0), np.ones((2, 1, 1), bool))


def test_a_structure_keeps_only_its_box():
    full = np.zeros((180, 512, 512), bool)
    full[80:100, 200:260, 150:210] = True
    s = Structure("Parotid_L", full, Role.OAR)
    assert s.mask.crop.nbytes == 20 * 60 * 60 and not s.mask.crop.flags.writeable
    assert s.volume_cm3(Grid((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), full.shape)) == pytest.approx(20 * 60 * 60 * 0.002)
