"""pipeline/reference.py: the stock webdataset + PIL + DataLoader loader, the oracle the DALI
loader is checked against (tests/test_dali_loader.py); here on its own, without DALI."""
import numpy as np
import pytest
import torch
from shardkit import make_shards

from pipeline import Draws, build_reference_loader

B = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_shards(d, n_train=44, n_val=21, classes=64, shard_size=16, seed=1)
    return d


def ref(d, split, **kw):
    return build_reference_loader(d, split, kw.pop("batch_size", B), num_workers=0, **kw)


def test_reference_workers_give_the_same_batches(shards):
    one = list(ref(shards, "val", batch_size=4))
    two = list(build_reference_loader(shards, "val", 4, num_workers=2))
    key = lambda batch: batch[1][0].item()  # noqa: E731
    assert len(one) == len(two) == 6
    for (x, y), (u, v) in zip(sorted(one, key=key), sorted(two, key=key)):
        assert torch.equal(y, v) and torch.equal(x, u)


def test_shuffled_epochs_are_whole_batches_of_distinct_samples(shards):
    loader = ref(shards, "train", seed=4)
    epochs = []
    for e in (0, 1):
        loader.set_epoch(e)
        batches = [y for _, y in loader]
        assert len(batches) == len(loader) == 44 // B and all(len(y) == B for y in batches)
        labels = torch.cat(batches).tolist()
        assert len(set(labels)) == len(labels) and set(labels) <= set(range(44))
        epochs.append(labels)
    assert epochs[0] != epochs[1]


def test_explicit_draws_place_each_crop(tmp_path):
    """Gradient images (R = x, G = y): each view's corner and mirror read back from its pixels."""
    make_shards(tmp_path, n_train=16, n_val=0, classes=16, shard_size=16, seed=2, kind="gradient")
    n = 16
    draws = Draws(x0=np.arange(n, dtype=np.int32) * 2, y0=31 - np.arange(n, dtype=np.int32),
                  mirror=np.arange(n, dtype=np.int32) % 2, alpha=np.zeros((n, 3)))
    loader = build_reference_loader(tmp_path, "train", B, num_workers=0, shuffle=False, mean="channel",
                                    lighting=0.0, draws=draws)
    x = torch.cat([x for x, _ in loader]).double()
    std, mean = loader.norm.channel_std, loader.norm.channel_mean
    rgb = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    ramp = torch.arange(224, dtype=torch.float64)
    mirror = torch.tensor(draws.mirror, dtype=torch.bool)
    columns = torch.where(mirror[:, None], ramp.flip(0), ramp)
    x0 = (rgb[:, 0].mean(1) - columns).mean(1).round().int().numpy()
    y0 = (rgb[:, 1].mean(2) - ramp).mean(1).round().int().numpy()
    np.testing.assert_array_equal(x0, draws.x0)
    np.testing.assert_array_equal(y0, draws.y0)
    np.testing.assert_array_equal((rgb[:, 0, :, 0] > rgb[:, 0, :, -1]).all(1).numpy(), draws.mirror.astype(bool))
