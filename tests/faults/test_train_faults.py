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


# --- option values, output paths, what a refused run leaves (issue 20) -----------------------

BAD_VALUES = [("--width", "inf", "0<x<=16"), ("--width", "nan", "0<x<=16"), ("--width", "1000", "0<x<=16"),
              ("--lr", "nan", "0<x<=10"), ("--lr", "inf", "0<x<=10"), ("--lr", "1e300", "0<x<=10"),
              ("--lighting", "inf", "0<=x<=10"), ("--lighting", "nan", "0<=x<=10"),
              ("--momentum", "nan", "0<=x<1"), ("--weight-decay", "inf", "0<=x<=1")]


@pytest.mark.parametrize("option, value, bounds", BAD_VALUES)
def test_an_option_value_out_of_its_range_is_one_line_and_writes_nothing(good, tmp_path, option, value, bounds):
    code, lines, r = _run("train", good[0], "--out", tmp_path / "run", "--device", "cpu", option, value)
    assert code == 2 and len(lines) == 1 and option in lines[0] and bounds in lines[0], r.output
    assert not os.path.exists(tmp_path / "run")


def test_a_net_that_cannot_fit_the_device_is_refused_before_allocating(good, tmp_path, monkeypatch):
    import train.capacity
    import train.model

    monkeypatch.setattr(train.capacity, "device_memory", lambda device: 1 << 20)  # a 1 MiB device

    def no_allocation(*a, **k):
        raise AssertionError("AlexNet was built before the size check")

    monkeypatch.setattr(train.model.AlexNet, "__init__", no_allocation)
    code, lines, r = _run("train", good[0], "--out", tmp_path / "run", "--device", "cpu", "--width", "0.125",
                          "--init", "kaiming", "--batch-size", "8")
    assert code == 2 and len(lines) == 1, r.output
    assert "--width 0.125" in lines[0] and "parameters" in lines[0] and "smaller --width" in lines[0]
    assert not os.path.exists(tmp_path / "run")


def test_the_parameter_count_of_the_size_check_is_the_nets():
    from train.model import AlexNet, count_parameters, parameter_count

    for classes, width, columns in ((1000, 1.0, 2), (1000, 1.0, 1), (8, 0.125, 2), (10, 0.3, 1), (3, 0.001, 2)):
        assert parameter_count(classes, width, columns) == count_parameters(AlexNet(classes, width=width,
                                                                                    columns=columns))


@pytest.mark.parametrize("command", ["train", "figures", "profile", "report"])
def test_an_output_path_the_system_refuses_is_one_line_before_any_work(good, tmp_path, command, monkeypatch):
    """/proc takes no new files, even from root (for whom os.access says yes)."""
    import train.profile
    import train.report

    shards, ckpt = good
    monkeypatch.setattr(train.profile, "run_profile", lambda *a, **k: pytest.fail("profiled before the check"))
    monkeypatch.setattr(train.report, "report", lambda *a, **k: pytest.fail("reported before the check"))
    args = {
        "train": ["train", shards, "--out", "/proc/alexnet-run", "--device", "cpu"],
        "figures": ["figures", shards, ckpt, "--out", "/proc/alexnet-figs", "--device", "cpu"],
        "profile": ["profile", shards, "--device", "cpu", "--plot", "/proc/x.png"],
        "report": ["report", os.path.dirname(ckpt), "--plot", "/proc/x.png"],
    }[command]
    code, lines, r = _run(*args)
    assert code == 2 and len(lines) == 1 and "/proc" in lines[0] and "cannot be written" in lines[0], r.output
    assert "Traceback" not in r.output


