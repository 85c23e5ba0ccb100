"""`alexnet preprocess` and `alexnet merge` as a user meets them: one-line errors and exit codes,
summaries, resume after kill -9, the lock, workers that end with the main process, help.

Small data only: the sample-data generator (tests/samplekit.py), all in tmp_path.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import alexnet_cli
from demo import sample_data
from preprocess.source import scan
from samplekit import (CLASSES, VAL_PER_CLASS, alive, children, cli, interrupt, one_line_error,  # noqa: F401
                       part_runs, run, single, src, tars)


def test_cli_bad_invocations_exit_2_and_touch_nothing(src, single, tmp_path):
    assert "no such folder" in one_line_error(cli("preprocess", tmp_path / "missing", tmp_path / "o"))
    (tmp_path / "notimagenet").mkdir()
    assert "no train/" in one_line_error(cli("preprocess", tmp_path / "notimagenet", tmp_path / "o"))
    before = {f: os.path.getmtime(single / f) for f in os.listdir(single)}
    msg = one_line_error(cli("preprocess", src, single, "--quality", "80", "--shard-size", "5"))
    assert "other settings" in msg and "quality" in msg
    msg = one_line_error(cli("preprocess", src, single, "--split", "val", "--seed", "3", "--shard-size", "5"))
    assert "seed" in msg
    assert {f: os.path.getmtime(single / f) for f in os.listdir(single)} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(cli("preprocess", src, foreign))
    assert os.listdir(foreign) == ["notes.txt"]
    assert "--part" in one_line_error(cli("preprocess", src, tmp_path / "o", "--part", "2/2"))
    assert not (tmp_path / "o").exists()


def test_cli_run_summary_and_max_errors_exit_1(src, tmp_path):
    result = cli("preprocess", src, tmp_path / "a", "--workers", "1", "--shard-size", "8", "--split", "train", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("preprocess: 47 images in 6 shards, 1 errors") and "img/s" in result.stdout
    result = cli("preprocess", src, tmp_path / "b", "--workers", "1", "--split", "train", "--max-errors", "0", "-q")
    assert result.exit_code == 1
    assert "more than --max-errors 0" in result.stderr and "errors.jsonl" in result.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()  # a failed preprocess leaves no manifest


@pytest.mark.parametrize("stray, files, says", [
    ("n01440764_backup_old", 1, "not a class folder"),   # not a wnid: would become class 1
    ("n09999999", 0, "no image files"),                 # a wnid, but empty: an index with no images
])
def test_stray_or_empty_class_folder_is_refused_not_a_class(src, tmp_path, stray, files, says):
    """A folder in train/ that is not a class must not shift every later class's index."""
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    folder = tree / "train" / stray
    folder.mkdir()
    first = sorted((tree / "train" / sample_data.wnid(0)).iterdir())[0]
    for i in range(files):
        shutil.copy(first, folder / f"copy{i}.JPEG")
    result = cli("preprocess", tree, tmp_path / "o", "--workers", "1", "-q")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and says in lines[0], result.stderr
    assert not (tmp_path / "o").exists()
    # listed in LOC_synset_mapping.txt, a non-wnid folder with images is a class of its own
    if files:
        with open(tree / "LOC_synset_mapping.txt", "a") as f:
            f.write(f"{stray} my own class\n")
        assert stray in scan(str(tree)).wnids


@pytest.mark.parametrize("case, says", [
    ("bom", None),                                        # Excel's UTF-8 BOM: read as usual
    ("semicolon", "expected the header ImageId,PredictionString"),
    ("headerless", "expected the header ImageId,PredictionString"),
    ("empty", "the file is empty"),
    ("latin1", "not UTF-8 text"),
])
def test_validation_csv_variants(src, tmp_path, case, says):
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    csv_path = tree / "LOC_val_solution.csv"
    original = csv_path.read_bytes()
    body = original.split(b"\n", 1)[1]
    csv_path.write_bytes({"bom": b"\xef\xbb\xbf" + original, "semicolon": original.replace(b",", b";"),
                          "headerless": body, "empty": b"",
                          "latin1": b"ImageId,PredictionString\nval_caf\xe9,n01440764 1 2 3 4\n"}[case])
    result = cli("preprocess", tree, tmp_path / "o", "--workers", "1", "-q")
    if says is None:
        assert result.exit_code == 0, result.output
        m = json.load(open(tmp_path / "o" / "manifest.json"))
        assert m["splits"]["val"]["samples"] == CLASSES * VAL_PER_CLASS  # every val image labelled
        return
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(csv_path) in lines[0] and says in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_a_tree_of_only_bad_images_exits_1_without_a_manifest(tmp_path):
    for k, data in enumerate((b"not an image", b"\xff\xd8\xff\xe0 truncated")):
        folder = tmp_path / "src" / "train" / sample_data.wnid(k)
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"x{i}.JPEG").write_bytes(data)
    result = cli("preprocess", tmp_path / "src", tmp_path / "o", "--workers", "1", "-q")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "every image of the train split failed" in lines[0], result.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert len([line for line in open(tmp_path / "o" / "errors.jsonl") if '"path"' in line]) == 6
    result = cli("verify", tmp_path / "o")
    assert result.exit_code != 0 and "all checks passed" not in result.output


