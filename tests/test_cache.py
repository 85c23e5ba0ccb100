"""The local shard cache of an s3:// directory (pipeline.cache) against `moto_server` on loopback
(tests/s3kit.py): the same batches as from local disk, a slice's tars only, verified files only,
a limit kept, a restart that downloads nothing, and each fault as one line with its exit code."""
import errno
import io
import os
import time

import boto3  # noqa: F401 (the [dev] extra)
import pytest
import torch

from s3kit import s3_fixtures
from shardkit import make_shards
from shards import Manifest
from shards.errors import Damage, UserError
from shards.upload import upload_shard_dir


# 4-sample shards, splits that do not divide into them: slices cut shards
server, aws_env, local, remote = s3_fixtures("c/v1",
                                             n_train=47, n_val=23, classes=8, shard_size=4, seed=2)


def copy_prefix(server, src, dst):
    c = server.client()
    for obj in c.list_objects_v2(Bucket="shards", Prefix=src + "/").get("Contents", []):
        got = c.get_object(Bucket="shards", Key=obj["Key"])
        c.put_object(Bucket="shards", Key=dst + obj["Key"][len(src):], Body=got["Body"].read(),
                     Metadata=got["Metadata"])
    return f"s3://shards/{dst}"


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


# --- the slice --------------------------------------------------------------------------------

def test_the_slice_holds_exactly_the_samples_of_the_range():
    from types import SimpleNamespace

    from pipeline.cache import epoch_slice

    shards = [SimpleNamespace(name=i, samples=n) for i, n in enumerate([10, 10, 7, 10, 10])]
    stream = [(s.name, j) for s in shards for j in range(s.samples)]
    for start, stop in [(0, 47), (0, 23), (23, 47), (10, 27), (5, 6), (46, 47)]:
        piece = epoch_slice(shards, start, stop)
        got = [(s.name, j) for s, a, b in piece.ranges() for j in range(a, b)]
        assert got == stream[start:stop]


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_downloads_only_its_slice(remote, local, tmp_path, world_size):
    """The 2-rank (and 3-rank) check at unit level: each rank's cache holds the shards of its
    slice of the epoch and nothing else, and the ranks' slices cover the split."""
    from pipeline import build_loader

    m = Manifest.load(local)
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            cache_dir = tmp_path / f"e{epoch}r{rank}"
            loader = build_loader(remote, "train", 4, num_threads=1, rank=rank, world_size=world_size, seed=1,
                                  cache_dir=str(cache_dir))
            try:
                loader.graph(epoch, stop="read")
                piece = loader.epoch_slice(epoch)
                tars = sorted(f.name.split(".")[0] + ".tar" for f in (cache_dir / "shards__c__v1").glob("*.tar"))
                assert tars == sorted(s.tar for s in piece.shards)
                seen += [(s.tar, j) for s, a, b in piece.ranges() for j in range(a, b)]
            finally:
                loader.close()
        assert sorted(seen) == sorted((s.tar, j) for s in m.split("train").shards for j in range(s.samples))


# --- the same batches as from disk --------------------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2])
def test_the_same_batches_as_from_local_disk(remote, local, tmp_path, world_size):
    """Slices that cut shards (trimmed indexes) and slices on shard boundaries, train and val."""
    from pipeline import build_loader

    for split, kw, epochs in (("train", {"seed": 3, "shuffle_buffer": 16}, (0, 1, 2)), ("val", {}, (0,))):
        for rank in range(world_size):
            loaders = [build_loader(d, split, 4, num_threads=1, rank=rank, world_size=world_size,
                                    cache_dir=str(tmp_path), **kw) for d in (local, remote)]
            try:
                for epoch in epochs:
                    same(*(batches(loader, epoch) for loader in loaders))
            finally:
                for loader in loaders:
                    loader.close()


def test_a_restart_reuses_the_verified_files(remote, tmp_path, monkeypatch):
    from pipeline import build_loader
    from pipeline.cache import ShardCache

    first = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    a = batches(first, 0)
    first.close()
    assert first.cache.downloaded > 0
    monkeypatch.setattr(ShardCache, "_download", lambda *a: pytest.fail("downloaded again"))
    again = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    same(a, batches(again, 0))
    again.close()
    assert again.cache.downloaded == 0 and "MB/s" in again.cache.progress()


