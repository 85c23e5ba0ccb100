"""Tiny training runs for the tests: the settings, a trainer run, its metrics rows."""
import json
import os

import torch

from shardkit import make_shards
from train.config import TrainConfig
from train.trainer import Trainer

SMALL = dict(width=0.125, init="kaiming", lr=0.001, batch_size=8, device="cpu", log_every=1)


def tiny_shards(d):
    """32 train and 12 val images of 8 classes (8 > 5: top-5 is not trivial), in shards of 12, in d."""
    os.makedirs(d, exist_ok=True)
    make_shards(d, n_train=32, n_val=12, classes=8, shard_size=12, seed=1)
    return str(d)


def train_run(shards, out, **kw):
    """A fitted (and closed) Trainer on one torch thread with SMALL's settings, overridden by kw."""
    torch.set_num_threads(1)
    cfg = TrainConfig(shards=shards, out=str(out), **{**SMALL, **kw})
    t = Trainer(cfg, progress=False)
    try:
        return t.fit()
    finally:
        t.close()


def metric_rows(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
