"""The trainer on tiny shards (CPU): the run directory, metrics, resume, divergence, the recipe's
first step, data-parallel training."""
import json
import os
import socket

import pytest
import torch

from shardkit import make_shards
from trainkit import SMALL, metric_rows as _rows, tiny_shards, train_run as _train
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.trainer import Trainer, TrainingDiverged

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


def test_run_directory(shards, tmp_path):
    t = _train(shards, tmp_path / "run", epochs=2)
    assert t.step == 2 * 4  # 32 images / batch 8, two epochs
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt", "checkpoint-00000004.pt", "checkpoint-00000008.pt"} <= files
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["width"] == 0.125 and cfg["init"] == "kaiming" and cfg["batch_size"] == 8
    rows = _rows(tmp_path / "run")
    train_rows = [r for r in rows if "loss" in r and "top1_error" not in r]
    val_rows = [r for r in rows if "top1_error" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    for r in train_rows:
        assert {"step", "epoch", "loss", "lr", "images_per_s", "data_wait", "data_ms", "compute_ms"} <= set(r)
        assert 0 <= r["data_wait"] <= 1 and r["images_per_s"] > 0 and r["compute_ms"] > 0 and r["data_ms"] >= 0
    check_step_times(train_rows, images_per_step=8)
    assert len(val_rows) == 2
    for r in val_rows:
        assert 0 <= r["top1_error"] <= 1 and 0 <= r["top5_error"] <= r["top1_error"]
    # best.pt is the checkpoint of the lowest validation error (the first of equals)
    errors = [r["top1_error"] for r in val_rows]
    best_epoch = errors.index(min(errors)) + 1
    assert os.path.samefile(tmp_path / "run" / "best.pt", tmp_path / "run" / f"checkpoint-{4 * best_epoch:08d}.pt")
    assert load_checkpoint(tmp_path / "run" / "best.pt")["best_top1_error"] == min(errors)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["model_config"] == {"num_classes": 8, "width": 0.125, "init": "kaiming", "input_norm": "channel",
                                     "columns": 2, "lrn": True, "pool": "overlapping"}
    assert cfg["input_norm"] == "channel"  # resolved from the init, recorded as it ran
    assert state["step"] == 8 and state["epoch"] == 2


def test_fresh_start_drops_metrics_of_a_run_killed_before_its_first_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {s}, "loss": 9.0}}\n' for s in (1, 2, 3)))
    _train(shards, run, epochs=1)
    steps = [r["step"] for r in _rows(run) if "top1_error" not in r]
    assert steps == [1, 2, 3, 4] and all(r["loss"] != 9.0 for r in _rows(run))


def test_resume_follows_the_same_trajectory(shards, tmp_path):
    """Stopped mid-epoch by --max-steps and resumed, a CPU run ends with the same weights."""
    full = _train(shards, tmp_path / "full", epochs=2, max_steps=7)
    _train(shards, tmp_path / "part", epochs=2, max_steps=3)
    assert load_checkpoint(tmp_path / "part")["batch_in_epoch"] == 3
    resumed = _train(shards, tmp_path / "part", epochs=2, max_steps=7, resume=True)
    assert resumed.step == full.step == 7
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
    losses = lambda run: [r["loss"] for r in _rows(run) if "top1_error" not in r]  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_diverged_run_stops_and_keeps_last_good_checkpoint(shards, tmp_path):
    torch.set_num_threads(1)
    t = Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=3, checkpoint_every=2, **SMALL),
                progress=False)
    real_step = t.train_step

    def nan_from_step_5(x, y):
        loss = real_step(x, y)
        return loss * float("nan") if t.step >= 4 else loss

    t.train_step = nan_from_step_5
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        t.fit()
    assert t.step == 5
    assert load_checkpoint(tmp_path / "run")["step"] == 4  # the NaN step was not saved


def test_the_plateau_schedule_starts_below_0_9_of_chance(shards, tmp_path):
    """8 classes: chance error 0.875, the plateau counts from 0.9 x 0.875 = 0.7875. Validations
    at 0.80 (below chance, above 0.7875) never cut the rate; from the first 0.70 on, two more
    without improvement (patience 2) divide it by 10, and training runs at the new rate."""
    errors = iter([0.80, 0.80, 0.80, 0.70, 0.70, 0.70, 0.70])
    t = Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=7, **SMALL), progress=False)
    t.validate = lambda: {"top1_error": next(errors), "top5_error": 0.0, "loss": 1.0}
    try:
        t.fit()
    finally:
        t.close()
    rows = _rows(tmp_path / "run")
    val_lr = [r["lr"] for r in rows if "top1_error" in r]
    assert val_lr == pytest.approx([1e-3] * 5 + [1e-4] * 2)
    train_lr = {r["epoch"]: r["lr"] for r in rows if "top1_error" not in r}
    assert train_lr == pytest.approx({**{e: 1e-3 for e in range(6)}, 6: 1e-4})


