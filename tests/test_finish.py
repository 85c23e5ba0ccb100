"""shards/finish.py: the one finisher of shard directories. Its files are byte-identical to
preprocess's, every file the manifest names is written, and the manifest comes last."""
import json
import os
import shutil

import numpy as np
import pytest

from samplekit import single, src  # noqa: F401 (fixtures)
from shardkit import make_image, make_shards
from shards import (ClassInfo, Manifest, NothingUsable, StatSums, finish_shard_dir, read_errors,
                    verify_shard_dir)


def test_shardkit_writes_every_file_its_manifest_names_and_verifies(tmp_path):
    m = make_shards(tmp_path, n_train=10, n_val=4, classes=3, shard_size=4, seed=5)
    assert Manifest.load(tmp_path) == m
    named = [s.tar for sp in m.splits.values() for s in sp.shards] + [s.index for sp in m.splits.values() for s in
                                                                     sp.shards]
    named += [m.stats.mean_image, m.stats.pixel_sum, "errors.jsonl", "manifest.json"]
    assert sorted(os.listdir(tmp_path)) == sorted(named)
    report = verify_shard_dir(tmp_path, workers=1)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.shards, report.samples) == (4, 14)
    rng, expect = np.random.default_rng(5), StatSums()
    images = [make_image(rng) for _ in range(10)]  # make_shards draws the training images first, in order
    for im in images:
        expect.add(im)
    pixel_sum = np.sum(np.stack(images).astype(np.int64), axis=0)  # numpy, not the code under test
    assert np.array_equal(np.load(tmp_path / m.stats.pixel_sum), pixel_sum)
    np.testing.assert_allclose(np.load(tmp_path / m.stats.mean_image), pixel_sum / (10 * 255.0), rtol=1e-6)
    assert m.stats.sums == expect.to_json() and m.errors == 0
    assert [json.loads(x) for x in open(tmp_path / "errors.jsonl")] == [
        {"summary": {"errors": 0, "by_split": {"train": 0, "val": 0}, "kept": 0}}]


def test_shardkit_without_training_images_has_no_statistics(tmp_path):
    m = make_shards(tmp_path, n_train=0, n_val=3, classes=3, shard_size=4)
    assert m.stats is None and "train" not in m.splits
    assert not (tmp_path / "mean_image.npy").exists() and not (tmp_path / "pixel_sum.npy").exists()
    assert verify_shard_dir(tmp_path).ok


def _refinish(single, out, **kw):
    """Finish `out` (holding a copy of single's shards) from what single's manifest records."""
    m = Manifest.load(single)
    for sp in m.splits.values():
        for s in sp.shards:
            for name in (s.tar, s.index):
                shutil.copy(single / name, out / name)
    sums = StatSums.from_json(m.stats.sums, np.load(single / m.stats.pixel_sum), m.image_size)
    args = dict(classes=m.classes, params=m.params, splits={k: v.shards for k, v in m.splits.items()},
                errors=read_errors(single), sums=sums, image_size=m.image_size)
    return finish_shard_dir(out, **dict(args, **kw))


