"""preprocess/sums.py: the fast pixel-sum accumulator equals shards.StatSums exactly."""
import numpy as np


def test_pixel_sums_exact_past_the_float32_fold():
    """300 near-saturated images: the float32 planes are folded into int64 every 256 images; the
    sums must equal shards.StatSums (int64 all the way) exactly."""
    from preprocess.sums import PixelSums
    from shards import StatSums

    rng = np.random.default_rng(3)
    fast, exact = PixelSums(size=16), StatSums(size=16)
    for i in range(300):
        img = rng.integers(200 if i % 2 else 0, 256, (16, 16, 3), dtype=np.uint8)
        fast.add(img)
        exact.add(img)
    got = fast.stat_sums()
    assert got.images == exact.images == 300
    assert np.array_equal(got.sum, exact.sum) and np.array_equal(got.outer, exact.outer)
    assert np.array_equal(got.pixel_sum, exact.pixel_sum)
