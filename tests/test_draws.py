"""pipeline/draws.py: the per-epoch random draws of Section 4.1 (crop corners, flips, PCA
lighting α), the lighting offset and the ten-crop views, on the host alone (no DALI)."""
import numpy as np

from pipeline import CROP, lighting_offset
from pipeline.draws import CENTRE, STRIDE, TEN_CROP_VIEWS, epoch_draws
from shards import IMAGE_SIZE


def test_draws_reproducible_and_prefix_stable():
    a = epoch_draws(7, 1, 3, 1000, augment=True, sigma=0.1)
    b = epoch_draws(7, 1, 3, 10, augment=True, sigma=0.1)
    for f in ("x0", "y0", "mirror", "alpha"):
        np.testing.assert_array_equal(getattr(a, f)[:10], getattr(b, f))
        np.testing.assert_array_equal(getattr(a, f), getattr(epoch_draws(7, 1, 3, 1000, True, 0.1), f))
        np.testing.assert_array_equal(getattr(a.rows(10, 20), f), getattr(a, f)[10:20])
    for other in (epoch_draws(7, 1, 4, 1000, True, 0.1), epoch_draws(7, 0, 3, 1000, True, 0.1),
                  epoch_draws(8, 1, 3, 1000, True, 0.1)):
        assert not np.array_equal(a.x0, other.x0) and not np.array_equal(a.alpha, other.alpha)
    centre = epoch_draws(7, 1, 3, 1000, augment=False, sigma=0.1)
    assert (centre.x0 == CENTRE).all() and (centre.y0 == CENTRE).all() and (centre.mirror == 0).all()
    np.testing.assert_array_equal(centre.alpha, a.alpha)  # lighting independent of augmentation
    assert not epoch_draws(7, 1, 3, 10, True, 0.0).alpha.any()
    assert len(a) == 1000 and len(a.rows(10, 20)) == 10


def test_crop_offsets_cover_32x32_and_flip_half():
    n = 204_800
    d = epoch_draws(0, 0, 0, n, augment=True, sigma=0.0)
    assert d.x0.min() == 0 and d.x0.max() == 31 and d.y0.min() == 0 and d.y0.max() == 31
    counts = np.bincount(d.y0 * 32 + d.x0, minlength=1024)
    assert (counts > 0).all()  # all 1024 corners
    expected = n / 1024  # 200 per corner
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 1023 + 6 * np.sqrt(2 * 1023)  # uniform (chi² with 1023 dof, ~6σ)
    assert abs(d.mirror.mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
    # the mirror is independent of the corner: half the images at every column are mirrored
    per_column = np.bincount(d.x0, weights=d.mirror, minlength=32) / np.bincount(d.x0, minlength=32)
    assert np.abs(per_column - 0.5).max() < 0.03


def test_lighting_offset_covariance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigval, sigma = np.array([0.05, 0.01, 0.002]), 0.1
    alpha = epoch_draws(0, 0, 0, 200_000, augment=False, sigma=sigma).alpha
    off = lighting_offset(alpha, eigval, q)
    want = q @ np.diag((sigma * eigval) ** 2) @ q.T
    np.testing.assert_allclose(np.cov(off.T), want, atol=0.02 * want.max())
    np.testing.assert_allclose(off.mean(0), 0, atol=0.01 * sigma * eigval[0])
    np.testing.assert_allclose(lighting_offset(alpha[:1], eigval, q)[0], q @ (alpha[0] * eigval))


def test_crop_geometry_and_ten_crop_views():
    assert (CROP, STRIDE, CENTRE) == (224, 32, 16) and CROP + STRIDE == IMAGE_SIZE
    assert len(set(TEN_CROP_VIEWS)) == 10
    corners = {(0, 0), (STRIDE, 0), (0, STRIDE), (STRIDE, STRIDE), (CENTRE, CENTRE)}
    assert {(x, y) for x, y, m in TEN_CROP_VIEWS[:5]} == corners and not any(m for *_, m in TEN_CROP_VIEWS[:5])
    # the mirrored five: torchvision's TenCrop order, the mirror of each of the first five views
    for (x, y, _), (mx, my, m) in zip(TEN_CROP_VIEWS[:5], TEN_CROP_VIEWS[5:]):
        assert m == 1 and (mx, my) == (STRIDE - x, y)


def test_draws_follow_the_documented_streams():
    """The module's recipe, written out here: SeedSequence([seed, rank, epoch]) spawns two
    children, the first for the corners and flips (one (n, 3) call), the second for α, so the
    lighting's numbers are a stream of their own, not the crops' bits read again."""
    crop_seq, light_seq = np.random.SeedSequence([7, 1, 3]).spawn(2)
    xym = np.random.default_rng(crop_seq).integers(0, [32, 32, 2], size=(500, 3), dtype=np.int32)
    alpha = np.random.default_rng(light_seq).normal(0.0, 0.1, size=(500, 3))
    d = epoch_draws(7, 1, 3, 500, augment=True, sigma=0.1)
    np.testing.assert_array_equal(np.stack([d.x0, d.y0, d.mirror], 1), xym)
    np.testing.assert_array_equal(d.alpha, alpha)
