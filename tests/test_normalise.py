"""pipeline/normalise.py: the manifest's statistics in the loaders' units, and its errors."""
import dataclasses

import numpy as np
import pytest
from shardkit import make_shards

from pipeline import lighting_offset
from pipeline.normalise import load_normalisation
from shards import Damage, Manifest, ManifestError


@pytest.fixture()
def shards(tmp_path):
    make_shards(tmp_path, n_train=20, n_val=0, classes=20, shard_size=16, seed=3)
    return tmp_path


def test_units(shards):
    manifest = Manifest.load(shards)
    s = manifest.stats
    norm = load_normalisation(shards, manifest, "image")
    stored = np.load(shards / s.mean_image)
    assert norm.mean_image.dtype == np.float32 and norm.mean_image.shape == (256, 256, 3)
    np.testing.assert_allclose(norm.mean_image, 255.0 * stored, rtol=1e-6)  # 0–255 units
    assert 0 < norm.mean_image.min() and norm.mean_image.max() < 255
    np.testing.assert_allclose(norm.channel_mean, 255.0 * np.asarray(s.mean))
    np.testing.assert_allclose(norm.channel_std, 255.0 * np.asarray(s.std))
    np.testing.assert_array_equal(norm.eigval, s.eigval)  # [0,1] units: lighting_offset is linear in them
    np.testing.assert_array_equal(norm.eigvec, s.eigvec)
    alpha = np.random.default_rng(0).normal(0, 0.1, size=(5, 3))
    np.testing.assert_array_equal(norm.offsets255(alpha), 255.0 * lighting_offset(alpha, s.eigval, s.eigvec))
    assert load_normalisation(shards, manifest, "channel").mean_image is None  # not read when unused


def test_errors(shards):
    manifest = Manifest.load(shards)
    with pytest.raises(ManifestError, match="the manifest has no stats"):
        load_normalisation(shards, dataclasses.replace(manifest, stats=None), "channel")
    path = shards / manifest.stats.mean_image
    np.save(path, np.zeros((224, 224, 3), np.float32))
    with pytest.raises(Damage, match=r"mean image has shape \(224, 224, 3\), expected \(256, 256, 3\)"):
        load_normalisation(shards, manifest, "image")
    path.write_bytes(b"not an array")
    with pytest.raises(Damage, match="cannot read the mean image"):
        load_normalisation(shards, manifest, "image")
