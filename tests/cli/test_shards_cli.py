"""`alexnet verify` and `alexnet stats` as a user meets them: the summary line, each problem named,
exit 1 on damage."""
import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

import alexnet_cli
from samplekit import shards_dir  # noqa: F401 (a fixture)
from shardkit import make_shards
from shards.writer import read_index


def verify(path):
    return CliRunner().invoke(alexnet_cli.main, ["verify", str(path)])


@pytest.fixture
def damaged(shards_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shards_dir, out)
    return out


def test_verify_passes_on_fresh_output(shards_dir):
    result = verify(shards_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {shards_dir}: 4 shards, 13 samples")
    if shutil.which("tar"):  # GNU tar lists the members as jpg, cls, json triples of one key
        names = subprocess.run(["tar", "tf", str(shards_dir / "val-000000.tar")], capture_output=True, text=True,
                               check=True).stdout.split()
        keys = [f"val_{i:08d}" for i in range(4)]
        assert names == [f"{k}.{e}" for k in keys for e in ("jpg", "cls", "json")]


def test_verify_truncated_tar(damaged):
    tar = damaged / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    result = verify(damaged)
    assert result.exit_code == 1
    assert "train-000001.tar" in result.stdout and "sha256" in result.stdout


def test_verify_flipped_byte_in_a_jpeg(damaged):
    entry = read_index(damaged / "train-000000.idx")[1]
    ext, offset, size, name = entry[0]
    assert ext == "jpg"
    with open(damaged / "train-000000.tar", "r+b") as f:  # the second byte of the JPEG's SOI marker
        f.seek(offset + 1)
        byte = f.read(1)
        f.seek(offset + 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = verify(damaged)
    assert result.exit_code == 1
    assert "sha256" in result.stdout
    assert f"train-000000.tar:{name.split('.')[0]}" in result.stdout and "decode" in result.stdout


def test_verify_wrong_count_in_manifest(damaged):
    m = json.load(open(damaged / "manifest.json"))
    m["splits"]["val"]["shards"][0]["samples"] += 1
    m["splits"]["val"]["samples"] += 1
    json.dump(m, open(damaged / "manifest.json", "w"))
    result = verify(damaged)
    assert result.exit_code == 1 and "manifest says" in result.stdout and "val-000000.tar" in result.stdout


def test_verify_stale_index(damaged):
    shutil.copy(damaged / "train-000001.idx", damaged / "train-000000.idx")
    result = verify(damaged)
    assert result.exit_code == 1 and "train-000000.idx" in result.stdout and "stale index" in result.stdout


def test_stats_text_and_json(shards_dir):
    m = json.load(open(shards_dir / "manifest.json"))
    result = CliRunner().invoke(alexnet_cli.main, ["stats", str(shards_dir)])
    assert result.exit_code == 0 and "eigenvalues" in result.stdout and "9 training images" in result.stdout
    result = CliRunner().invoke(alexnet_cli.main, ["stats", str(shards_dir), "--json"])
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) == 1
    s = json.loads(result.stdout)
    assert s["eigval"] == m["stats"]["eigval"] and s["mean"] == m["stats"]["mean"] and s["pixels"] == 9 * 256 * 256


def test_verify_passes_on_shardkit_output(tmp_path):
    """tests/shardkit.py finishes its directories with shards.finish_shard_dir, like preprocess."""
    make_shards(tmp_path, n_train=10, n_val=4, classes=3, shard_size=4)
    result = verify(tmp_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {tmp_path}: 4 shards, 14 samples (train 10, val 4)")


def test_verify_names_a_missing_pixel_sum(damaged):
    (damaged / "pixel_sum.npy").unlink()
    result = verify(damaged)
    assert result.exit_code == 1 and "pixel_sum.npy: missing" in result.stdout
    assert "1 problem(s)" in result.stderr