def test_report_writes_a_plot_only_when_asked_and_says_the_path_written(good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = os.path.dirname(good[1])
    code, lines, r = _run("report", run)
    assert code == 0 and os.listdir(tmp_path) == [], r.output
    (tmp_path / "rep").mkdir()
    r = CliRunner().invoke(cli, ["report", run, "--plot", "rep/curves"])
    assert r.exit_code == 0 and "written to rep/curves.png" in r.stderr, r.output
    assert os.listdir(tmp_path / "rep") == ["curves.png"]


def _failed_fit(self):
    from shards.errors import Damage

    raise Damage("s3://bkt/p/train-000000.tar: the object is gone")


@pytest.mark.parametrize("case", ["no GPU", "width too large", "damaged shards", "the first batch fails"])
def test_a_refused_or_failed_train_leaves_no_run_directory(good, tmp_path, monkeypatch, case):
    import torch

    import train.capacity
    from train.trainer import Trainer

    args = ["train", good[0], "--out", tmp_path / "new" / "run", "--width", "0.125", "--init", "kaiming",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu"]
    if case == "no GPU":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        args[-1] = "cuda"
    elif case == "width too large":
        monkeypatch.setattr(train.capacity, "device_memory", lambda device: 1 << 20)
    elif case == "damaged shards":
        args[1] = _damaged(good, tmp_path, lambda d: os.truncate(d / "train-000001.tar", 3000))
    else:
        monkeypatch.setattr(Trainer, "fit", _failed_fit)
    code, lines, r = _run(*args)  # (after the line that says what it trains, when it got that far)
    assert code in (1, 2) and "error" in lines[-1] and "Traceback" not in r.output, r.output
    assert not os.path.exists(tmp_path / "new" / "run")


def test_a_checkpoint_refused_on_a_fresh_run_gives_advice_that_works(good, tmp_path, monkeypatch):
    """No last.pt to resume from: the advice is to run the same command again, and that works."""
    import torch

    args = ["train", good[0], "--out", tmp_path / "run", "--device", "cpu", "--width", "0.125", "--init", "kaiming",
            "--batch-size", "8", "--epochs", "1"]
    real_save = torch.save

    def full(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code, lines, r = _run(*args)
    assert code == 1 and "run the same command again, without --resume" in lines[-1], r.output
    monkeypatch.setattr(torch, "save", real_save)
    code, lines, r = _run(*args)
    assert code == 0, r.output
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1


# --- the shards' sha256 before the first pipeline --------------------------------------------

def _overwritten(good, tmp_path):
    """A copy of the shards whose second training tar has bytes overwritten, its size intact."""
    from shardkit import overwrite

    return _damaged(good, tmp_path, lambda d: overwrite(d / "train-000001.tar", 3000, 100))


def _no_pipeline(*a, **k):
    raise ValueError("a pipeline was built")


def test_a_shard_overwritten_with_its_size_intact_stops_train_before_any_pipeline(good, tmp_path, monkeypatch):
    import pipeline

    shards = _overwritten(good, tmp_path)
    monkeypatch.setattr(pipeline, "build_loader", _no_pipeline)
    args = ["train", shards, "--out", tmp_path / "run", "--device", "cpu", "--width", "0.125", "--init", "kaiming",
            "--batch-size", "8"]
    code, lines, r = _run(*args)
    assert code == 1 and len(lines) == 1 and "train-000001.tar: sha256 differs" in lines[0], r.output
    assert "alexnet verify" in lines[0] and not os.path.exists(tmp_path / "run")
    code, lines, r = _run(*args, "--no-verify-shards")  # skipped: the next thing is the pipeline
    assert code == 2 and "a pipeline was built" in lines[-1], r.output


def test_the_shards_are_hashed_once_and_again_only_when_they_change(good, tmp_path):
    from shards import Manifest
    from shards.checksum import check_shard_hashes

    shards = _damaged(good, tmp_path, lambda d: None)
    m, cache = Manifest.load(shards), tmp_path / "hashes.json"
    tars = sorted(p for p in os.listdir(shards) if p.endswith(".tar"))
    total = sum(os.path.getsize(os.path.join(shards, t)) for t in tars)
    assert check_shard_hashes(shards, m, cache=cache) == total
    assert check_shard_hashes(shards, m, cache=cache) == 0  # a resume reads nothing again
    os.utime(os.path.join(shards, tars[0]), ns=(1, 1))
    assert check_shard_hashes(shards, m, cache=cache) == os.path.getsize(os.path.join(shards, tars[0]))
    overwritten = _overwritten(good, tmp_path / "b")
    from shards.errors import Damage

    with pytest.raises(Damage, match="train-000001.tar: sha256 differs"):
        check_shard_hashes(overwritten, Manifest.load(overwritten), cache=cache)


def test_checkpoints_kept_are_bounded_and_a_resume_still_continues(good, tmp_path):
    """--keep-checkpoints 2: only the two newest checkpoint-<step>.pt stay (besides last.pt and
    best.pt, whatever their step), files of other names are left alone, and --resume works."""
    run = tmp_path / "run"
    args = ["train", good[0], "--out", run, "--device", "cpu", "--width", "0.125", "--init", "kaiming",
            "--batch-size", "8", "--keep-checkpoints", "2"]
    code, lines, r = _run(*args, "--epochs", "3")
    assert code == 0, r.output
    (run / "checkpoint-mine.pt").write_text("not the trainer's")
    code, lines, r = _run(*args, "--epochs", "4", "--resume")
    assert code == 0, r.output
    names = sorted(n for n in os.listdir(run) if n.endswith(".pt"))
    assert names == ["best.pt", "checkpoint-00000012.pt", "checkpoint-00000016.pt", "checkpoint-mine.pt", "last.pt"]
    assert load_checkpoint(run)["epoch"] == 4 and load_checkpoint(run / "best.pt")["step"] in (4, 8, 12, 16)


@pytest.mark.parametrize("what, data, says", [
    ("a JPEG", b"\xff\xd8\xff\xe0" + bytes(100), "a JPEG image"),
    ("a numpy array", b"\x93NUMPY" + bytes(100), "a numpy array file"),
    ("text", b"not a checkpoint", "not a PyTorch file"),
    ("a cut zip", b"PK\x03\x04" + bytes(100), "damaged or cut short"),
])
def test_eval_of_a_file_that_is_not_a_checkpoint_says_what_it_is(good, tmp_path, what, data, says):
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    code, lines, r = _run("eval", good[0], path, "--device", "cpu")
    assert code == 2 and len(lines) == 1 and says in lines[0] and "RUN/best.pt" in lines[0], r.output
    assert "torch.save" not in lines[0] and "corrupted" not in lines[0]


def test_a_state_dict_alone_is_not_taken_for_a_checkpoint(good, tmp_path):
    import torch

    path = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    code, lines, r = _run("eval", good[0], path, "--device", "cpu")
    assert code == 2 and len(lines) == 1 and "not a checkpoint written by `alexnet train`" in lines[0], r.output


@pytest.mark.parametrize("command", ["train", "stats", "verify", "eval"])
def test_a_raw_imagenet_folder_given_as_shards_names_the_preprocess_command(tmp_path, command):
    src = tmp_path / "ILSVRC2012"
    (src / "train" / "n01440764").mkdir(parents=True)
    (src / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
    args = {"train": ["train", src, "--out", tmp_path / "run"], "stats": ["stats", src], "verify": ["verify", src],
            "eval": ["eval", src, tmp_path / "best.pt"]}[command]
    code, lines, r = _run(*args)
    assert code == 2 and len(lines) == 1 and "is an ImageNet source folder" in lines[0], r.output
    assert f"alexnet preprocess {src} SHARDS" in lines[0] and not os.path.exists(tmp_path / "run")


def test_the_progress_bar_says_the_epochs_and_the_runs_eta(good, tmp_path):
    """A full-size run showed `epoch 0: 7/7` and nothing about the other 89 epochs."""
    import io

    import torch

    from train.config import TrainConfig
    from train.trainer import Trainer
    from trainkit import SMALL

    torch.set_num_threads(1)
    t = Trainer(TrainConfig(shards=good[0], out=str(tmp_path / "run"), epochs=3, **SMALL), progress=True)
    bar = t._progress_bar(len(t.train_loader))
    try:
        bar.fp = io.StringIO()
        assert bar.desc.startswith("epoch 0 of 3")
        t._fit_start, t._fit_first_step, t.step = t._fit_start - 8.0, 0, 4  # 4 of 12 steps in 8 s
        assert t._eta() == "0:00:16"
    finally:
        bar.close()
        t.close()