# --- the limit ----------------------------------------------------------------------------------

def test_the_slice_bound_covers_every_epochs_slices(remote, tmp_path):
    """`slice_bytes` bounds what any epoch's slice holds, for every rank and shard order: checked
    against the slices of 40 epochs (each slice's tars, indexes and two trimmed indexes)."""
    from pipeline import build_loader

    for world_size in (1, 3, 4, 6):
        loader = build_loader(remote, "train", 2, num_threads=1, world_size=world_size, seed=5,
                              cache_dir=str(tmp_path))
        shards, c = loader.manifest.split("train").shards, loader.cache
        bound = c.slice_bytes(shards, -(-loader.samples // world_size))
        biggest_index = max(c._sizes_of(s)[1] for s in shards)
        seen = max(sum(c.size(s) for s in loader.epoch_slice(e).shards) + 2 * biggest_index for e in range(40))
        assert seen <= bound <= seen + max(c.size(s) for s in shards) + 2 * biggest_index
        loader.close()


def test_the_cache_stays_under_its_limit(remote, local, tmp_path):
    from pipeline import build_loader

    full = build_loader(remote, "train", 2, num_threads=1, world_size=6, seed=5, cache_dir=str(tmp_path / "full"))
    shards = full.manifest.split("train").shards
    total = sum(full.cache.size(s) for s in shards)
    limit = 2 * full.cache.slice_bytes(shards, -(-full.samples // 6))  # one slice and the next
    full.close()
    assert limit < total
    loader = build_loader(remote, "train", 2, num_threads=1, world_size=6, cache_dir=str(tmp_path / "small"),
                          cache_limit=limit, seed=5)
    disk = build_loader(local, "train", 2, num_threads=1, world_size=6, seed=5)
    try:
        for epoch in range(10):
            same(batches(loader, epoch), batches(disk, epoch))
            assert loader.cache.used() <= limit
        assert loader.cache.over == 0 and loader.cache.downloaded > 1.5 * limit  # files were evicted
    finally:
        loader.close()
        disk.close()


def test_a_limit_for_the_ranks_of_one_node(remote, tmp_path, monkeypatch):
    """torchrun's ranks of one node share the cache folder: the limit must hold all their slices."""
    from pipeline import build_loader

    probe = build_loader(remote, "train", 2, num_threads=1, world_size=4, cache_dir=str(tmp_path))
    one = 2 * probe.cache.slice_bytes(probe.manifest.split("train").shards, -(-probe.samples // 4))
    probe.close()
    build_loader(remote, "train", 2, num_threads=1, world_size=4, cache_dir=str(tmp_path), cache_limit=one).close()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match=f"below what the 2 ranks of this node hold .* \\({2 * one} bytes"):
        build_loader(remote, "train", 2, num_threads=1, world_size=4, cache_dir=str(tmp_path), cache_limit=one)
    build_loader(remote, "train", 2, num_threads=1, world_size=4, cache_dir=str(tmp_path), cache_limit=2 * one).close()


def test_another_process_never_evicts_what_this_one_holds(remote, local, tmp_path):
    """Two processes on one directory under a tight limit: files the first holds (its slice,
    downloaded, not yet read by a pipeline) survive the second's evictions, and the second's
    count includes them; once the first lets go (close, or its process ends) they may go."""
    import subprocess
    import sys

    from pipeline.cache import ShardCache, epoch_slice
    from shards import Manifest

    cache_dir = str(tmp_path / "cache")
    a = ShardCache(remote, cache_dir)
    shards = Manifest.load(local).split("train").shards
    mine = epoch_slice(shards, 0, shards[0].samples + 1)  # the first two shards
    tars, _ = a.fetch(mine, key=0)
    assert all(os.path.exists(t) for t in tars)
    limit = sum(a.size(s) for s in shards[:4]) + 8192  # room for two more shards beside the held two
    code = f"""
import sys
from pipeline.cache import ShardCache, epoch_slice
from shards import Manifest
shards = Manifest.load({local!r}).split("train").shards
b = ShardCache({remote!r}, {cache_dir!r}, limit={limit})
for i in range(2, len(shards) - 1):  # every pair of later shards in turn: each pass must evict
    b.fetch(epoch_slice(shards[i:], 0, shards[i].samples + 1), key=i)
    b.release(i)
print(b.over)
"""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(os.path.exists(t) for t in tars)  # held by this process: never evicted
    assert int(out.stdout.split()[-1]) == 0  # and the other stayed under the limit, counting them
    a.close()  # let go: the next process may evict them
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not all(os.path.exists(t) for t in tars)


def test_a_dead_process_holds_nothing(remote, local, tmp_path):
    """A process killed while holding files (no close): the next evictor finds its lock free,
    drops its list and its half-written downloads, and may evict its files."""
    import subprocess
    import sys

    from pipeline.cache import ShardCache, epoch_slice
    from shards import Manifest

    cache_dir = str(tmp_path / "cache")
    code = f"""
import os
from pipeline.cache import ShardCache, epoch_slice
from shards import Manifest
shards = Manifest.load({local!r}).split("train").shards
a = ShardCache({remote!r}, {cache_dir!r})
a.fetch(epoch_slice(shards, 0, shards[0].samples), key=0)
for name in ("stale.tar.part-%d", "stale.tar.part-%d.1a2B3c4D"):  # ours, and s3transfer's own temporary name
    open(os.path.join(a.root, name % os.getpid()), "wb").write(b"x" * 100)
open(os.path.join(a.root, "other.tar.part-1%d.1a2B3c4D" % os.getpid()), "wb").write(b"x")  # another pid's
os._exit(0)  # no close, no destructors
"""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    shards = Manifest.load(local).split("train").shards
    root = os.path.join(cache_dir, "shards__c__v1")
    assert len(os.listdir(os.path.join(root, ".holds"))) == 2  # the dead one's list and lock
    assert len([n for n in os.listdir(root) if ".part-" in n]) == 3
    b = ShardCache(remote, cache_dir, limit=1)  # a new cache cleans up as it starts, limit or not
    assert sorted(os.listdir(os.path.join(root, ".holds"))) == [f"{b.token}.alive"]
    left = [n for n in os.listdir(root) if ".part-" in n]
    assert len(left) == 1 and left[0].startswith("other.tar.part-1")  # only the other pid's download is left
    assert os.path.exists(b.tar_path(shards[0]))
    b.make_room("x", {})  # not held by anyone alive: evicted under the limit
    assert not os.path.exists(b.tar_path(shards[0]))
    b.close()


def test_a_limit_below_two_slices_is_refused_before_any_download(remote, tmp_path, monkeypatch):
    from pipeline import build_loader
    from pipeline.cache import ShardCache

    monkeypatch.setattr(ShardCache, "_download", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(UserError, match="--cache-limit 1000 bytes is below") as e:
        build_loader(remote, "train", 4, num_threads=1, cache_dir=str(tmp_path), cache_limit="1000")
    assert "\n" not in str(e.value) and e.value.exit_code == 2


# --- faults ---------------------------------------------------------------------------------------

def test_an_object_changed_on_the_server(server, remote, tmp_path):
    url = copy_prefix(server, "c/v1", "changed")
    c = server.client()
    tar = c.get_object(Bucket="shards", Key="changed/val-000000.tar")["Body"].read()
    c.put_object(Bucket="shards", Key="changed/val-000000.tar", Body=tar[:-1] + bytes([tar[-1] ^ 1]))
    from pipeline import build_loader

    loader = build_loader(url, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    with pytest.raises(Damage, match=f"^{url}/val-000000.tar: sha256 differs from the manifest") as e:
        list(loader)
    loader.close()
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "shards__changed").iterdir() if p.name.startswith("val-000000")]


def test_a_download_cut_midway_is_retried_then_named(server, remote, tmp_path, monkeypatch):
    """Every connection closed by the network after 20 KB (a relay): boto3's transfer manager
    retries each cut GET, then the loader stops with one line naming the object, exit 1, and
    leaves nothing under a final name nor half-written."""
    from s3kit import Relay

    from pipeline import build_loader

    loader = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path))  # the listing: direct
    big = [s for s in loader.manifest.split("val").shards if loader.cache._sizes_of(s)[0] > 40_000]
    assert big  # tars longer than the cut
    relay = Relay(server.port, cut_after=20_000)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", relay.endpoint)  # the downloads: through the relay
        with pytest.raises(Damage, match=r"^s3://shards/c/v1/val-00000\d\.tar: the download was cut short, "
                                         r"also on retries") as e:
            list(loader)
    finally:
        loader.close()
        relay.close()
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert not [p for p in (tmp_path / "shards__c__v1").iterdir() if ".part-" in p.name or p.suffix == ".tar"]
    key = "c/v1/" + str(e.value).split(":")[1].rsplit("/", 1)[1]
    time.sleep(0.2)  # the server's last log lines
    with open(server.log_path) as f:
        gets = sum(f'"GET /shards/{key}' in line for line in f)
    assert gets >= 5  # TransferConfig(num_download_attempts=5): tried that often before it gave up


def test_the_transfer_manager_retries_a_cut_stream(remote, tmp_path, monkeypatch):
    """boto3's own retry (num_download_attempts) covers one cut read: the file arrives verified."""
    import botocore.response
    from botocore.exceptions import ReadTimeoutError

    from pipeline import build_loader

    real, cuts = botocore.response.StreamingBody.read, []

    def read_once_cut(self, *a, **kw):
        if not cuts:
            cuts.append(1)
            raise ReadTimeoutError(endpoint_url="relay")
        return real(self, *a, **kw)

    loader = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    monkeypatch.setattr(botocore.response.StreamingBody, "read", read_once_cut)
    assert len(list(loader)) > 0 and cuts
    loader.close()


def test_a_full_disk_removes_the_partial_file(remote, tmp_path, monkeypatch):
    """The disk fills while boto3's transfer manager writes a tar (its own file writes fail with
    ENOSPC after 1000 bytes, as a full disk fails them): exit 1 naming the cache, nothing left."""
    import s3transfer.utils

    from pipeline import build_loader

    class FillsUp(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    writes = []
    loader = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    monkeypatch.setattr(s3transfer.utils.OSUtils, "open",
                        lambda self, name, mode: writes.append(name) or FillsUp(name, mode))
    with pytest.raises(Damage, match=f"^{tmp_path}/shards__c__v1/val-00000.*: the disk of the shard cache is full "
                                     f"while downloading s3://shards/c/v1/val-") as e:
        list(loader)
    loader.close()
    assert e.value.exit_code == 1 and "\n" not in str(e.value) and writes
    assert not [p for p in (tmp_path / "shards__c__v1").iterdir() if p.is_file()]


def test_an_unwritable_cache_dir_is_refused_before_any_work(remote, tmp_path, monkeypatch):
    from pipeline import build_loader
    from shards.store import S3Store

    (tmp_path / "file").write_bytes(b"")  # a folder below a file cannot be made, even by root
    monkeypatch.setattr(S3Store, "listing", lambda self: pytest.fail("a request"))
    with pytest.raises(UserError, match="cannot write the shard cache") as e:
        build_loader(remote, "val", 4, cache_dir=str(tmp_path / "file" / "cache"))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_two_processes_on_one_cache_dir(remote, tmp_path):
    """Two caches (as two processes would) fetching the same shards at once: each file is
    downloaded once, under its lock; the other reads the finished copy."""
    import threading

    from pipeline.cache import EpochSlice, ShardCache

    m = Manifest.load(remote)
    shards = m.split("train").shards
    caches = [ShardCache(remote, str(tmp_path)) for _ in range(2)]
    got = [None, None]

    def run(i):
        got[i] = caches[i].fetch(EpochSlice(shards, 0, shards[-1].samples), key=0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] == got[1] and all(os.path.exists(p) for p in got[0][0])
    assert caches[0].downloaded + caches[1].downloaded == sum(caches[0].size(s) for s in shards)


def test_the_endpoint_gone_mid_epoch_is_exit_2(server, remote, tmp_path, monkeypatch):
    """The store goes away (its relay stopped: connections refused) between the epochs of a
    training loader: the next slice's download is one line naming the object and the endpoint,
    exit 2 (the address, not the data)."""
    from s3kit import Relay

    from pipeline import build_loader

    relay = Relay(server.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", relay.endpoint)
    loader = build_loader(remote, "train", 4, num_threads=1, world_size=2, seed=1, cache_dir=str(tmp_path))
    loader.end_epoch = 1  # no download ahead: epoch 1's slice is fetched when epoch 1 starts
    assert {s.tar for s in loader.epoch_slice(1).shards} - {s.tar for s in loader.epoch_slice(0).shards}
    try:
        assert list(loader)
        relay.close()
        with pytest.raises(UserError, match=r"^s3://shards/c/v1/train-\d+\.(tar|idx): cannot reach the S3 "
                                            r"endpoint") as e:
            list(loader)
    finally:
        loader.close()
        relay.close()
    assert type(e.value) is UserError and e.value.exit_code == 2 and "\n" not in str(e.value)


def test_train_options(remote, tmp_path):
    from samplekit import cli, one_line_error

    run = ["train", remote, "--out", str(tmp_path / "run"), "--device", "cpu", "--batch-size", "4",
           "--cache-dir", str(tmp_path / "cache")]
    one_line_error(cli(*run, "--cache-limit", "lots"), 2, ["lots"])
    one_line_error(cli(*run, "--cache-limit", "1K"), 2, ["--cache-limit 1024 bytes is below"])
    assert not (tmp_path / "run").exists()


def test_profile_reports_the_download_rate(remote, tmp_path):
    from train.config import TrainConfig
    from train.profile import format_table, run_profile

    cfg = TrainConfig(shards=remote, out=str(tmp_path / "run"), width=0.125, init="kaiming", batch_size=4,
                      device="cpu", cache_dir=str(tmp_path / "cache"))
    r = run_profile(cfg, None, batches=2, warmup=1, peer_workers=1, progress=lambda m: None)
    assert r["pipeline"]["download_MB_s"] > 0
    assert "shard cache downloaded" in format_table(r)


def test_the_first_batch_waits_for_one_slice(remote, tmp_path):
    from pipeline import build_loader

    loader = build_loader(remote, "train", 4, num_threads=1, world_size=2, cache_dir=str(tmp_path))
    piece = loader.epoch_slice(0)
    assert loader.cache.missing_bytes(piece) == sum(loader.cache.size(s) for s in piece.shards) > 0
    next(iter(loader))
    assert loader.cache.missing_bytes(piece) == 0
    loader.close()


def test_training_logs_the_cache(remote, tmp_path):
    import json

    import train.trainer
    from train.config import TrainConfig
    from trainkit import SMALL

    run = tmp_path / "run"
    cfg = TrainConfig(shards=remote, out=str(run), **{**SMALL, "epochs": 1, "num_threads": 1, "batch_size": 4},
                      cache_dir=str(tmp_path / "cache"), cache_limit="64M")
    t = train.trainer.Trainer(cfg, progress=True)  # the bar's postfix: the slice's size, then the rate
    try:
        t.fit()
    finally:
        t.close()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "cache_mb_per_s" in r]
    assert steps and steps[-1]["cache_mb_per_s"] > 0 and 0 < steps[-1]["cache_bytes"] <= 64 << 20


def test_two_ranks_in_two_processes_on_one_cache_dir(remote, local, tmp_path):
    """Two processes (ranks 0 and 1 of 2, as torchrun starts them) sharing one cache directory:
    each downloads only shards of its own slices, neither corrupts the other's files (every
    batch is the local-disk loader's), and each file is downloaded once."""
    import json
    import subprocess
    import sys

    code = """
import json, sys, torch
from pipeline import build_loader
rank, remote, local, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
kw = dict(num_threads=1, rank=rank, world_size=2, seed=7, shuffle_buffer=16)
s3, disk = build_loader(remote, "train", 4, cache_dir=cache, **kw), build_loader(local, "train", 4, **kw)
mine, same = set(), True
for epoch in (0, 1):
    mine |= {s.tar for s in s3.epoch_slice(epoch).shards} | {s.tar for s in s3.epoch_slice(epoch + 1).shards}
    for (xa, ya), (xb, yb) in zip(s3, disk):
        same &= torch.equal(xa, xb) and torch.equal(ya, yb)
s3.close(); disk.close()
print(json.dumps({"fetched": s3.cache.fetched, "mine": sorted(mine), "same": bool(same)}))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.path.join(os.getcwd(), "tests")]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), remote, local, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    for r in out:
        assert r["same"] and r["fetched"] and set(r["fetched"]) <= set(r["mine"])
    fetched = out[0]["fetched"] + out[1]["fetched"]
    assert len(fetched) == len(set(fetched))  # no file downloaded twice


def test_an_object_deleted_after_the_loader_was_built(server, remote, tmp_path):
    """What test_s3's DALI-reader case becomes with the cache: one line naming the object, exit 1."""
    from pipeline import build_loader

    url = copy_prefix(server, "c/v1", "vanishing")
    loader = build_loader(url, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    server.client().delete_object(Bucket="shards", Key="vanishing/val-000000.tar")
    with pytest.raises(Damage, match=f"^{url}/val-000000.tar: missing from the shard directory") as e:
        list(loader)
    loader.close()
    assert e.value.exit_code == 1 and "\n" not in str(e.value)


def test_the_next_epochs_pipeline_prepared_ahead_reads_the_cache_too(remote, local, tmp_path):
    """prepare_next (GPU training's default): the next epoch's slice downloads inside the pipeline
    built during this epoch; the same batches as from disk."""
    from pipeline import build_loader

    kw = dict(num_threads=1, world_size=2, rank=1, seed=4, prepare_next=True)
    s3, disk = build_loader(remote, "train", 4, cache_dir=str(tmp_path), **kw), build_loader(local, "train", 4, **kw)
    try:
        for _ in range(3):  # a plain loop: each epoch takes the pipeline prepared during the one before
            same(list(s3), list(disk))
    finally:
        s3.close()
        disk.close()


def test_eval_figures_and_profile_read_through_the_cache(remote, local, tmp_path):
    """Every command that reads shards takes --cache-dir and --cache-limit and reads s3:// through
    the cache: eval and figures fill the folder they are given, a limit too small is refused."""
    from samplekit import cli, one_line_error
    from trainkit import train_run

    run = tmp_path / "run"
    train_run(local, run, epochs=1, max_steps=1, num_threads=1, batch_size=4)
    ckpt = str(run / "last.pt")

    def cached(folder):
        return sorted(p.name for p in (tmp_path / folder).glob("*/*.tar"))

    r = cli("eval", remote, ckpt, "--device", "cpu", "--batch-size", "4", "--cache-dir", str(tmp_path / "e"))
    assert r.exit_code == 0, r.output
    assert cached("e") and all(n.startswith("val-") for n in cached("e"))
    r = cli("figures", remote, ckpt, "--out", str(tmp_path / "fig"), "--device", "cpu",
            "--cache-dir", str(tmp_path / "f"))
    assert r.exit_code == 0, r.output
    assert {n.split("-")[0] for n in cached("f")} == {"train", "val"}  # neighbours: the training images too
    for command in (["eval", remote, ckpt], ["figures", remote, ckpt, "--out", str(tmp_path / "fig2")],
                    ["profile", remote, "--width", "0.125", "--batch-size", "4"]):
        one_line_error(cli(*command, "--device", "cpu", "--cache-dir", str(tmp_path / "x"), "--cache-limit", "1K"),
                       2, ["--cache-limit 1024 bytes is below"])
    assert not cached("x")


def test_nothing_is_downloaded_ahead_of_the_last_epoch(remote, tmp_path):
    """A run of 2 epochs (the trainer sets end_epoch): epoch 0 downloads epoch 1's slice ahead,
    epoch 1 downloads nothing for an epoch 2 that never comes."""
    from pipeline import build_loader

    loader = build_loader(remote, "train", 4, num_threads=1, world_size=3, seed=3, cache_dir=str(tmp_path))
    loader.end_epoch = 2
    slices = [{s.tar for s in loader.epoch_slice(e).shards} for e in range(3)]
    assert slices[2] - slices[0] - slices[1]  # epoch 2's slice has tars the first two do not
    try:
        for _ in range(2):
            list(loader)
    finally:
        loader.close()  # waits for any download ahead
    assert set(loader.cache.fetched) == slices[0] | slices[1]


def test_trimmed_indexes_do_not_pile_up(remote, tmp_path):
    """Each epoch's slice cuts shards at other places; its trimmed indexes go once it is released,
    so after many epochs only the whole files remain (and no lock file per trimmed index)."""
    import re

    from pipeline import build_loader

    loader = build_loader(remote, "train", 4, num_threads=1, world_size=3, seed=3, cache_dir=str(tmp_path))
    try:
        cuts = set()
        for _ in range(5):
            piece = loader.epoch_slice(loader.epoch)
            cuts |= {(s.tar, a, b) for s, a, b in piece.ranges() if (a, b) != (0, s.samples)}
            list(loader)
    finally:
        loader.close()
    assert len(cuts) >= 2  # the slices did cut shards, at several places
    names = os.listdir(loader.cache.root) + os.listdir(os.path.join(loader.cache.root, ".locks"))
    assert not [n for n in names if re.search(r"\.\d+-\d+\.idx$", n)]


def test_the_trainer_downloads_the_first_slice_while_it_builds_the_model(remote, tmp_path, monkeypatch):
    """The first batch of a training run waits for no download its model's build could hide:
    the slice is fetched in the background from the moment the loaders exist."""
    import train.trainer
    from pipeline.dali_loader import DaliLoader
    from train.config import TrainConfig
    from trainkit import SMALL

    order = []
    download_ahead, build_model = DaliLoader.download_ahead, train.trainer.build_model
    monkeypatch.setattr(DaliLoader, "download_ahead",
                        lambda self, *a: order.append(("download", *a)) or download_ahead(self, *a))
    monkeypatch.setattr(train.trainer, "build_model", lambda *a, **kw: order.append(("model",)) or build_model(*a, **kw))
    cfg = TrainConfig(shards=remote, out=str(tmp_path / "run"), **{**SMALL, "epochs": 1, "num_threads": 1},
                      cache_dir=str(tmp_path / "cache"))
    t = train.trainer.Trainer(cfg, progress=False)
    try:
        assert order == [("download", 0), ("model",)]  # the model is built while the slice downloads
        t.train_loader._builder.shutdown(wait=True)  # the download ahead done: nothing left to wait for
        t.train_loader._builder = None
        assert t.train_loader.cache.missing_bytes(t.train_loader.epoch_slice(0)) == 0
    finally:
        t.close()


def test_a_file_gone_while_the_folder_is_read_is_skipped(remote, tmp_path, monkeypatch):
    """A download renames its .part file (an evictor removes a file) between the folder's listing
    and a file's stat: the cache's count skips it (seen once as a FileNotFoundError in make_room)."""
    from pipeline import cache as cache_module
    from pipeline.cache import ShardCache

    c = ShardCache(remote, str(tmp_path))
    for name, size in (("a.tar", 10), ("b.tar.part-1", 20)):
        with open(os.path.join(c.root, name), "wb") as f:
            f.write(b"x" * size)
    entries = list(os.scandir(c.root))  # listed, then one file goes before its stat
    os.remove(os.path.join(c.root, "b.tar.part-1"))
    monkeypatch.setattr(cache_module.os, "scandir", lambda path: iter(entries))
    assert c.used() == 10
    c.limit = 5
    c.make_room("k", {})  # evicts a.tar, the gone file skipped
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(c.root, "a.tar"))
    c.close()


def test_one_request_per_file(server, remote, tmp_path):
    """Sizes and ETags from the listing the split check made: one listing, and each tar and index
    is one GET, no HEAD before it."""
    from pipeline import build_loader

    url = copy_prefix(server, "c/v1", "one-request")
    loader = build_loader(url, "val", 4, num_threads=1, cache_dir=str(tmp_path))
    list(loader)
    loader.close()
    time.sleep(0.2)  # the server's last log lines
    with open(server.log_path) as f:
        log = f.readlines()
    lines = [line for line in log if "/shards/one-request/val-" in line]
    assert sum("list-type=2" in line and "one-request" in line for line in log) == 1  # the split check's, reused
    tars = {s.tar for s in loader.manifest.split("val").shards}
    gets = [line for line in lines if '"GET /shards/one-request/val-' in line and ".tar" in line.split('"')[1]]
    assert not [line for line in lines if '"HEAD ' in line]
    assert len(gets) == len(tars) and set(loader.cache.fetched) == tars

