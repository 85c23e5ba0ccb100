"""`--part i/N` + `alexnet merge` equals a single run: the same shards, sha256s, statistics, errors."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import alexnet_cli
from demo import sample_data
from preprocess.merge import MergeError, merge
from preprocess.plan import Part, Settings
from preprocess.run import preprocess


def run(src, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 4)
    return preprocess(Settings(src=str(src), out=str(out), **kw), show_progress=False)


def shard_files(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out)) if f.endswith((".tar", ".idx"))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    src = root / "src"
    sample_data.generate(src, classes=3, train_per_class=9, val_per_class=3)  # 27 train (1 truncated), 9 val
    run(src, root / "single")
    for i in range(3):
        run(src, root / f"p{i}", part=Part(i, 3))
    return root


@pytest.mark.parametrize("mode", ["link", "copy"])
def test_parts_merge_to_a_single_run(setup, tmp_path, mode):
    parts = [setup / f"p{i}" for i in (2, 0, 1)]  # any order
    owned = [json.load(open(p / "manifest.json"))["splits"] for p in parts]
    assert all(s["train"]["shards"] for s in owned)  # every part holds some training shards
    summary = merge([str(p) for p in parts], str(tmp_path / "m"), mode=mode)
    single, merged = setup / "single", tmp_path / "m"
    assert summary.shards == len([f for f in os.listdir(single) if f.endswith(".tar")])
    assert (merged / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert (merged / "errors.jsonl").read_bytes() == (single / "errors.jsonl").read_bytes()
    assert shard_files(merged) == shard_files(single)
    assert np.array_equal(np.load(merged / "pixel_sum.npy"), np.load(single / "pixel_sum.npy"))
    assert np.load(merged / "mean_image.npy").tobytes() == np.load(single / "mean_image.npy").tobytes()
    result = CliRunner().invoke(alexnet_cli.main, ["verify", str(merged)])
    assert result.exit_code == 0, result.output


def test_part_outputs_are_disjoint(setup):
    seen = set()
    for i in range(3):
        tars = {f for f in os.listdir(setup / f"p{i}") if f.endswith(".tar")}
        assert not tars & seen
        assert all(int(f[:-4].rsplit("-", 1)[1]) % 3 == i for f in tars)
        seen |= tars


def test_merge_refuses_missing_duplicate_and_foreign_parts(setup, tmp_path):
    p = [str(setup / f"p{i}") for i in range(3)]
    with pytest.raises(MergeError, match="missing part.*2/3"):
        merge(p[:2], str(tmp_path / "a"))
    with pytest.raises(MergeError, match="both part 0/3"):
        merge([p[0], p[0], p[1]], str(tmp_path / "b"))
    with pytest.raises(MergeError, match="not a part"):
        merge([p[0], p[1], str(setup / "single")], str(tmp_path / "c"))
    other = tmp_path / "q2"
    run(setup / "src", other, part=Part(2, 3), quality=80)
    with pytest.raises(MergeError, match="other settings.*quality"):
        merge([p[0], p[1], str(other)], str(tmp_path / "d"))
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_merge_cli_one_line_errors(setup, tmp_path):
    runner = CliRunner()
    result = runner.invoke(alexnet_cli.main, ["merge", str(setup / "p0"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "missing part" in result.stderr
    parts = [str(setup / f"p{i}") for i in range(3)]
    result = runner.invoke(alexnet_cli.main, ["merge", *parts, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and result.stdout.startswith("merge: 3 parts ->"), result.output
    result = runner.invoke(alexnet_cli.main, ["merge", *parts, "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "already holds a manifest" in result.stderr
