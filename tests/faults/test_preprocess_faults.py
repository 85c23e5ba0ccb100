"""The fault suite for `alexnet preprocess`: each bad input or failing disk is built in tmp_path;
the command must exit with the promised code (2: usage or bad input, 1: damage found or a disk
that refused data), say one line on stderr naming the file, and leave nothing presented as
complete that is not (no manifest after a failed run; a complete OUT as it was, byte for byte).
One bad source file never stops a run: it is skipped and listed in errors.jsonl."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from demo import sample_data
from samplekit import (ODD_ENTRIES, add_odd_entries, alive, cli, damaged_jpegs, files, interrupt, one_line_error,
                       tars)

ARGS = ("--workers", "1", "--shard-size", "4", "-q")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """(src, out): a small sample tree (2 classes, 6 training images each, one truncated; 2
    validation images each) and its complete preprocess output."""
    root = tmp_path_factory.mktemp("pre")
    sample_data.generate(root / "src", classes=2, train_per_class=6, val_per_class=2)
    assert cli("preprocess", root / "src", root / "out", *ARGS).exit_code == 0
    return root / "src", root / "out"


def _copy(folder, tmp_path, name):
    shutil.copytree(folder, tmp_path / name, symlinks=True)
    return tmp_path / name


def _same_output(out, ref_out):
    assert tars(out) == tars(ref_out)
    for name in ("manifest.json", "errors.jsonl", "mean_image.npy", "pixel_sum.npy"):
        assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name


def _rows(out):
    return [json.loads(line) for line in open(out / "errors.jsonl")]


# --- OUT: checked before any work --------------------------------------------------------------

def test_an_out_that_is_a_file_is_one_line_and_left_alone(ref, tmp_path):
    out = tmp_path / "out"
    out.write_text("mine")
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 2, [out, "is a file"])
    assert out.read_text() == "mine"


def test_an_out_below_a_file_is_one_line(ref, tmp_path):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "out"
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 2, [out, "cannot write there"])
    assert (tmp_path / "file").read_text() == "mine"


# --- the disk refuses data ---------------------------------------------------------------------

def test_a_full_disk_while_writing_shards_leaves_no_manifest_and_resumes(ref, tmp_path, monkeypatch):
    from shards import writer

    real = writer._HashingFile.write

    def write(self, b):
        if self._f.name.endswith("train-000001.tar.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write(2) says it: no file name
        return real(self, b)

    monkeypatch.setattr(writer._HashingFile, "write", write)
    out = tmp_path / "out"
    line = one_line_error(cli("preprocess", ref[0], out, *ARGS), 1,
                          [out / "train-000001.tar.tmp", "No space left on device", "run the same command again"])
    assert line.startswith("alexnet: error: ")
    assert not (out / "manifest.json").exists()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")] and not (out / ".lock").exists()
    monkeypatch.undo()
    result = cli("preprocess", ref[0], out, "--workers", "1", "--shard-size", "4")
    assert result.exit_code == 0 and " reused" in result.stdout, result.output
    _same_output(out, ref[1])


@pytest.mark.parametrize("refused", ["params.json", "pixel_sum.npy", "errors.jsonl", "manifest.json"])
def test_a_full_disk_on_a_complete_out_leaves_it_as_it_was(ref, tmp_path, monkeypatch, refused):
    """Every shard is reused, so only the small files are written again, each atomically: the
    one the disk refuses keeps its old bytes, and so does every other file."""
    from shards import files as shards_files

    out = _copy(ref[1], tmp_path, "out")
    before = files(out)
    real = os.replace

    def replace(src, dst, **kw):
        if os.fspath(dst).endswith(refused):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(shards_files.os, "replace", replace)
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 1, [f"{refused}.tmp", "No space left on device"])
    assert files(out) == before


def test_a_full_disk_on_the_manifest_of_a_new_out_leaves_none(ref, tmp_path, monkeypatch):
    from shards import files as shards_files

    real = os.replace

    def replace(src, dst, **kw):
        if os.fspath(dst).endswith("manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(shards_files.os, "replace", replace)
    out = tmp_path / "out"
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 1, ["manifest.json.tmp"])
    assert not (out / "manifest.json").exists() and not (out / "manifest.json.tmp").exists()


def test_more_failures_than_max_errors_leave_no_manifest_and_a_rerun_finishes(ref, tmp_path):
    """The sample tree has one truncated JPEG: --max-errors 0 fails (exit 1) with errors.jsonl and
    the finished shards, but no manifest (verify refuses it); a rerun that allows it reuses the
    shards and ends as an uninterrupted run."""
    out = tmp_path / "out"
    result = cli("preprocess", ref[0], out, *ARGS, "--max-errors", "0")
    one_line_error(result, 1, ["more than --max-errors 0", "no manifest was written", out / "errors.jsonl"])
    assert not (out / "manifest.json").exists() and (out / "errors.jsonl").exists()
    assert [r["reason"] for r in _rows(out) if "path" in r] == [r["reason"] for r in _rows(ref[1]) if "path" in r]
    assert cli("verify", out).exit_code == 2
    result = cli("preprocess", ref[0], out, *ARGS, "--max-errors", "1")
    assert result.exit_code == 0 and " reused" in result.stdout, result.output
    _same_output(out, ref[1])


def _die(split, chunk):
    os._exit(9)  # as the kernel's OOM killer ends a process: no exception, no clean-up


def test_a_worker_that_dies_is_one_line(ref, tmp_path, monkeypatch):
    from preprocess import worker

    monkeypatch.setattr(worker, "process_chunk", _die)  # forked workers inherit it
    out = tmp_path / "out"
    one_line_error(cli("preprocess", ref[0], out, "--workers", "2", "--shard-size", "4", "-q"), 1,
                   [out, "a worker process died", "run the same command again"])
    assert not (out / "manifest.json").exists()


# --- OUT's own state, damaged ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{truncated", "[]", "null", '"a string"', '{"params": [], "classes": []}',
                                  '{"params": {"files": {"train": {"count": "12"}}}, "classes": ["n1"]}',
                                  b'{"params": {}, "classes": ["caf\xe9"]}'])
def test_a_damaged_settings_record_is_one_line(ref, tmp_path, text):
    out = tmp_path / "out"
    (out / ".parts").mkdir(parents=True)
    record = out / ".parts" / "params.json"
    record.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = files(out)
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 2, [record, "choose another OUT"])
    assert files(out) == before


@pytest.mark.parametrize("text", ["[]", "{}", "{truncated", '{"version": 1, "image_size": "256"}'])
def test_a_damaged_manifest_in_out_is_one_line_and_what_it_says_works(ref, tmp_path, text):
    out = _copy(ref[1], tmp_path, "out")
    (out / "manifest.json").write_text(text)
    before = files(out)
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 2,
                   [out / "manifest.json", "delete it and run the same command again"])
    assert files(out) == before
    (out / "manifest.json").unlink()
    assert cli("preprocess", ref[0], out, *ARGS).exit_code == 0
    _same_output(out, ref[1])
    shutil.rmtree(out / ".parts")  # without the records, there is nothing to write it from
    (out / "manifest.json").write_text(text)
    one_line_error(cli("preprocess", ref[0], out, *ARGS), 2, [out / "manifest.json", "use another OUT"])


def test_a_rerun_with_other_settings_names_the_setting(ref, tmp_path):
    out = _copy(ref[1], tmp_path, "out")
    before = files(out)
    for args, says in ((("--seed", "3"), "(seed 0 vs 3)"), (("--limit", "5"), "(limit None vs 5)"),
                       (("--strict",), "(strict False vs True)")):
        line = one_line_error(cli("preprocess", ref[0], out, *ARGS, *args), 2, [out, says])
        assert "files of SRC changed" not in line
    assert files(out) == before


# --- inputs, checked before any work -----------------------------------------------------------

@pytest.mark.parametrize("name", ["LOC_val_solution.csv", "LOC_synset_mapping.txt"])
def test_a_latin1_byte_in_an_input_text_is_one_line(ref, tmp_path, name):
    src = _copy(ref[0], tmp_path, "src")
    text = (src / name).read_bytes()
    cut = text.index(b"\n", len(text) // 2) + 1
    (src / name).write_bytes(text[:cut] + b"caf\xe9 " + text[cut:])
    out = tmp_path / "out"
    one_line_error(cli("preprocess", src, out, *ARGS), 2,
                   [src / name, f"not UTF-8 text (byte 0xe9 at offset {cut + 3})", "save it as UTF-8"])
    assert not out.exists()


# --- one bad source file never stops a run -----------------------------------------------------

def test_entries_that_are_not_used_are_listed_and_counted(ref, tmp_path):
    """Dangling links, a symlink loop, a nested folder, other extensions (in a class folder and in
    the flat val/), a hidden file, a FIFO, a name that is not UTF-8, a file beside the classes."""
    src = _copy(ref[0], tmp_path, "src")
    add_odd_entries(src)
    out = tmp_path / "out"
    result = cli("preprocess", src, out, *ARGS)
    assert result.exit_code == 0 and f"{len(ODD_ENTRIES) + 2:,} errors" in result.stdout, result.output
    rows = _rows(out)
    listed = {r["path"]: r["reason"] for r in rows if "position" not in r and "summary" not in r}
    assert listed == dict(ODD_ENTRIES, **{"val/readme.txt": "not an image file name (extension '.txt')"})
    assert rows[-1] == {"summary": {"errors": len(ODD_ENTRIES) + 2, "by_split": {"train": len(ODD_ENTRIES) + 1,
                                                                                "val": 1}, "kept": 0}}
    assert json.load(open(out / "manifest.json"))["errors"] == len(ODD_ENTRIES) + 2
    assert tars(out) == tars(ref[1])  # the same images, the same shards


def test_files_that_vanish_or_turn_unreadable_after_the_scan_are_listed(ref, tmp_path, monkeypatch):
    from preprocess import run

    src = _copy(ref[0], tmp_path, "src")
    real = run.scan
    cls = src / "train" / sample_data.wnid(0)
    gone, folder, loop = (cls / f"{sample_data.wnid(0)}_{i}.JPEG" for i in (3, 4, 5))

    def scan(*args):
        source = real(*args)
        gone.unlink()
        folder.unlink()
        folder.mkdir()
        loop.unlink()
        loop.symlink_to(loop.name)
        return source

    monkeypatch.setattr(run, "scan", scan)
    out = tmp_path / "out"
    result = cli("preprocess", src, out, *ARGS)
    assert result.exit_code == 0, result.output
    reasons = {r["path"]: r["reason"] for r in _rows(out) if "path" in r}
    rel = f"train/{sample_data.wnid(0)}"
    assert reasons[f"{rel}/{gone.name}"] == "unreadable (No such file or directory)"
    assert reasons[f"{rel}/{folder.name}"] == "unreadable (Is a directory)"
    assert reasons[f"{rel}/{loop.name}"] == "unreadable (Too many levels of symbolic links)"


def test_jpegs_libjpeg_warns_about_are_listed_kept_or_skipped(ref, tmp_path):
    """Extraneous bytes: kept and listed ("kept": true) by default, skipped with --strict; a
    truncated scan or a marker inside it: skipped either way. Each row has libjpeg's message."""
    src = _copy(ref[0], tmp_path, "src")
    cls = src / "train" / sample_data.wnid(0)
    good = (cls / f"{sample_data.wnid(0)}_5.JPEG").read_bytes()
    bad = damaged_jpegs(good)
    names = {}
    for i, kind in enumerate(("header junk", "tail junk", "truncated", "marker")):
        names[kind] = f"train/{sample_data.wnid(0)}/{sample_data.wnid(0)}_{2 + i}.JPEG"
        (src / names[kind]).write_bytes(bad[kind])
    says = {"header junk": "Corrupt JPEG data: 3 extraneous bytes before marker 0xdb",
            "tail junk": "extraneous bytes before marker 0xd9", "truncated": "truncated (Premature end of JPEG file)",
            "marker": "Corrupt JPEG data: premature end of data segment"}
    train = {}
    for strict in (False, True):
        out = tmp_path / f"out{int(strict)}"
        result = cli("preprocess", src, out, *ARGS, *(("--strict",) if strict else ()))
        assert result.exit_code == 0, result.output
        rows = {r["path"]: r for r in _rows(out) if "path" in r}
        for kind, path in names.items():
            assert says[kind] in rows[path]["reason"], (kind, rows[path])
            assert rows[path].get("kept", False) is (not strict and "junk" in kind), (kind, strict)
        train[strict] = json.load(open(out / "manifest.json"))["splits"]["train"]["samples"]
        if not strict:
            assert "2 kept with warnings" in result.stdout and _rows(out)[-1]["summary"]["kept"] == 2
    assert train[False] == train[True] + 2  # the two with extraneous bytes


