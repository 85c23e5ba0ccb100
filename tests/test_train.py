"""The trainer, checkpoints, resume, eval and data-parallel training, on tiny shards (CPU)."""
import json
import os
import socket

import pytest
import torch
from click.testing import CliRunner

from alexnet_cli import main as cli
from shardkit import make_shards
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.trainer import Trainer, TrainingDiverged

SMALL = dict(width=0.125, init="kaiming", lr=0.001, batch_size=8, device="cpu", log_every=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    make_shards(d, n_train=32, n_val=12, classes=8, shard_size=12, seed=1)  # 8 > 5: top-5 is not trivial
    return str(d)


def _train(shards, out, **kw):
    torch.set_num_threads(1)
    cfg = TrainConfig(shards=shards, out=str(out), **{**SMALL, **kw})
    return Trainer(cfg, progress=False).fit()


def _rows(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


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
        assert {"step", "epoch", "loss", "lr", "images_per_s", "data_wait"} <= set(r)
        assert 0 <= r["data_wait"] <= 1 and r["images_per_s"] > 0
    assert len(val_rows) == 2
    for r in val_rows:
        assert 0 <= r["top1_error"] <= 1 and 0 <= r["top5_error"] <= r["top1_error"]
    # best.pt is the checkpoint of the lowest validation error (the first of equals)
    errors = [r["top1_error"] for r in val_rows]
    best_epoch = errors.index(min(errors)) + 1
    assert os.path.samefile(tmp_path / "run" / "best.pt", tmp_path / "run" / f"checkpoint-{4 * best_epoch:08d}.pt")
    assert load_checkpoint(tmp_path / "run" / "best.pt")["best_top1_error"] == min(errors)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["model_config"] == {"num_classes": 8, "width": 0.125, "init": "kaiming", "input_norm": "channel"}
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


def test_step_schedule_and_plateau():
    from train.schedule import PlateauSchedule, StepSchedule

    s = StepSchedule(0.01, steps=(2, 4))
    assert [round(s.on_epoch(e), 6) for e in range(6)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    p = PlateauSchedule(0.01, drops=3, patience=1)
    lrs = [p.on_validation(e) for e in (0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.00001, 0.00001, 0.00001])  # three drops, no more


def test_plateau_does_not_fire_before_the_error_starts_to_improve():
    """A flat start at chance (10 classes: 0.9) is not "stopped improving"; once below 0.9 x chance
    the usual rule applies, and the state survives a checkpoint."""
    from train.schedule import PlateauSchedule

    p = PlateauSchedule(0.01, drops=3, patience=2, started_below=0.81)
    flat = [p.on_validation(e) for e in (0.9, 0.905, 0.9, 0.895, 0.9, 0.9)]
    assert flat == [0.01] * 6 and not p.started
    assert [p.on_validation(e) for e in (0.6, 0.5)] == [0.01, 0.01] and p.started
    q = PlateauSchedule(0.01, drops=3, patience=2, started_below=0.81)
    q.load_state_dict(p.state_dict())
    assert [q.on_validation(e) for e in (0.5, 0.5, 0.5, 0.5)] == pytest.approx([0.01, 0.001, 0.001, 0.0001])


def test_trainer_passes_the_chance_threshold(shards, tmp_path):
    t = Trainer(TrainConfig(shards=shards, out=str(tmp_path / "run"), epochs=1, **SMALL), progress=False)
    assert t.schedule.started_below == pytest.approx(0.9 * (1 - 1 / 8))
    t.close()


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


def test_cli_train_eval_json(shards, tmp_path):
    run = str(tmp_path / "run")
    r = CliRunner().invoke(cli, ["train", shards, "--out", run, "--width", "0.125", "--init", "kaiming", "--lr", "0.001",
                                 "--batch-size", "8", "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for ten in ([], ["--ten-crop"]):
        r = CliRunner().invoke(cli, ["eval", shards, os.path.join(run, "last.pt"), "--device", "cpu", "--json", *ten])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert 0 <= out["top5_error"] <= out["top1_error"] <= 1 and out["samples"] == 12
    # a second run into the same folder without --resume is refused, nothing overwritten
    r = CliRunner().invoke(cli, ["train", shards, "--out", run, "--device", "cpu"])
    assert r.exit_code == 2 and "--resume" in r.output


def test_eval_reads_the_input_normalisation_training_used(shards, tmp_path):
    """A kaiming run trains on "channel" input; `eval` rebuilds that loader from the checkpoint."""
    from pipeline import build_loader
    from train.checkpoint import model_from_checkpoint
    from train.evaluate import evaluate

    run = tmp_path / "run"
    _train(shards, run, epochs=1)
    model, state = model_from_checkpoint(run / "last.pt")
    assert state["model_config"]["input_norm"] == "channel"
    r = CliRunner().invoke(cli, ["eval", shards, str(run / "last.pt"), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])["loss"]
    expected = {m: evaluate(model, build_loader(shards, "val", 6, device="cpu", mean=m), "cpu")["loss"]
                for m in ("channel", "image")}
    assert got == pytest.approx(expected["channel"], rel=1e-5) and got != pytest.approx(expected["image"], rel=1e-2)
    # resuming with another input normalisation is refused
    with pytest.raises(ValueError, match="other model settings"):
        _train(shards, run, epochs=2, resume=True, input_norm="image")


def test_eval_and_figures_refuse_a_checkpoint_of_other_classes(shards, tmp_path):
    """One line, exit 2, no PNG written: another class count, or the same count with another wnid."""
    import shutil

    run = tmp_path / "run"
    _train(shards, run, epochs=1)
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    make_shards(fewer, n_train=8, n_val=4, classes=4, shard_size=8, seed=2)
    renamed = tmp_path / "renamed"
    shutil.copytree(shards, renamed)
    m = json.load(open(renamed / "manifest.json"))
    m["classes"][-1]["wnid"] = "n99999999"  # still sorted and unique
    json.dump(m, open(renamed / "manifest.json", "w"))
    for other, says in ((fewer, "trained on 8 classes"), (renamed, "class 7 is")):
        for args in (["eval", str(other), str(run / "last.pt")],
                     ["figures", str(other), str(run / "last.pt"), "--out", str(tmp_path / "fig")]):
            r = CliRunner().invoke(cli, [*args, "--device", "cpu"])
            assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "fig").exists()


def test_resume_continues_as_it_ran_and_refuses_silent_changes(shards, tmp_path):
    run = str(tmp_path / "run")
    base = ["train", shards, "--out", run, "--device", "cpu"]
    r = CliRunner().invoke(cli, [*base, "--width", "0.125", "--init", "kaiming", "--lr", "0.001", "--batch-size", "8",
                                 "--epochs", "1"])
    assert r.exit_code == 0, r.output
    # left-out options are the run's own (not the CLI defaults: width 1, batch 128, ...)
    r = CliRunner().invoke(cli, [*base, "--resume", "--epochs", "2", "--log-every", "3"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run)["step"] == 8
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert (cfg["width"], cfg["lr"], cfg["batch_size"], cfg["epochs"]) == (0.125, 0.001, 8, 2)
    # given and different: refused, one line naming each, nothing run
    r = CliRunner().invoke(cli, [*base, "--resume", "--epochs", "3", "--lr", "0.05", "--seed", "7", "--lighting", "0"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert all(f"{k} " in r.output for k in ("lr", "seed", "lighting")) and "--apply-changes" in r.output
    assert load_checkpoint(run)["step"] == 8
    # applied when asked, and recorded
    r = CliRunner().invoke(cli, [*base, "--resume", "--epochs", "3", "--lr", "0.05", "--apply-changes"])
    assert r.exit_code == 0, r.output
    state = load_checkpoint(run)
    assert state["step"] == 12 and state["train_config"]["lr"] == 0.05
    assert json.load(open(os.path.join(run, "config.json")))["lr"] == 0.05
    changes = [json.loads(line) for line in open(os.path.join(run, "resumes.jsonl"))]
    assert changes == [{"step": 8, "changed": {"lr": [0.001, 0.05]}}]
    assert [r["lr"] for r in _rows(run) if r["step"] > 8 and "top1_error" not in r][0] == 0.05


def test_resume_refuses_other_shards_with_the_same_classes(shards, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_shards(other, n_train=32, n_val=12, classes=8, shard_size=12, seed=9)  # same wnids, other images
    run = tmp_path / "run"
    _train(shards, run, epochs=1)
    with pytest.raises(ValueError, match="other shards"):
        _train(str(other), run, epochs=2, resume=True)


def test_ten_crop_eval_equals_mean_of_softmax(shards):
    """eval --ten-crop averages the softmax over the ten patches (Section 4.1)."""
    from pipeline import build_loader
    from train.evaluate import evaluate
    from train.model import AlexNet

    torch.manual_seed(0)
    model = AlexNet(8, width=0.125, init="kaiming").eval()
    loader = build_loader(shards, "val", 6, device="cpu", ten_crop=True)
    r = evaluate(model, loader, "cpu")
    wrong1 = wrong5 = n = 0
    nll = 0.0
    with torch.no_grad():
        for x, y in loader:
            p = torch.stack([model(x[:, v]).softmax(1) for v in range(10)]).mean(0)
            wrong1 += (p.argmax(1) != y).sum().item()
            wrong5 += (~(p.topk(5, 1).indices == y[:, None]).any(1)).sum().item()
            nll -= p[torch.arange(len(y)), y].log().sum().item()
            n += len(y)
    assert r["samples"] == n == 12 and r["top1_error"] == pytest.approx(wrong1 / n)
    assert r["top5_error"] == pytest.approx(wrong5 / n)
    # the loss tells the softmax average apart from a logit average or the centre crop alone
    assert r["loss"] == pytest.approx(nll / n, rel=1e-5)


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


@pytest.mark.parametrize("gpus, local_world, rank, expected", [
    (8, 4, 3, ("cuda:6", "cuda:7")),  # a pair of GPUs per process (Section 3.2)
    (8, 8, 5, ("cuda:5",)),           # too few for pairs: one GPU each, the same on every rank
    (2, 1, 0, ("cuda:0", "cuda:1")),
    (1, 1, 0, ("cuda:0",)),
])
def test_device_layout_is_the_same_on_every_rank(monkeypatch, gpus, local_world, rank, expected):
    from train.trainer import resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    devices, first = resolve_devices(TrainConfig(shards="x", device="cuda"), rank, local_world)
    assert devices == expected and first == torch.device(expected[0])


def test_device_layout_errors(monkeypatch):
    from train.trainer import resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="only 2 GPU"):
        resolve_devices(TrainConfig(shards="x", device="cuda"), 0, 4)
    with pytest.raises(ValueError, match="torchrun"):
        resolve_devices(TrainConfig(shards="x", devices=("cuda:0", "cuda:1")), 0, 2)
    with pytest.raises(ValueError, match="cuda:5"):
        resolve_devices(TrainConfig(shards="x", devices=("cuda:0", "cuda:5")), 0, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices(TrainConfig(shards="x", device="auto"))[0] is None
