"""The fault suite for `alexnet verify`, `alexnet stats` and `alexnet merge`: each damaged shard
directory or part is built in tmp_path; the command must exit with the promised code (2: no such
folder or manifest, usage; 1: damage found), say one line on stderr naming the file, and leave
the parts as they were when it refuses (a merge checks everything before it moves anything)."""
import errno
import json
import os
import shutil

import numpy as np
import pytest

from samplekit import cli, files, one_line_error, part_runs, shards_dir, tars  # noqa: F401 (fixtures)
from shards import DamagedManifest, Manifest, verify_shard_dir


def _copy(folder, tmp_path, name="out"):
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name


def _edit(out, edit):
    raw = json.load(open(out / "manifest.json"))
    edit(raw)
    (out / "manifest.json").write_text(json.dumps(raw))


# --- the manifest itself -----------------------------------------------------------------------

MANIFESTS = {  # what the manifest is, and a word of the one line about it
    "a list": (b"[]", "expected an object, found a list"),
    "null": (b"null", "expected an object, found null"),
    "a string": (b'"manifest"', "expected an object, found a string"),
    "an empty object": (b"{}", "missing field 'version'"),
    "truncated JSON": (None, "not valid JSON"),
    "latin-1 bytes": (b'{"version": 1, "name": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 27)"),
    "image_size a string": ("image_size", "image_size: expected an integer, found a string"),
    "shards not a list": ("shards", "splits.val.shards: expected a list, found an object"),
    "stats a number": ("stats", "stats: expected an object, found an integer"),
}


def _damage_manifest(out, case):
    text, says = MANIFESTS[case]
    path = out / "manifest.json"
    if text is None:
        path.write_bytes(path.read_bytes()[:150])
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        _edit(out, {"image_size": lambda m: m.update(image_size="256"),
                    "shards": lambda m: m["splits"]["val"].update(shards={}),
                    "stats": lambda m: m.update(stats=3)}[text])
    return says


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_damaged_manifest_is_one_line_exit_1_everywhere(shards_dir, tmp_path, case):
    out = _copy(shards_dir, tmp_path)
    says = _damage_manifest(out, case)
    for command in ("verify", "stats"):
        one_line_error(cli(command, out), 1, [out / "manifest.json", says, "write it again"])
    with pytest.raises(DamagedManifest, match="write it again"):
        Manifest.load(out)  # what train and eval call


def test_no_folder_or_no_manifest_is_exit_2(shards_dir, tmp_path):
    for command in ("verify", "stats"):
        one_line_error(cli(command, tmp_path / "missing"), 2, [tmp_path / "missing", "no such shard directory"])
        one_line_error(cli(command, tmp_path), 2, [tmp_path / "manifest.json", "no manifest"])
    (tmp_path / "file").write_text("x")
    one_line_error(cli("verify", tmp_path / "file"), 2, [tmp_path / "file", "is a file"])


def test_a_split_total_that_disagrees_with_its_shards_is_damage(shards_dir, tmp_path):
    out = _copy(shards_dir, tmp_path)
    _edit(out, lambda m: m["splits"]["train"].update(samples=m["splits"]["train"]["samples"] + 1))
    one_line_error(cli("verify", out), 1, [out / "manifest.json", "split train: samples 10 != 9"])


STATS = {  # statistics a trainer cannot use
    "NaN mean": (lambda s: s.update(mean=[float("nan"), 0.4, 0.4]), "not a finite number"),
    "negative eigenvalue": (lambda s: s["eigval"].__setitem__(2, -0.001), "stats.eigval"),
    "eigenvectors not orthonormal": (lambda s: s["eigvec"][0].__setitem__(0, 2.0), "not orthonormal"),
    "std 0": (lambda s: s["std"].__setitem__(1, 0.0), "stats.std"),
    "mean above 1": (lambda s: s["mean"].__setitem__(0, 1.2), "is outside [0,1]"),
}


@pytest.mark.parametrize("case", sorted(STATS))
def test_statistics_a_trainer_cannot_use_fail_verify(shards_dir, tmp_path, case):
    edit, says = STATS[case]
    out = _copy(shards_dir, tmp_path)
    _edit(out, lambda m: edit(m["stats"]))
    one_line_error(cli("verify", out), 1, [out / "manifest.json", says])
    one_line_error(cli("stats", out), 1, [out / "manifest.json", says])


def test_damaged_statistics_files_are_problems_exit_1(shards_dir, tmp_path):
    out = _copy(shards_dir, tmp_path)
    (out / "mean_image.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(out / "pixel_sum.npy", np.load(out / "pixel_sum.npy").astype(np.float64))
    result = cli("verify", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "mean_image.npy: unreadable" in result.stdout and "pixel_sum.npy: float64" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "2 problem(s)" in result.stderr


# --- merge: everything checked before anything moves -------------------------------------------

def _parts(part_runs, tmp_path):
    return [_copy(part_runs / f"p{i}", tmp_path, f"p{i}") for i in range(3)]


@pytest.mark.parametrize("damage, names", [
    (lambda p: os.remove(p[1] / "pixel_sum.npy"), ["p1/pixel_sum.npy", "missing", "write the part again"]),
    (lambda p: os.remove(p[1] / "train-000001.tar"), ["p1/train-000001.tar", "missing", "nothing was merged"]),
    (lambda p: (p[2] / "errors.jsonl").write_text("{not a row\n"), ["p2/errors.jsonl", "line 1"]),
    (lambda p: (p[0] / "manifest.json").write_text("[]"), ["p0/manifest.json", "expected an object"]),
])
def test_a_damaged_part_is_one_line_and_nothing_moves(part_runs, tmp_path, damage, names):
    parts = _parts(part_runs, tmp_path)
    damage(parts)
    before = {p: files(p) for p in parts}
    out = tmp_path / "m"
    one_line_error(cli("merge", *parts, "--out", out, "--mode", "move"), 1, names)
    assert {p: files(p) for p in parts} == before and not out.exists()
    if (parts[0] / "manifest.json").read_text() != "[]":
        assert verify_shard_dir(parts[0]).ok


@pytest.mark.parametrize("where, says", [("file", "is a file"), ("below", "cannot write there"),
                                         ("part", "is one of the parts"), ("foreign", "is not empty")])
def test_a_merge_out_that_cannot_be_used_is_one_line(part_runs, tmp_path, where, says):
    parts = [part_runs / f"p{i}" for i in range(3)]
    (tmp_path / "file").write_text("mine")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    out = {"file": tmp_path / "file", "below": tmp_path / "file" / "m", "part": parts[1],
           "foreign": tmp_path / "foreign"}[where]
    before = {p: files(p) for p in parts}
    one_line_error(cli("merge", *parts, "--out", out), 2, [out, says])
    assert {p: files(p) for p in parts} == before
    assert (tmp_path / "file").read_text() == "mine" and os.listdir(tmp_path / "foreign") == ["notes.txt"]


def test_a_merge_the_disk_refuses_is_one_line_and_finishes_when_run_again(part_runs, tmp_path, monkeypatch):
    """A move across file systems copies; here the fourth copy hits a full disk."""
    from preprocess import combine

    parts = _parts(part_runs, tmp_path)
    calls = []
    real_link, real_copy = os.link, shutil.copyfileobj

    def copy(src, dst, length=0):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, length)

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link", src, None, dst)

    monkeypatch.setattr(combine.os, "link", no_link)
    monkeypatch.setattr(combine.shutil, "copyfileobj", copy)
    out = tmp_path / "m"
    one_line_error(cli("merge", *parts, "--out", out), 1, [out / "train-000001.tar", "No space left on device",
                                                           "run the same merge again"])
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(combine.os, "link", real_link)
    monkeypatch.setattr(combine.shutil, "copyfileobj", real_copy)
    result = cli("merge", *parts, "--out", out)
    assert result.exit_code == 0, result.output
    assert tars(out) == tars(part_runs / "single")
    assert (out / "manifest.json").read_bytes() == (part_runs / "single" / "manifest.json").read_bytes()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