def check_step_times(rows, images_per_step):
    """Each row's times against the trainer's other clock, `wall_s` (seconds since the start of
    fit): between two rows of one epoch lie that row's steps and nothing else (no validation), so
    the steps' data + compute time fits in the interval, and img/s x interval is the images of
    those steps (every replica's)."""
    checked = 0
    for prev, r in zip(rows, rows[1:]):
        if prev["epoch"] != r["epoch"]:
            continue
        steps = r["step"] - prev["step"]
        interval_ms = 1e3 * (r["wall_s"] - prev["wall_s"])
        assert steps * (r["data_ms"] + r["compute_ms"]) <= 1.02 * interval_ms + 1, (prev, r)
        assert r["images_per_s"] * interval_ms / 1e3 == pytest.approx(steps * images_per_step, rel=0.1), (prev, r)
        checked += 1
    assert checked >= len(rows) // 2


def test_compute_time_is_the_step_and_data_time_the_wait(shards, tmp_path):
    """A training step made 30 ms longer shows as >= 30 ms of compute time per step and not as
    data time; with two steps per row, the times are per step and the images those of both."""
    import time

    t = Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=1, **{**SMALL, "log_every": 2}),
                progress=False)
    real_step = t.train_step

    def slow_step(x, y):
        time.sleep(0.03)
        return real_step(x, y)

    t.train_step = slow_step
    try:
        t.fit()
    finally:
        t.close()
    rows = [r for r in _rows(tmp_path / "run") if "data_ms" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["compute_ms"] >= 30 and r["data_ms"] < 30 for r in rows), rows
    check_step_times(rows, images_per_step=8)


def test_one_step_of_the_small_run_recipe_moves_every_layer_alike(tmp_path):
    """The small-run recipe (width 0.25, kaiming, batch 32, the default lr 0.01) on real shard
    input: after one step every weight layer moved by a similar share of its norm. With conv1
    scaled for 0-255 input (the old design) conv1 moved ~1000x more than the rest."""
    d = tmp_path / "shards"
    d.mkdir()
    make_shards(d, n_train=64, n_val=8, classes=8, shard_size=32, seed=3)
    torch.set_num_threads(1)
    t = Trainer(TrainConfig(shards=str(d), out=str(tmp_path / "run"), width=0.25, init="kaiming", batch_size=32,
                            device="cpu", max_steps=1), progress=False)
    assert t.cfg.lr == 0.01 and t.cfg.input_norm == "channel"
    before = {n: p.detach().clone() for n, p in t.model.named_parameters() if n.endswith("weight")}
    t.fit()
    t.close()
    moved = {n: ((p.detach() - before[n]).norm() / before[n].norm()).item()
             for n, p in t.model.named_parameters() if n in before}
    assert len(moved) == 15 and all(v > 0 for v in moved.values())
    hidden = {n: v for n, v in moved.items() if not n.startswith("fc8")}
    # conv1-fc7 of both columns within 4x of each other; fc8 (10-way here) at most 30x the least
    assert max(hidden.values()) / min(hidden.values()) < 4, moved
    assert max(moved.values()) / min(moved.values()) < 30, moved
    assert max(moved.values()) < 0.05, moved  # no layer's step is a sizeable part of its weights


