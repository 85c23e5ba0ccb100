"""shards/verify.py: the library check behind `alexnet verify` returns a report and prints nothing
(the command's own output: tests/cli/test_shards_cli.py)."""
import json
import os
import shutil

import numpy as np
import pytest

from samplekit import shards_dir  # noqa: F401 (a fixture)
from shards import ManifestError, VerifyReport, verify_shard_dir


@pytest.fixture
def damaged(shards_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    return out


def test_fresh_output_is_ok_and_counted(shards_dir, capsys):
    report = verify_shard_dir(shards_dir, workers=1)
    assert isinstance(report, VerifyReport) and report.ok and report.problems == []
    assert (report.shards, report.samples, report.splits) == (4, 13, {"train": 9, "val": 4})
    assert report.line() == f"ok: {shards_dir}: 4 shards, 13 samples (train 9, val 4), all checks passed"
    assert capsys.readouterr() == ("", "")
    calls = []
    assert verify_shard_dir(shards_dir, workers=2, progress=lambda d, t: calls.append((d, t))).ok
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_damage_is_named_file_by_file(damaged):
    tar = damaged / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    (damaged / "val-000000.idx").unlink()
    report = verify_shard_dir(damaged, workers=1)
    assert not report.ok
    text = [str(p) for p in report.problems]
    assert any(t.startswith("train-000001.tar: sha256 differs") for t in text), text
    assert "val-000000.idx: missing" in text
    assert report.line().startswith(f"verify: {len(report.problems)} problem(s) in {damaged} (4 shards, ")


def test_the_statistics_files_are_checked(damaged):
    m = json.load(open(damaged / "manifest.json"))
    pixel_sum = np.load(damaged / "pixel_sum.npy")
    np.save(damaged / "pixel_sum.npy", pixel_sum[:8])
    assert [str(p) for p in verify_shard_dir(damaged).problems] == [
        "pixel_sum.npy: int64 (8, 256, 3), expected int64 (256, 256, 3)"]
    pixel_sum[0, 0, 0] += 1
    np.save(damaged / "pixel_sum.npy", pixel_sum)
    assert [str(p) for p in verify_shard_dir(damaged).problems] == [
        "pixel_sum.npy: its total differs from the manifest's stats.sums"]
    pixel_sum[0, 0, 0] -= 1
    np.save(damaged / "pixel_sum.npy", pixel_sum)
    mean = np.load(damaged / "mean_image.npy")
    mean[5, 5, 1] += 0.01
    np.save(damaged / "mean_image.npy", mean)
    assert [str(p) for p in verify_shard_dir(damaged).problems] == [
        "mean_image.npy: differs from pixel_sum.npy / (images · 255)"]
    (damaged / "mean_image.npy").unlink()
    (damaged / "pixel_sum.npy").unlink()
    assert [str(p) for p in verify_shard_dir(damaged).problems] == ["mean_image.npy: missing", "pixel_sum.npy: missing"]
    assert m["stats"]["mean_image"] == "mean_image.npy" and m["stats"]["pixel_sum"] == "pixel_sum.npy"


def test_an_unusable_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        verify_shard_dir(tmp_path)


def test_shard_files_problem_is_the_cheap_check(damaged):
    from shards import Manifest
    from shards.verify import shard_files_problem

    shard = Manifest.load(damaged).splits["train"].shards[1]
    tar, idx = str(damaged / shard.tar), str(damaged / shard.index)
    assert shard_files_problem(shard, tar, idx) is None
    os.truncate(tar, 3000)
    assert str(shard_files_problem(shard, tar, idx)).startswith(f"{shard.tar}: truncated (3000 bytes; its index reaches")
    (damaged / shard.index).write_text("v1.2 x\n")
    assert "not a readable DALI index" in str(shard_files_problem(shard, tar, idx))
    os.remove(tar)
    assert str(shard_files_problem(shard, tar, idx)) == f"{shard.tar}: missing"


def test_members_and_files_that_cannot_be_read_are_problems_not_tracebacks(damaged):
    from shards.writer import ShardWriter

    with ShardWriter(damaged, "val-000000") as w:  # same key and count, a json member that is a list
        w.write("val_00000000", (damaged / "mean_image.npy").read_bytes()[:10], 0, {})
    tar = damaged / "val-000000.tar"
    data = tar.read_bytes().replace(b'{"label": 0}', b'[1, 2, 3, 4]')
    tar.write_bytes(data)
    os.remove(damaged / "train-000000.tar")
    (damaged / "train-000000.tar").mkdir()
    text = [str(p) for p in verify_shard_dir(damaged, workers=1).problems]
    assert "train-000000.tar: unreadable (Is a directory)" in text, text
    assert any(t.startswith("val-000000.tar:val_00000000: json is not an object") for t in text), text


def _tarfile_table(raw):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        return [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]


@pytest.mark.parametrize("form", ["shard", "long_name_pax", "long_name_gnu", "ustar_prefix", "links_and_dirs",
                                  "bad_checksum", "truncated", "empty"])
def test_member_table_is_what_tarfile_reads(shards_dir, form):
    """shards.verify.member_table (the shard cache's fast header scan) against tarfile itself, on a
    real shard and on every header form it must leave to tarfile or read right."""
    import glob
    import io
    import tarfile

    from shards.verify import member_table

    def tar_of(members, fmt=tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for name, data, kind in members:
                info = tarfile.TarInfo(name)
                info.type, info.size = kind, len(data)
                if kind == tarfile.SYMTYPE:
                    info.linkname, info.size = "a.jpg", 0
                tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        return buf.getvalue()

    files = [("a.jpg", b"x" * 700, tarfile.REGTYPE), ("a.cls", b"3", tarfile.REGTYPE)]
    raw = {
        "shard": lambda: open(sorted(glob.glob(os.path.join(shards_dir, "train-*.tar")))[0], "rb").read(),
        "long_name_pax": lambda: tar_of(files + [("n" * 150 + ".jpg", b"y" * 10, tarfile.REGTYPE)], tarfile.PAX_FORMAT),
        "long_name_gnu": lambda: tar_of(files + [("n" * 150 + ".jpg", b"y" * 10, tarfile.REGTYPE)], tarfile.GNU_FORMAT),
        "ustar_prefix": lambda: tar_of(files + [("d" * 90 + "/" + "n" * 60 + ".jpg", b"y" * 10, tarfile.REGTYPE)]),
        "links_and_dirs": lambda: tar_of([("dir", b"", tarfile.DIRTYPE)] + files + [("l", b"", tarfile.SYMTYPE)]),
        "bad_checksum": lambda: (lambda r: r[:148] + b"0000000\0" + r[156:])(tar_of(files)),
        "truncated": lambda: tar_of(files)[:1024 + 512],
        "empty": lambda: tar_of([]),
    }[form]()
    try:
        expected = _tarfile_table(raw)
    except tarfile.TarError as e:  # a header tarfile refuses: the scan defers to it and raises the same
        with pytest.raises(type(e)):
            member_table(raw)
        return
    assert member_table(raw) == expected
    if form == "shard":
        assert len(expected) >= 6  # whole samples: jpg, cls, json each
