"""pipeline/plan.py: what both loaders share — the options, each rank's slice and length of an
epoch, and the per-epoch shard order (no DALI, no images). (Not test_plan.py: that name is
preprocess/plan.py's.)"""
import pytest
from shardkit import make_shards

from pipeline.plan import PAPER_LIGHTING, LoaderSpec, epoch_plan, open_split, loader_spec, shard_order
from shards import ManifestError


def test_epoch_plan_lengths():
    assert epoch_plan(44, 8, 0, 1, 0, True, True).batches == 5  # 40 of 44, the rest dropped
    plans = [epoch_plan(44, 8, r, 2, e, True, True) for r in (0, 1) for e in (0, 1)]
    assert {p.batches for p in plans} == {2}  # equal length on every rank
    assert [p.shard_id for p in plans] == [0, 1, 1, 0]  # slices rotate over the ranks
    val = [epoch_plan(21, 8, r, 2, 0, False, False) for r in (0, 1)]
    assert [(p.start, p.stop, p.batches, p.samples) for p in val] == [(0, 10, 2, 10), (10, 21, 2, 11)]
    o = LoaderSpec("d", "val", 8, rank=1, world_size=2)
    assert o.plan(21, 5) == val[1]  # validation does not rotate


def test_shard_order_is_drawn_per_epoch_for_training_only():
    orders = [shard_order(30, seed=4, epoch=e, shuffle=True) for e in range(4)]
    assert all(sorted(o) == list(range(30)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4                  # a new order every epoch
    assert shard_order(30, 4, 2, True) == orders[2]               # a function of (seed, epoch): every rank agrees
    assert shard_order(30, 5, 2, True) != orders[2]
    assert shard_order(30, 4, 2, False) == list(range(30))        # validation: shard order
    shards = [f"s{i}" for i in range(30)]
    train = LoaderSpec("d", "train", 8, rank=1, world_size=2, seed=4, shuffle=True)
    assert train.in_epoch_order(shards, 2) == [shards[i] for i in orders[2]]


def test_defaults_follow_the_split():
    train, val = loader_spec("d", "train", 8), loader_spec("d", "val", 8)
    assert (train.augment, train.lighting, train.shuffle, train.drop_last) == (True, PAPER_LIGHTING, True, True)
    assert (val.augment, val.lighting, val.shuffle, val.drop_last) == (False, 0.0, False, False)
    assert not loader_spec("d", "train", 8, ten_crop=True).augment  # ten fixed views, no random crop


def test_option_errors():
    with pytest.raises(ValueError, match="mean='pixel'"):
        loader_spec("d", "val", 8, mean="pixel")
    with pytest.raises(ValueError, match="batch_size=0"):
        loader_spec("d", "val", 0)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        loader_spec("d", "val", 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed=-1"):
        loader_spec("d", "val", 8, seed=-1)
    with pytest.raises(ValueError, match="ten_crop"):
        loader_spec("d", "val", 8, augment=True, ten_crop=True)
    with pytest.raises(ValueError, match="lighting=-0.1"):
        loader_spec("d", "val", 8, lighting=-0.1)
    with pytest.raises(ValueError, match="lighting=inf"):
        loader_spec("d", "val", 8, lighting=float("inf"))
    with pytest.raises(ValueError, match="handoff='int8'"):
        loader_spec("d", "val", 8, handoff="int8")
    with pytest.raises(ValueError, match="cpu_decode=1.5"):
        loader_spec("d", "val", 8, cpu_decode=1.5)
    with pytest.raises(ValueError, match="prefetch=0"):
        loader_spec("d", "val", 8, prefetch=0)
    with pytest.raises(TypeError, match="mean_after_crop"):  # one name per option: no stray ones
        loader_spec("d", "val", 8, mean_after_crop=True)


def test_open_split_checks_the_split_and_one_batch_per_rank(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        open_split(loader_spec(tmp_path, "train", 8))
    make_shards(tmp_path, n_train=44, n_val=0, classes=64, shard_size=16, seed=1)
    assert open_split(loader_spec(tmp_path, "train", 8)).split("train").samples == 44
    with pytest.raises(ManifestError, match="split 'val' is not in"):
        open_split(loader_spec(tmp_path, "val", 8))
    with pytest.raises(ValueError, match="too few for one batch of 16 on each of 3"):
        open_split(loader_spec(tmp_path, "train", 16, rank=1, world_size=3))
