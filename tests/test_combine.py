"""preprocess/combine.py: `--part i/N` + `alexnet merge` equals a single run: the same shards,
sha256s, statistics, errors (the parts: tests/samplekit.py, `part_runs`)."""
import json
import re
import os
import shutil

import numpy as np
import pytest

from preprocess.combine import MergeError, merge
from preprocess.plan import Part
from samplekit import part_runs, run, tars  # noqa: F401 (part_runs: a fixture)
from shards import UserError, verify_shard_dir


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_parts_merge_to_a_single_run(part_runs, tmp_path, mode):
    parts = [part_runs / f"p{i}" for i in (2, 0, 1)]  # any order
    owned = [json.load(open(p / "manifest.json"))["splits"] for p in parts]
    assert all(s["train"]["shards"] for s in owned)  # every part holds some training shards
    summary = merge([str(p) for p in parts], str(tmp_path / "m"), mode=mode)
    single, merged = part_runs / "single", tmp_path / "m"
    assert summary.shards == len([f for f in os.listdir(single) if f.endswith(".tar")])
    assert (merged / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert (merged / "errors.jsonl").read_bytes() == (single / "errors.jsonl").read_bytes()
    assert tars(merged) == tars(single)
    assert np.array_equal(np.load(merged / "pixel_sum.npy"), np.load(single / "pixel_sum.npy"))
    assert np.load(merged / "mean_image.npy").tobytes() == np.load(single / "mean_image.npy").tobytes()
    assert verify_shard_dir(merged).ok  # the CLI's verify: tests/cli/test_preprocess_cli.py


def test_part_outputs_are_disjoint(part_runs):
    seen = set()
    for i in range(3):
        tars = {f for f in os.listdir(part_runs / f"p{i}") if f.endswith(".tar")}
        assert not tars & seen
        assert all(int(f[:-4].rsplit("-", 1)[1]) % 3 == i for f in tars)
        seen |= tars


def test_merge_refuses_missing_duplicate_and_foreign_parts(part_runs, tmp_path):
    p = [str(part_runs / f"p{i}") for i in range(3)]
    with pytest.raises(MergeError, match="missing part.*2/3"):
        merge(p[:2], str(tmp_path / "a"))
    with pytest.raises(MergeError, match="both part 0/3"):
        merge([p[0], p[0], p[1]], str(tmp_path / "b"))
    with pytest.raises(MergeError, match="not a part"):
        merge([p[0], p[1], str(part_runs / "single")], str(tmp_path / "c"))
    other = tmp_path / "q2"
    run(part_runs / "src", other, shard_size=4, part=Part(2, 3), quality=80)
    with pytest.raises(MergeError, match="other settings.*quality"):
        merge([p[0], p[1], str(other)], str(tmp_path / "d"))
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_merge_by_move_empties_the_parts_and_leaves_no_temporaries(part_runs, tmp_path):
    parts = []
    for i in range(3):
        shutil.copytree(part_runs / f"p{i}", tmp_path / f"p{i}")
        parts.append(str(tmp_path / f"p{i}"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "train-000000.tar.tmp").write_bytes(b"left by an interrupted merge")
    merge(parts, str(tmp_path / "m"), mode="move")
    single, merged = part_runs / "single", tmp_path / "m"
    assert tars(merged) == tars(single)
    assert (merged / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert not any(f.endswith((".tar", ".idx")) for p in parts for f in os.listdir(p))
    assert not [f for f in os.listdir(merged) if f.endswith(".tmp")]


def test_merge_errors_are_user_errors(part_runs, tmp_path):
    with pytest.raises(MergeError) as e:
        merge([str(part_runs / "p0")], str(tmp_path / "m"))
    assert isinstance(e.value, UserError) and e.value.exit_code == 2


def _copies(part_runs, tmp_path):
    parts = []
    for i in range(3):
        shutil.copytree(part_runs / f"p{i}", tmp_path / f"p{i}")
        parts.append(str(tmp_path / f"p{i}"))
    return parts


@pytest.mark.parametrize("damage, says", [
    (lambda p: os.remove(os.path.join(p[1], "train-000001.tar")), "p1/train-000001.tar: missing"),
    (lambda p: os.truncate(os.path.join(p[2], "val-000002.tar"), 2000), "p2/val-000002.tar: truncated (2000 bytes"),
    (lambda p: os.remove(os.path.join(p[1], "pixel_sum.npy")), "p1/pixel_sum.npy: missing"),
    (lambda p: np.save(os.path.join(p[2], "pixel_sum.npy"), np.zeros((256, 256, 3), np.int64)),
     "p2/pixel_sum.npy: does not match its part's manifest"),
])
def test_a_move_checks_every_part_before_it_moves_anything(part_runs, tmp_path, damage, says):
    """A part that lacks a file its manifest names is found before part 0's files move."""
    from preprocess.combine import DamagedPart

    parts = _copies(part_runs, tmp_path)
    damage(parts)
    before = {p: sorted(os.listdir(p)) for p in parts}
    with pytest.raises(DamagedPart, match=re.escape(says)) as e:
        merge(parts, str(tmp_path / "m"), mode="move")
    assert e.value.exit_code == 1
    assert {p: sorted(os.listdir(p)) for p in parts} == before
    assert not (tmp_path / "m").exists()
    assert verify_shard_dir(parts[0]).ok


def test_entries_the_scan_skipped_are_listed_once_after_a_merge(tmp_path):
    """Part 0 lists what the scan did not use; the merged errors.jsonl equals a single run's."""
    from demo import sample_data
    from samplekit import ODD_ENTRIES, add_odd_entries

    sample_data.generate(tmp_path / "src", classes=2, train_per_class=4, val_per_class=1)
    add_odd_entries(tmp_path / "src")
    run(tmp_path / "src", tmp_path / "single", shard_size=2)
    parts = [str(tmp_path / f"p{i}") for i in range(2)]
    for i, p in enumerate(parts):
        run(tmp_path / "src", p, shard_size=2, part=Part(i, 2))
    merge(parts, str(tmp_path / "m"))
    assert (tmp_path / "m" / "errors.jsonl").read_bytes() == (tmp_path / "single" / "errors.jsonl").read_bytes()
    rows = [json.loads(line) for line in open(tmp_path / "m" / "errors.jsonl")]
    assert sum(1 for r in rows if r.get("path") in ODD_ENTRIES) == len(ODD_ENTRIES)
    assert (tmp_path / "m" / "manifest.json").read_bytes() == (tmp_path / "single" / "manifest.json").read_bytes()
