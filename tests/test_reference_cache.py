"""The reference loader (pipeline/reference.py) on an s3:// shard directory reads through the local
shard cache (pipeline.cache) as the DALI loader does, against `moto_server` on loopback
(tests/s3kit.py): the same batches as from local disk, only the tars of this rank's slice
downloaded, each epoch's hold released when its iteration ends (also when it fails or is
abandoned)."""
import os

import boto3  # noqa: F401 (the [dev] extra: an ImportError here, never a silent skip; `make test` checks it)
import moto.server  # noqa: F401
import pytest
import torch

from s3kit import s3_fixtures


# 4-sample shards, splits that do not divide into them: the slices of 2 ranks cut shards
server, aws_env, local, remote = s3_fixtures("ref/v1",
                                             n_train=47, n_val=23, classes=8, shard_size=4, seed=2)


def same(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def releases(loader):
    """The keys `loader.cache.release` is called with, in order (the calls still go through)."""
    calls, release = [], loader.cache.release

    def record(key):
        calls.append(key)
        return release(key)

    loader.cache.release = record
    return calls


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle", [True, False])
def test_the_same_batches_as_from_local_disk_and_only_the_slice_downloaded(remote, local, tmp_path, shuffle,
                                                                          num_workers):
    """Rank 1 of 2: its slice cuts shards at both ends; shuffled, it moves to the other slice in
    epoch 1. Each epoch downloads exactly the tars of that epoch's slice it does not hold yet."""
    from pipeline import build_reference_loader

    # seed 0: the slice cuts a shard in both epochs, shuffled (shard orders drawn from the seed) or not
    kw = dict(rank=1, world_size=2, seed=0, shuffle=shuffle, shuffle_buffer=16, num_workers=num_workers)
    disk = build_reference_loader(local, "train", 4, **kw)
    s3 = build_reference_loader(remote, "train", 4, cache_dir=str(tmp_path), **kw)
    released = releases(s3)
    fetched = []
    for epoch in (0, 1):
        piece = s3.epoch_slice(epoch)
        assert 0 < len(piece.shards) < len(s3.shards) and (piece.skip or piece.keep < piece.shards[-1].samples)
        same(list(disk), list(s3))
        new = sorted({s.tar for s in piece.shards} - set(fetched))
        assert sorted(s3.cache.fetched[len(fetched):]) == new  # this slice's missing tars, each once
        fetched = list(s3.cache.fetched)
        assert released == list(range(epoch + 1))
    s3.close()
    if shuffle:  # the slice moved: epoch 1 downloaded something
        assert len(fetched) > len({s.tar for s in s3.epoch_slice(0).shards})


def test_validation_slices_of_two_ranks(remote, local, tmp_path):
    """Validation (no shuffle, no dropped samples, a last partial batch): both ranks, both
    sources, one shared cache directory; together the ranks download each val tar once."""
    from pipeline import build_reference_loader

    fetched = []
    for rank in (0, 1):
        kw = dict(rank=rank, world_size=2, num_workers=0)
        s3 = build_reference_loader(remote, "val", 4, cache_dir=str(tmp_path), **kw)
        same(list(build_reference_loader(local, "val", 4, **kw)), list(s3))
        s3.close()
        assert set(s3.cache.fetched) <= {s.tar for s in s3.epoch_slice(0).shards}
        fetched += s3.cache.fetched
    assert len(fetched) == len(set(fetched)) and set(fetched) == {s.tar for s in s3.shards}


def test_an_abandoned_or_failed_epoch_releases_its_hold(remote, tmp_path, monkeypatch):
    from pipeline import build_reference_loader, reference

    s3 = build_reference_loader(remote, "train", 4, seed=1, num_workers=0, cache_dir=str(tmp_path))
    released = releases(s3)
    it = iter(s3)
    next(it)
    assert released == []  # held while the epoch runs
    it.close()  # abandoned after one batch
    assert released == [0]

    def broken(jpeg):
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(reference, "decode", broken)
    with pytest.raises(RuntimeError, match="decoder failed"):
        list(s3)
    assert released == [0, 1]
    s3.close()


def test_the_cache_options_mean_what_they_mean_for_build_loader(remote, local, tmp_path):
    from pipeline import build_reference_loader
    from pipeline.cache import default_cache_dir

    loader = build_reference_loader(remote, "val", 4, num_workers=0)  # conftest: XDG_CACHE_HOME in tmp
    loader.close()
    assert loader.cache.root.startswith(os.path.abspath(default_cache_dir()) + os.sep)
    loader = build_reference_loader(remote, "val", 4, num_workers=0, cache_dir=str(tmp_path), cache_limit="64M")
    loader.close()
    assert loader.cache.root.startswith(str(tmp_path) + os.sep) and loader.cache.limit == 64 << 20
    assert build_reference_loader(local, "val", 4, num_workers=0, cache_dir=str(tmp_path)).cache is None