def test_animated_and_tiny_images_are_used_and_listed_as_notes(ref, tmp_path):
    """An animated GIF keeps its first frame and a source whose shorter side is below 32 px is
    upscaled, as documented; each is in the shards and listed with "note": true, which counts as
    no error and which --strict does not change."""
    import io

    from PIL import Image

    src = _copy(ref[0], tmp_path, "src")
    failed = {r["path"] for r in _rows(ref[1]) if "path" in r}
    folder = f"train/{sample_data.wnid(1)}"
    names = [f"{folder}/{n}" for n in sorted(os.listdir(src / folder)) if f"{folder}/{n}" not in failed][:3]
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    made = dict(zip(names, [
        (gif.getvalue(), "animated (3 frames): the first frame is used"),
        (_encoded(Image.new("RGB", (1, 1), "white"), "PNG"), "1x1: the shorter side is below 32"),
        (_encoded(Image.new("RGB", (300, 20), "grey"), "JPEG"), "300x20: the shorter side is below 32")]))
    for path, (data, _) in made.items():
        (src / path).write_bytes(data)
    for strict in (False, True):
        out = tmp_path / f"out{int(strict)}"
        result = cli("preprocess", src, out, *ARGS, *(("--strict",) if strict else ()))
        assert result.exit_code == 0 and "3 noted" in result.stdout, result.output
        rows = {r["path"]: r for r in _rows(out) if "path" in r}
        for path, (_, says) in made.items():
            assert rows[path]["note"] is True and says in rows[path]["reason"] and "kept" not in rows[path], rows[path]
        manifest = json.load(open(out / "manifest.json"))
        assert manifest["errors"] == json.load(open(ref[1] / "manifest.json"))["errors"]
        assert manifest["splits"]["train"]["samples"] == json.load(open(ref[1] / "manifest.json"))["splits"]["train"]["samples"]
        assert _rows(out)[-1]["summary"]["notes"] == 3


def _encoded(image, fmt):
    import io

    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


# --- kill and SIGTERM --------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_leaves_no_orphans_and_the_rerun_is_byte_identical(tmp_path):
    src = tmp_path / "src"
    sample_data.generate(src, classes=3, train_per_class=30, val_per_class=0)
    whole = tmp_path / "whole"
    assert cli("preprocess", src, whole, "--workers", "1", "--shard-size", "2", "-q").exit_code == 0
    out = tmp_path / "out"
    cmd, status, workers = interrupt(src, out, "train-000002", signal.SIGTERM, workers=2)
    assert status == -signal.SIGTERM
    assert not (out / "manifest.json").exists(), "the run finished before the signal; nothing was tested"
    deadline = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert workers and not [w for w in workers if alive(w)], "orphaned workers"
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    _same_output(out, whole)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")] and not (out / ".lock").exists()
