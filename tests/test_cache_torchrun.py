"""Issue 23 under torchrun itself: `torchrun --standalone --nproc_per_node 2` on the CPU, gloo, one
shared shard cache directory, an s3:// shard directory on `moto_server` (tests/s3kit.py). Each rank
downloads only the tars of its own slices (this epoch's and the next one's, downloaded ahead), and
together the ranks download no tar twice."""
import json
import os
import subprocess
import sys
import textwrap

import boto3  # noqa: F401 (the [dev] extra: an ImportError here, never a silent skip; `make test` checks it)
import moto.server  # noqa: F401
import pytest

from s3kit import s3_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the trainer does on the CPU (train/trainer.py): torchrun's environment read once
# (train.launch.Launch), a gloo process group from it, the DALI loader of the s3:// URL with this
# process's rank and world size and its share of the cores, one epoch per iteration.
RANK_SCRIPT = textwrap.dedent("""
    import json, sys

    import torch.distributed as dist

    from pipeline import build_loader
    from train.launch import Launch

    launch = Launch.from_env()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    url, cache, report = sys.argv[1], sys.argv[2], sys.argv[3]
    result = {"rank": rank, "launch": [launch.rank, launch.world]}

    def epochs(split):
        loader = build_loader(url, split, 4, rank=rank, world_size=world, seed=7, shuffle_buffer=16,
                              num_threads=launch.threads(), cache_dir=cache)
        batches = [sum(1 for _ in loader) for epoch in range(2)]
        loader.close()  # waits for the download of epoch 2's slice, started ahead during epoch 1
        slices = {e: sorted(s.tar for s in loader.epoch_slice(e).shards) for e in range(3)}
        result[split] = {"fetched": loader.cache.fetched, "slices": slices, "batches": batches}

    epochs("train")  # both ranks at once, as in training; shuffled slices that move every epoch
    for turn in range(world):  # validation's fixed slices one rank after the other: rank 0 meets an
        if rank == turn:       # empty cache, so a tar of rank 1's it fetched would show
            epochs("val")
        dist.barrier()
    with open(f"{report}/rank{rank}.json", "w") as f:  # a file each: the ranks' stdout lines can interleave
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
""")


# 4-sample shards, splits that do not divide into them: the two slices share a cut shard
server, aws_env, local, remote = s3_fixtures("torchrun/v1",
                                             n_train=47, n_val=23, classes=8, shard_size=4, seed=2)


def torchrun(*args, timeout):
    """`torchrun --standalone --nproc_per_node 2 ARGS` with this process's environment (the moto
    server's AWS_* variables, conftest's XDG_CACHE_HOME) and the repository importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def test_each_torchrun_rank_downloads_only_its_slices(remote, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun(str(script), remote, str(tmp_path / "cache"), str(tmp_path), timeout=240)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["launch"]) for r in out] == [(0, [0, 2]), (1, [1, 2])]
    train, val = [r["train"] for r in out], [r["val"] for r in out]
    assert train[0]["batches"] == train[1]["batches"] == [47 // 8] * 2  # drop_last: the same count
    assert [v["batches"] for v in val] == [[3, 3], [3, 3]]  # 11 and 12 samples, the last batch partial
    # training: the slices move every epoch (the other slice, a new shard order), so over three
    # epochs a rank's own slices cover most of the split; validation: one fixed slice per rank, the
    # strict check that a rank leaves the other's tars alone
    for runs in (train, val):
        mine = [set().union(*r["slices"].values()) for r in runs]
        assert runs[0]["slices"]["0"] != runs[1]["slices"]["0"]  # the ranks' slices differ
        for r, own in zip(runs, mine):
            assert r["fetched"] and set(r["fetched"]) <= own, r  # its own slices' tars only
        fetched = runs[0]["fetched"] + runs[1]["fetched"]
        assert len(fetched) == len(set(fetched))  # no tar downloaded twice, by one rank or by both
        assert set(fetched) == mine[0] | mine[1]  # and every tar of every slice by one of them
    # validation, rank 0 first: exactly its fixed slice; then rank 1 exactly the rest of its own
    assert all(len({tuple(t) for t in v["slices"].values()}) == 1 for v in val)
    own = [set(v["slices"]["0"]) for v in val]
    assert own[1] - own[0] and own[0] & own[1]  # tars rank 0 must leave alone, and a shard the two cut
    assert set(val[0]["fetched"]) == own[0] and set(val[1]["fetched"]) == own[1] - own[0]

def tar_gets(server):
    """{key: GETs of it} of the tars in the moto server's request log."""
    with open(server.log_path) as f:
        lines = [line for line in f if '"GET /shards/' in line and ".tar" in line]
    counts = {}
    for line in lines:
        key = line.split('"GET /shards/', 1)[1].split()[0].split("?")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_alexnet_train_under_torchrun_downloads_each_tar_once(server, remote, local, tmp_path):
    """The real trainer: `alexnet train s3://… --epochs 1` under torchrun on the CPU, both ranks on
    one cache directory; every tar of both splits is fetched from the server exactly once."""
    from shards import Manifest

    before = tar_gets(server)
    run = tmp_path / "run"
    torchrun("-m", "alexnet_cli", "train", remote, "--out", str(run), "--device", "cpu", "--epochs", "1",
             "--width", "0.125", "--init", "kaiming", "--batch-size", "4", "--threads", "1", "--log-every", "1",
             "--cache-dir", str(tmp_path / "cache"), timeout=300)
    after = tar_gets(server)
    got = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    prefix = "torchrun/v1/"
    m = Manifest.load(local)
    assert got == {prefix + s.tar: 1 for split in ("train", "val") for s in m.split(split).shards}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and "top1_error" not in r][-1] == 47 // 8
    assert any("top1_error" in r for r in rows)  # validation ran, through the cache too
