"""shards/stats.py: the statistics derived from the exact sums against numpy over the pixels."""
import numpy as np
import pytest

from shards.stats import StatSums


@pytest.fixture(scope="module")
def images():
    """12 random 8x8 images with correlated, unequal channels (a clear order of eigenvalues)."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (12, 8, 8, 1))
    noise = rng.integers(-40, 41, (12, 8, 8, 3)) * np.array([1, 2, 3])
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def sums_of(images):
    s = StatSums(size=images.shape[1])
    for im in images:
        s.add(im)
    return s


def test_derived_statistics_equal_numpy(images):
    stats, mean_image = sums_of(images).derive()
    x = images.reshape(-1, 3).astype(np.float64) / 255
    assert (stats["pixels"], stats["images"]) == (12 * 64, 12)
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], x.std(0), rtol=1e-9)  # the population std, not the variance
    cov = np.cov(x.T, bias=True)
    np.testing.assert_allclose(stats["cov"], cov, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(mean_image, images.mean(0) / 255, rtol=1e-6)
    assert mean_image.dtype == np.float32 and mean_image.shape == (8, 8, 3)
    # eigenvalues descending; eigvec's COLUMNS are the eigenvectors, each summing to >= 0
    eigval, eigvec = np.array(stats["eigval"]), np.array(stats["eigvec"])
    np.testing.assert_allclose(eigval, np.sort(np.linalg.eigvalsh(cov))[::-1], rtol=1e-9)
    assert eigval[0] > eigval[1] > eigval[2] > 0
    for i in range(3):
        np.testing.assert_allclose(cov @ eigvec[:, i], eigval[i] * eigvec[:, i], atol=1e-12)
        assert eigvec[:, i].sum() >= 0
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-12)


def test_the_signs_are_fixed_whatever_eigh_returns(images, monkeypatch):
    """eigh's signs are arbitrary: flipped by hand, the manifest's eigenvectors stay the same."""
    want = sums_of(images).derive()[0]["eigvec"]
    eigh = np.linalg.eigh
    monkeypatch.setattr(np.linalg, "eigh", lambda a: (lambda w, v: (w, -v))(*eigh(a)))
    assert sums_of(images).derive()[0]["eigvec"] == want


def test_merged_parts_equal_one_pass(images):
    whole = sums_of(images)
    merged = sums_of(images[:5]).merge(sums_of(images[5:]))
    assert merged.images == whole.images
    for name in ("sum", "outer", "pixel_sum"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    back = StatSums.from_json(whole.to_json(), whole.pixel_sum, size=8)
    assert back.derive()[0] == whole.derive()[0]
    assert whole.to_json()["sum"] == images.reshape(-1, 3).sum(0, dtype=np.int64).tolist()
