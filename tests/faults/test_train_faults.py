"""The fault suite for `train`, `eval`, `figures`, `profile` and `report` (docs/FAULTS.md): each
bad input is built in tmp_path; the command must exit with the promised code, say one line on
stderr naming the file or option, and leave what was there as it was."""
import os
import shutil

import pytest
from click.testing import CliRunner

from alexnet_cli import main as cli
from train.checkpoint import load_checkpoint
from trainkit import tiny_shards, train_run


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    shards = tiny_shards(root / "shards")
    train_run(shards, root / "run", epochs=1)
    return shards, str(root / "run" / "last.pt")


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    lines = r.stderr.strip().splitlines() if r.stderr else r.output.strip().splitlines()
    return r.exit_code, lines, r


def _damaged(good, tmp_path, damage):
    shards = tmp_path / "shards"
    shutil.copytree(good[0], shards)
    damage(shards)
    return shards


DAMAGE = {
    "truncated tar": (lambda d: os.truncate(d / "val-000000.tar", 5000), "val-000000.tar: truncated"),
    "missing tar": (lambda d: os.remove(d / "val-000000.tar"), "val-000000.tar: missing"),
    "missing index": (lambda d: os.remove(d / "val-000000.idx"), "val-000000.idx: missing"),
    "garbage index": (lambda d: (d / "val-000000.idx").write_text("not an index\n"), "val-000000.idx: not a readable"),
    "stale index": (lambda d: (d / "val-000000.idx").write_text(
        "\n".join((d / "val-000000.idx").read_text().splitlines()[:-1]).replace("v1.2 12", "v1.2 11") + "\n"),
                    "indexes 11 samples, the manifest says 12"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_eval_on_damaged_shards_is_one_line_exit_1(good, tmp_path, case):
    damage, says = DAMAGE[case]
    shards = _damaged(good, tmp_path, damage)
    code, lines, r = _run("eval", shards, good[1], "--device", "cpu")
    assert code == 1 and len(lines) == 1 and says in lines[0] and "alexnet verify" in lines[0], r.output
    assert "Traceback" not in r.output


def test_train_on_damaged_shards_stops_before_any_output(good, tmp_path):
    damage, says = DAMAGE["truncated tar"]
    shards = _damaged(good, tmp_path, lambda d: os.truncate(d / "train-000001.tar", 3000))
    code, lines, r = _run("train", shards, "--out", tmp_path / "run", "--device", "cpu", "--width", "0.125",
                          "--init", "kaiming", "--batch-size", "8")
    assert code == 1 and len(lines) == 1 and "train-000001.tar: truncated" in lines[0], r.output
    assert not os.path.exists(tmp_path / "run" / "last.pt") and not os.path.exists(tmp_path / "run" / ".lock")


def test_a_missing_mean_image_is_one_line(good, tmp_path):
    """The paper's input (the default init) needs the mean image: no mean image, no training."""
    shards = _damaged(good, tmp_path, lambda d: os.remove(d / "mean_image.npy"))
    code, lines, r = _run("train", shards, "--out", tmp_path / "run", "--device", "cpu", "--width", "0.125",
                          "--batch-size", "8")
    assert code == 1 and len(lines) == 1 and "mean_image.npy" in lines[0] and "alexnet verify" in lines[0], r.output
    assert not os.path.exists(tmp_path / "run" / "config.json")


def test_resume_on_a_run_in_use_is_one_line(good, tmp_path):
    from shards.files import exclusive

    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(good[1]), run)
    before = load_checkpoint(run)["step"]
    with exclusive(run, "alexnet train"):
        code, lines, r = _run("train", good[0], "--out", run, "--resume", "--epochs", "2")
    assert code == 2 and len(lines) == 1 and "in use by another alexnet train" in lines[0], r.output
    assert load_checkpoint(run)["step"] == before


@pytest.mark.parametrize("command", ["train", "figures", "profile", "report"])
def test_output_paths_are_checked_before_any_work(good, tmp_path, command):
    shards, ckpt = good
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    args = {
        "train": ["train", shards, "--out", a_file, "--device", "cpu"],
        "figures": ["figures", shards, ckpt, "--out", a_file, "--device", "cpu"],
        "profile": ["profile", shards, "--device", "cpu", "--plot", tmp_path / "no" / "such" / "p.png"],
        "report": ["report", os.path.dirname(ckpt), "--plot", tmp_path],
    }[command]
    code, lines, r = _run(*args)
    assert code == 2 and len(lines) == 1, r.output
    assert ("--out" in lines[0] or "--plot" in lines[0]) and "Traceback" not in r.output
    assert a_file.read_text() == "keep me"


def test_eval_of_a_missing_or_damaged_checkpoint_is_one_line(good, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for path, says in ((tmp_path / "none.pt", "no such checkpoint"), (bad, "not a readable checkpoint")):
        code, lines, r = _run("eval", good[0], path, "--device", "cpu")
        assert code == 2 and len(lines) == 1 and says in lines[0] and str(path) in lines[0], r.output
