"""The shard format (DESIGN.md, Contract 1) read by other readers, and `alexnet verify` / `stats`."""
import io
import json
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import alexnet_cli
from demo import sample_data
from preprocess.plan import Settings
from preprocess.run import preprocess
from shards.writer import ShardWriter, read_index, sample_key


def jpeg(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two shards from the writer: (folder, [(key, jpeg, label, meta)])."""
    d = tmp_path_factory.mktemp("writer")
    samples = [(sample_key("train", i), jpeg(i), i % 3, {"src": f"train/n0/{i}.JPEG", "size": [300 + i, 200]})
               for i in range(7)]
    for n, chunk in enumerate((samples[:4], samples[4:])):
        with ShardWriter(d, f"train-{n:06d}") as w:
            for key, data, label, meta in chunk:
                w.write(key, data, label, meta)
    return d, samples


def test_writer_round_trip_tar_and_index(written):
    d, samples = written
    names = []
    for n in range(2):
        with tarfile.open(d / f"train-{n:06d}.tar") as tf:
            names += tf.getnames()
        index = read_index(d / f"train-{n:06d}.idx")
        raw = (d / f"train-{n:06d}.tar").read_bytes()
        for entry in index:
            for ext, offset, size, name in entry:
                key = name.split(".")[0]
                want = {s[0]: s for s in samples}[key]
                if ext == "jpg":
                    assert raw[offset:offset + size] == want[1]
                if ext == "cls":
                    assert raw[offset:offset + size] == str(want[2]).encode()
                if ext == "json":
                    assert json.loads(raw[offset:offset + size])["label"] == want[2]
    assert names == [f"{k}.{e}" for k, *_ in samples for e in ("jpg", "cls", "json")]
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]


def test_stock_webdataset_reads_the_shards(written):
    import webdataset as wds

    d, samples = written
    urls = [str(d / f"train-{n:06d}.tar") for n in range(2)]
    got = [(s["__key__"], s["jpg"], int(s["cls"]), json.loads(s["json"]))
           for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    assert got == [(k, data, label, dict(meta, label=label)) for k, data, label, meta in samples]


def test_dali_cpu_reader_sees_the_same_samples(written):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    d, samples = written

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, js = fn.readers.webdataset(
            paths=[str(d / f"train-{n:06d}.tar") for n in range(2)],
            index_paths=[str(d / f"train-{n:06d}.idx") for n in range(2)],
            ext=["jpg", "cls", "json"], missing_component_behavior="error", random_shuffle=False, name="reader")
        return jpg, cls, js

    p = pipe()
    p.build()
    assert p.epoch_size("reader") == len(samples)
    got = []
    while len(got) < len(samples):
        jpg, cls, js = p.run()
        for i in range(len(jpg)):
            got.append((bytes(np.array(jpg.at(i))), int(bytes(np.array(cls.at(i)))), json.loads(bytes(np.array(js.at(i))))))
    got = got[: len(samples)]
    assert got == [(data, label, dict(meta, label=label)) for _, data, label, meta in samples]
    assert dali.__version__


# ----------------------------------------------------------------------------- verify, stats

@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    sample_data.generate(root / "src", classes=2, train_per_class=5, val_per_class=2)
    preprocess(Settings(src=str(root / "src"), out=str(root / "out"), workers=1, shard_size=4), show_progress=False)
    return root / "out"


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


def test_manifest_round_trip_and_validation(shards_dir, tmp_path):
    from shards.manifest import Manifest, ManifestError

    m = Manifest.load(shards_dir)
    m.save(tmp_path)
    assert Manifest.load(tmp_path) == m
    assert (tmp_path / "manifest.json").read_bytes() == (shards_dir / "manifest.json").read_bytes()
    raw = json.load(open(shards_dir / "manifest.json"))
    raw["splits"]["train"]["samples"] += 1
    json.dump(raw, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(ManifestError, match="samples"):
        Manifest.load(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path / "empty")