def test_a_rerun_with_another_seed_names_the_seed_only(src, single, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(single, out)
    result = cli("preprocess", src, out, "--workers", "1", "--shard-size", "5", "--seed", "7", "-q")
    assert result.exit_code == 2
    assert "(seed 0 vs 7)" in result.stderr and "files of SRC changed" not in result.stderr, result.stderr


def test_resume_after_kill_is_byte_identical(tmp_path):
    src = tmp_path / "src"
    sample_data.generate(src, classes=3, train_per_class=40, val_per_class=0)
    whole = tmp_path / "whole"
    run(src, whole, shard_size=2)
    out = tmp_path / "out"
    cmd, _, _ = interrupt(src, out, "train-000000", signal.SIGKILL)
    assert (out / "train-000000.tar").exists() and (out / ".parts" / "train-000000.npz").exists()
    assert not (out / "manifest.json").exists(), "the run finished before the kill; nothing was tested"
    # leftovers of other accidents: stray temporaries, a final-named tar without its record
    (out / "train-000040.tar.tmp").write_bytes(b"garbage")
    (out / ".parts" / "train-000041.npz.tmp").write_bytes(b"garbage")
    (out / "train-000050.tar").write_bytes(b"not a finished shard")
    (out / "train-000050.idx").write_bytes(b"v1.2 1\n")
    result = subprocess.run(cmd[:-1], capture_output=True, text=True)  # without -q: the summary
    assert result.returncode == 0, result.stderr
    assert " reused" in result.stdout + result.stderr  # complete shards were kept, not redone
    assert tars(out) == tars(whole)
    assert (out / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    assert (out / "errors.jsonl").read_bytes() == (whole / "errors.jsonl").read_bytes()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_when_the_main_process_is_killed(src, tmp_path, sig):
    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(tmp_path / "o"), "--workers", "2",
           "--shard-size", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        workers = children(proc.pid)
        assert len(workers) >= 2, "the pool never started; nothing was tested"
        proc.send_signal(sig)
    finally:
        proc.wait()
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "orphaned workers"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(src, single, tmp_path):
    """The first run holds OUT/.lock (flock) throughout; here this test process holds it, so the
    outcome does not depend on timing. After kill -9 the kernel drops the lock
    (test_resume_after_kill_is_byte_identical reruns into such an OUT)."""
    from preprocess.outdir import locked

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(out), "--workers", "1",
           "--shard-size", "5", "-q"]
    with locked(str(out)):
        second = subprocess.run(cmd, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"(pid {os.getpid()})" in lines[0] and "another alexnet preprocess" in lines[0]
        assert os.listdir(out) == [".lock"]  # the refused run touched nothing
    assert not (out / ".lock").exists()
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert tars(out) == tars(single) and (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert not (out / ".lock").exists()


def test_merge_cli_one_line_errors(part_runs, tmp_path):
    runner = CliRunner()
    result = runner.invoke(alexnet_cli.main, ["merge", str(part_runs / "p0"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "missing part" in result.stderr
    parts = [str(part_runs / f"p{i}") for i in range(3)]
    result = runner.invoke(alexnet_cli.main, ["merge", *parts, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and result.stdout.startswith("merge: 3 parts ->"), result.output
    result = runner.invoke(alexnet_cli.main, ["verify", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(alexnet_cli.main, ["merge", *parts, "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "already holds a manifest" in result.stderr


def test_cli_sample_data(tmp_path):
    result = cli("sample-data", tmp_path / "s", "--classes", "2", "--train-per-class", "2", "--val-per-class", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sample-data: 4 train + 2 val images, 2 classes")
    assert "exists" in one_line_error(cli("sample-data", tmp_path / "s", "--classes", "2"))


def test_help_has_examples_and_no_torch_or_dali_import():
    for command in ("preprocess", "merge", "sample-data"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command
    code = ("import sys, alexnet_cli, preprocess.cli, preprocess.run, preprocess.combine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nvidia')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
