"""shards/writer.py: the tar + DALI index writer, read back by its own index reader, by the
stock webdataset reader and by DALI's."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

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


def test_an_aborted_or_empty_shard_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "train-000000") as w:
            w.write(sample_key("train", 0), jpeg(0), 1, {})
            raise RuntimeError("a worker died")
    with pytest.raises(ValueError, match="no samples"):
        ShardWriter(tmp_path, "train-000001").close()
    with pytest.raises(ValueError, match="must not contain"):
        with ShardWriter(tmp_path, "train-000002") as w:
            w.write("a.b", jpeg(0), 1, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("when", ["write", "close"])
def test_a_full_disk_names_the_shard_and_leaves_no_file(tmp_path, monkeypatch, when):
    """The disk refuses a write (no file name in the error): the error names the tar being
    written, and neither it nor its temporary stays."""
    import errno

    from shards import writer

    def refuse(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    w = ShardWriter(tmp_path, "train-000000")
    monkeypatch.setattr(writer._HashingFile, "write" if when == "write" else "close", refuse)
    with pytest.raises(OSError) as e:
        with w:
            w.write(sample_key("train", 0), jpeg(0), 1, {})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "train-000000.tar.tmp")
    assert os.listdir(tmp_path) == []


def test_members_of_whole_blocks_against_tarfile(tmp_path):
    """Members of exactly 512 and 1,024 bytes (whole tar blocks, no padding) among others: the
    index's offsets and sizes are tarfile's own, and the bytes are those TarFile.addfile writes."""
    sizes = (512, 1024, 3, 511, 513, 1536)
    payloads = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    with ShardWriter(tmp_path, "train-000000") as w:
        for i, data in enumerate(payloads):
            w.write(sample_key("train", i), data, i, {})
    with tarfile.open(tmp_path / "train-000000.tar") as tf:
        members = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
        assert [tf.extractfile(f"{sample_key('train', i)}.jpg").read() for i in range(len(sizes))] == payloads
    assert len(members) == 3 * len(sizes)
    index = read_index(tmp_path / "train-000000.idx")
    assert [(name, offset, size) for entry in index for _, offset, size, name in entry] == \
           [(name, *members[name]) for name in members]
    assert [entry[0][2] for entry in index] == list(sizes)
    # the reference: the same members through the standard library's writer
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i, data in enumerate(payloads):
            meta = json.dumps({"label": i}, sort_keys=True).encode()
            for ext, body in zip(("jpg", "cls", "json"), (data, str(i).encode(), meta)):
                info = tarfile.TarInfo(f"{sample_key('train', i)}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = \
                    len(body), 0, 0o644, 0, 0, "", ""
                tf.addfile(info, io.BytesIO(body))
    assert (tmp_path / "train-000000.tar").read_bytes() == ref.getvalue()