def test_resume_refuses_other_shards_with_the_same_classes(shards, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_shards(other, n_train=32, n_val=12, classes=8, shard_size=12, seed=9)  # same wnids, other images
    run = tmp_path / "run"
    _train(shards, run, epochs=1)
    with pytest.raises(ValueError, match="other shards"):
        _train(str(other), run, epochs=2, resume=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, shards, out, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import copy

    import torch.distributed as dist
    import torch.nn.functional as F

    cfg = TrainConfig(shards=shards, out=out, epochs=2, max_steps=3, **SMALL)  # 2 batches per rank-epoch
    t = Trainer(cfg, progress=False)
    # Gradient averaging: a plain copy's local gradient, averaged by hand, equals DDP's.
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(rank)) * 50
    y = torch.tensor([rank, 1, 2, 3])
    t.model.eval()
    local = copy.deepcopy(t.model)
    F.cross_entropy(local(x), y).backward()
    F.cross_entropy(t.net(x), y).backward()
    for (name, p), q in zip(t.model.named_parameters(), local.parameters()):
        g = q.grad.clone()
        dist.all_reduce(g)
        torch.testing.assert_close(p.grad, g / world, rtol=1e-4, atol=1e-6, msg=name)
    t.optimizer.zero_grad(set_to_none=True)
    t.model.train()
    t.fit()
    torch.save({k: v for k, v in t.model.state_dict().items()}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_two_cpu_processes(shards, tmp_path):
    """Two gloo processes: gradients are averaged and the replicas stay identical."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), shards, str(tmp_path / "run"), str(tmp_path)), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert load_checkpoint(tmp_path / "run")["step"] == 3


def _resume_worker(rank, world, port, shards, root, name, kw):
    """One rank of one two-process run; its weights and torch RNG state saved, then the process
    ends without running destructors: gloo's process group, dropped after a DDP reducer in a
    process that goes on, deadlocked once here (torch 2.13, ~ProcessGroupGloo against the GIL)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    t = Trainer(TrainConfig(shards=shards, out=os.path.join(root, name), epochs=2, **{**SMALL, **kw}), progress=False)
    try:
        t.fit()
    finally:
        t.close()
    torch.save({"model": t.model.state_dict(), "rng": torch.get_rng_state()},
               os.path.join(root, f"{name}-{kw.get('resume', False)}-rank{rank}.pt"))
    os._exit(0)


@pytest.mark.slow
def test_a_two_process_run_resumes_each_ranks_random_state(shards, tmp_path):
    """Two gloo processes stopped after step 1 (mid-epoch) and resumed: each rank's torch RNG
    (its dropout masks differ from the other's) continues from its own saved state, so the run
    ends with the weights, the RNG states and the losses of an uninterrupted one."""
    import torch.multiprocessing as mp

    runs = (("full", {"max_steps": 4}), ("part", {"max_steps": 1}), ("part", {"max_steps": 4, "resume": True}))
    for name, kw in runs:  # 4 steps straight; 1 step; that run resumed to 4
        mp.spawn(_resume_worker, args=(2, _free_port(), shards, str(tmp_path), name, kw), nprocs=2)
    ranks = [{key: torch.load(tmp_path / f"{name}-{resume}-rank{r}.pt")
              for key, name, resume in (("full", "full", False), ("part", "part", False), ("resumed", "part", True))}
             for r in (0, 1)]
    saved = load_checkpoint(tmp_path / "part" / "checkpoint-00000001.pt")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    for r, got in enumerate(ranks):
        assert torch.equal(saved["rng"][r]["torch"], got["part"]["rng"]), r  # each rank's own state
    assert not torch.equal(ranks[0]["part"]["rng"], ranks[1]["part"]["rng"])  # so a mix-up shows
    for r, got in enumerate(ranks):
        assert torch.equal(got["resumed"]["rng"], got["full"]["rng"]), r
        for k, v in got["full"]["model"].items():
            torch.testing.assert_close(got["resumed"]["model"][k], v, rtol=0, atol=0, msg=f"rank {r}: {k}")
    losses = lambda run: [r["loss"] for r in _rows(run) if "top1_error" not in r]  # noqa: E731
    assert len(losses(tmp_path / "full")) == 4 and losses(tmp_path / "part") == losses(tmp_path / "full")
    check_step_times([r for r in _rows(tmp_path / "full") if "loss" in r and "top1_error" not in r],
                     images_per_step=2 * 8)


def test_one_run_per_run_directory(shards, tmp_path):
    """A second trainer on a run directory in use stops at once, naming the holder; the lock goes
    with the first (close, or a failed start)."""
    from shards.files import Busy

    cfg = TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=1, **SMALL)
    first = Trainer(cfg, progress=False)
    with pytest.raises(Busy, match=f"in use by another alexnet train \\(pid {os.getpid()}\\)"):
        Trainer(cfg, progress=False)
    first.close()
    assert not (tmp_path / "run" / ".lock").exists()
    with pytest.raises(ValueError):  # a start that fails releases the directory too
        Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), **{**SMALL, "device": "gpu"}), progress=False)
    Trainer(cfg, progress=False).close()


def test_data_time_is_the_wait_for_the_loader_and_compute_time_the_step(shards, tmp_path):
    """A loader made 40 ms late per batch shows as >= 40 ms of data time per step."""
    import time

    t = Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=1, **SMALL), progress=False)
    real = t.train_loader

    class Late:
        def __len__(self):
            return len(real)

        def set_epoch(self, e):
            real.set_epoch(e)

        def __iter__(self):
            for batch in real:
                time.sleep(0.04)
                yield batch

    t.train_loader = Late()
    try:
        t.fit()
    finally:
        t.train_loader = real
        t.close()
    rows = [r for r in _rows(tmp_path / "run") if "data_ms" in r]
    assert len(rows) == 4 and all(r["data_ms"] >= 40 for r in rows), rows
    assert all(r["data_wait"] > 0.05 for r in rows)
