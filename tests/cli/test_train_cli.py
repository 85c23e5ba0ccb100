"""`alexnet train`, `eval` and `figures` through the CLI: options, one-line errors, resume."""
import json
import os

import pytest
from click.testing import CliRunner

from alexnet_cli import main as cli
from shardkit import make_shards
from trainkit import metric_rows as _rows, tiny_shards, train_run as _train
from train.checkpoint import load_checkpoint

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


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


def test_every_train_config_field_is_an_option_with_its_default():
    """TrainConfig is the only source of defaults: each field (but the paths, --resume and the
    device placement, which have their own options) is `--<field>` with the field's default."""
    from dataclasses import MISSING, fields

    from train.cli import PARAM_OF_FIELD, train
    from train.config import TrainConfig

    params = {p.name: p for p in train.params}
    for f in fields(TrainConfig):
        name = PARAM_OF_FIELD.get(f.name, f.name)
        assert name in params, f"TrainConfig.{f.name} has no `alexnet train` option"
        if f.name in ("shards", "resume", "apply_changes", "devices"):
            continue
        flag = "--threads" if f.name == "num_threads" else "--" + f.name.replace("_", "-")
        assert flag in params[name].opts, (f.name, params[name].opts)
        default = params[name].default
        if isinstance(f.default, tuple):
            default = tuple(int(v) for v in default.split(","))
        assert f.default is not MISSING and default == f.default, (f.name, default, f.default)


def test_section_5_settings_reach_the_run(shards, tmp_path):
    """--momentum, --weight-decay, --schedule step --lr-steps and --no-channels-last land in
    config.json and in the optimiser the run used; a bad --lr-steps is one line, exit 2."""
    run = str(tmp_path / "run")
    r = CliRunner().invoke(cli, ["train", shards, "--out", run, "--width", "0.125", "--init", "kaiming",
                                 "--batch-size", "8", "--epochs", "2", "--device", "cpu", "--momentum", "0.5",
                                 "--weight-decay", "0.001", "--schedule", "step", "--lr-steps", "1",
                                 "--lr", "0.002", "--no-channels-last", "--patience", "4", "--lr-drops", "1", "--log-every", "1"])
    assert r.exit_code == 0, r.output
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert (cfg["momentum"], cfg["weight_decay"], cfg["schedule"], cfg["lr_steps"], cfg["channels_last"],
            cfg["patience"], cfg["lr_drops"]) == (0.5, 0.001, "step", [1], False, 4, 1)
    state = load_checkpoint(run)
    groups = state["optimizer"]["param_groups"]
    assert {g["momentum"] for g in groups} == {0.5} and {g["weight_decay"] for g in groups} == {0.001, 0.0}
    lrs = [row["lr"] for row in _rows(run) if "top1_error" not in row]
    assert lrs[0] == pytest.approx(0.002) and lrs[-1] == pytest.approx(0.0002)  # /10 at epoch 1
    for bad in ("30,20", "x", "0"):
        r = CliRunner().invoke(cli, ["train", shards, "--out", str(tmp_path / "bad"), "--lr-steps", bad])
        assert r.exit_code == 2 and "--lr-steps" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_checkpoint_that_cannot_be_written_is_one_line(shards, tmp_path, monkeypatch):
    """A full disk during a checkpoint (torch.save says "unexpected pos"): one line, exit 1, the
    previous last.pt kept, no temporary file left."""
    import torch

    run = tmp_path / "run"
    base = ["train", shards, "--out", str(run), "--device", "cpu"]
    r = CliRunner().invoke(cli, [*base, "--width", "0.125", "--init", "kaiming", "--batch-size", "8", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    real_save = torch.save

    def full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/12: file write failed\nunexpected pos 1024 vs 2048")

    monkeypatch.setattr(torch, "save", full)
    r = CliRunner().invoke(cli, [*base, "--resume", "--epochs", "2"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and "checkpoint-00000008.pt: not written" in lines[-1], r.output
    assert "last.pt still holds the previous checkpoint" in lines[-1] and "Traceback" not in r.output
    assert load_checkpoint(run)["step"] == 4
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]


def test_eval_of_an_edited_checkpoint_is_one_line(shards, tmp_path):
    """Settings that do not match the weights, weights of another shape, no weights: exit 2."""
    import torch

    run = tmp_path / "run"
    _train(shards, run, epochs=1)
    state = load_checkpoint(run / "last.pt")
    edits = {
        "width": lambda s: s["model_config"].update(width=0.25),
        "shape": lambda s: s["model"].update({"fc8.weight": torch.zeros(3, 3)}),
        "init": lambda s: s["model_config"].update(init=None),
        "nothing": lambda s: s.update(model={}),
    }
    for name, edit in edits.items():
        s = load_checkpoint(run / "last.pt")
        edit(s)
        torch.save(s, tmp_path / f"{name}.pt")
        r = CliRunner().invoke(cli, ["eval", shards, str(tmp_path / f"{name}.pt"), "--device", "cpu"])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (name, r.output)
        assert f"{name}.pt" in r.output and "Traceback" not in r.output, (name, r.output)
    assert state["step"] == 4


@pytest.mark.parametrize("args, net", [([], "AlexNet of"), (["--columns", "1"], "AlexNet (1 column(s), LRN, overlapping"),
                                       (["--no-lrn"], "no LRN"), (["--pool", "traditional"], "traditional pooling")])
def test_train_prints_the_variant_and_its_parameter_count(shards, tmp_path, args, net):
    """Each Section 3 ablation trains, says its parameter count at start, and is recorded in the
    checkpoint so that eval rebuilds the same net."""
    from train.checkpoint import model_from_checkpoint
    from train.model import AlexNet, count_parameters

    run = str(tmp_path / "run")
    r = CliRunner().invoke(cli, ["train", shards, "--out", run, "--width", "0.125", "--init", "kaiming",
                                 "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--max-steps", "1", *args])
    assert r.exit_code == 0, r.output
    model, state = model_from_checkpoint(os.path.join(run, "last.pt"))
    kw = {k: state["model_config"][k] for k in ("columns", "lrn", "pool")}
    expected = count_parameters(AlexNet(8, width=0.125, init="kaiming", **kw))
    assert net in r.output and f"of {expected:,} parameters" in r.output, r.output
    assert count_parameters(model) == expected
    r = CliRunner().invoke(cli, ["eval", shards, os.path.join(run, "last.pt"), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