def test_the_finisher_writes_preprocess_output_byte_for_byte(single, tmp_path):
    errors = read_errors(single)
    assert len(errors) == 1
    m = _refinish(single, tmp_path, errors=errors[::-1])  # any order: written sorted
    for name in ("manifest.json", "errors.jsonl", "mean_image.npy", "pixel_sum.npy"):
        assert (tmp_path / name).read_bytes() == (single / name).read_bytes(), name
    assert m == Manifest.load(single)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_statistics_already_written_are_kept(single, tmp_path):
    m = Manifest.load(single)
    for name in (m.stats.mean_image, m.stats.pixel_sum):
        shutil.copy(single / name, tmp_path / name)
    got = _refinish(single, tmp_path, sums=None, stats=m.stats)
    assert got.stats == m.stats
    assert (tmp_path / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="not both"):
        _refinish(single, tmp_path / "x", stats=m.stats)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_a_split_without_shards_gets_errors_and_no_manifest(tmp_path):
    rows = [{"split": "val", "position": 3, "path": "val/c.JPEG", "reason": "truncated"},
            {"split": "val", "position": 1, "path": "val/a.JPEG", "reason": "empty file"}]
    with pytest.raises(NothingUsable, match="every image of the val split failed") as e:
        finish_shard_dir(tmp_path, classes=[ClassInfo(0, "n00000000", "zero")], params={}, splits={"val": []},
                         errors=rows)
    assert e.value.exit_code == 1
    assert not (tmp_path / "manifest.json").exists()
    assert read_errors(tmp_path) == rows[::-1]  # sorted by split, then position
    assert json.loads(open(tmp_path / "errors.jsonl").read().splitlines()[-1]) == {
        "summary": {"errors": 2, "by_split": {"train": 0, "val": 2}, "kept": 0}}


def test_the_manifest_is_written_last(tmp_path, monkeypatch):
    """Every file is renamed into place before the manifest; a failure on the way (here an error
    row of an unknown split) leaves no manifest."""
    placed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (placed.append(os.path.basename(b)), replace(a, b))[1])
    (tmp_path / "ok").mkdir()
    make_shards(tmp_path / "ok", n_train=6, n_val=2, classes=2, shard_size=4, seed=1)
    assert placed[-1] == "manifest.json" and {"mean_image.npy", "pixel_sum.npy", "errors.jsonl"} <= set(placed)
    with pytest.raises(ValueError):
        finish_shard_dir(tmp_path, classes=[ClassInfo(0, "n00000000", "zero")], params={}, splits={},
                         errors=[{"split": "test", "position": 0}])
    assert not (tmp_path / "manifest.json").exists()
    assert read_errors(tmp_path / "nothing-here") == []


def test_rows_of_kept_and_scanned_files(tmp_path):
    """A file kept despite a warning is listed but not counted as an error; a file the scan
    skipped (no position) comes first in its split, by path."""
    rows = [{"split": "train", "position": 4, "path": "train/a/x.JPEG", "reason": "truncated"},
            {"split": "train", "position": 2, "path": "train/a/y.JPEG", "reason": "Corrupt JPEG data: 3 extraneous",
             "kept": True},
            {"split": "val", "path": "val/notes.txt", "reason": "not an image file name"},
            {"split": "train", "path": "train/a/sub", "reason": "a folder inside a class folder"}]
    with pytest.raises(NothingUsable):
        finish_shard_dir(tmp_path, classes=[ClassInfo(0, "n00000000", "zero")], params={}, splits={"val": []},
                         errors=rows)
    assert read_errors(tmp_path) == [rows[3], rows[1], rows[0], rows[2]]
    assert json.loads(open(tmp_path / "errors.jsonl").read().splitlines()[-1]) == {
        "summary": {"errors": 3, "by_split": {"train": 2, "val": 1}, "kept": 1}}


def test_a_damaged_errors_file_is_one_line(tmp_path):
    from shards import Damage

    (tmp_path / "errors.jsonl").write_text('{"split": "train", "position": 1, "path": "x", "reason": "r"}\n{"spl\n')
    with pytest.raises(Damage, match=r"errors.jsonl: line 2 is not a row of failed files") as e:
        read_errors(tmp_path)
    assert e.value.exit_code == 1


def test_statistics_without_variation_leave_no_manifest(tmp_path):
    """A training set whose pixels are all one grey has std 0: no trainer can normalise it."""
    from shards import Damage

    sums = StatSums(size=256)
    sums.add(np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(Damage, match=r"stats.std \[0.0, 0.0, 0.0\]: .*; no manifest was written"):
        finish_shard_dir(tmp_path, classes=[ClassInfo(0, "n00000000", "zero")], params={}, splits={}, sums=sums)
    assert not (tmp_path / "manifest.json").exists()
