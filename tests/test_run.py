"""preprocess/run.py: a whole run writes the shard directory, in a seeded order, with exact
statistics, the same bytes for any worker count, chunking, resume or added split.

Small data only: the sample-data generator (4 classes, tests/samplekit.py), all in tmp_path.
"""
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from demo import sample_data
from preprocess.plan import Settings
from preprocess.run import NothingUsable, TooManyErrors, preprocess
from preprocess.source import ScanError, scan
from preprocess.transform import load
from samplekit import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, read_split, run, single, src, tars  # noqa: F401
from shards import Damage, UserError


def test_run_writes_contract_and_reports_errors(src, single):
    m = json.load(open(single / "manifest.json"))
    n_train = CLASSES * TRAIN_PER_CLASS
    assert m["splits"]["train"]["samples"] == n_train - 1  # the truncated file
    assert m["splits"]["val"]["samples"] == CLASSES * VAL_PER_CLASS
    assert len(m["splits"]["train"]["shards"]) == -(-n_train // 5)
    assert [c["wnid"] for c in m["classes"]] == sorted(c["wnid"] for c in m["classes"])
    assert m["classes"][0]["name"].startswith("red disc")
    assert {k: m["params"][k] for k in ("size", "quality", "resize_filter", "seed", "shard_size", "part")} == {
        "size": 256, "quality": 90, "resize_filter": "bilinear", "seed": 0, "shard_size": 5, "part": None}
    assert m["params"]["source_root"] == str(src)
    lines = [json.loads(x) for x in open(single / "errors.jsonl")]
    truncated = sample_data.odd_positions(CLASSES, TRAIN_PER_CLASS)["truncated"]
    rel = f"train/{sample_data.wnid(truncated[0])}/{sample_data.wnid(truncated[0])}_{truncated[1]}.JPEG"
    assert len(lines) == 2 and lines[0]["path"] == rel and "truncated" in lines[0]["reason"]
    assert lines[0]["reason"] == "truncated (Premature end of JPEG file)"  # libjpeg's message
    assert lines[1] == {"summary": {"errors": 1, "by_split": {"train": 1, "val": 0}, "kept": 0}}
    assert m["errors"] == 1
    assert not any(f.endswith(".tmp") for f in os.listdir(single))
    for key, s in read_split(single, "train").items():
        meta = json.loads(s["json"])
        assert "." not in key and int(s["cls"]) == meta["label"]
        assert meta["src"].startswith("train/") and meta["wnid"] == meta["src"].split("/")[1]
        assert Image.open(io.BytesIO(s["jpg"])).size == (256, 256)


def test_training_order_is_seeded_and_shuffled(src, single, tmp_path):
    keys = list(read_split(single, "train"))
    assert keys == sorted(keys)
    labels = [int(s["cls"]) for s in read_split(single, "train").values()]
    assert labels != sorted(labels)  # mixed classes, not class by class
    files = sorted(it.path for it in scan(str(src)).splits["train"])
    order = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    metas = [json.loads(s["json"]) for s in read_split(single, "train").values()]
    positions = [int(k.split("_")[1]) for k in read_split(single, "train")]
    assert [m["src"] for m in metas] == [order[p] for p in positions]
    run(src, tmp_path / "seed1", seed=1, split="train")
    assert [json.loads(s["json"])["src"] for s in read_split(tmp_path / "seed1", "train").values()] != [m["src"] for m in metas]


def test_val_labels_from_csv(src, single):
    solution = {}
    for line in open(src / "LOC_val_solution.csv").read().splitlines()[1:]:
        image_id, pred = line.split(",")
        solution[image_id] = pred.split()[0]
    wnids = [c["wnid"] for c in json.load(open(single / "manifest.json"))["classes"]]
    val = read_split(single, "val")
    srcs = [json.loads(s["json"])["src"] for s in val.values()]
    assert srcs == sorted(srcs)  # validation in sorted order
    for s in val.values():
        meta = json.loads(s["json"])
        assert wnids[int(s["cls"])] == solution[os.path.splitext(os.path.basename(meta["src"]))[0]]


def test_val_labels_from_class_folders(src, single, tmp_path):
    alt = tmp_path / "src"
    shutil.copytree(src / "train", alt / "train")
    for line in open(src / "LOC_val_solution.csv").read().splitlines()[1:]:
        image_id, pred = line.split(",")
        (alt / "val" / pred.split()[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "val" / f"{image_id}.JPEG", alt / "val" / pred.split()[0] / f"{image_id}.jpeg")
    run(alt, tmp_path / "out", split="val")
    by_name = {os.path.basename(json.loads(s["json"])["src"]).split(".")[0]: s for s in read_split(tmp_path / "out", "val").values()}
    for s in read_split(single, "val").values():
        name = os.path.basename(json.loads(s["json"])["src"]).split(".")[0]
        assert by_name[name]["cls"] == s["cls"] and by_name[name]["jpg"] == s["jpg"]


def test_statistics_equal_numpy_over_the_same_pixels(src, single):
    m = json.load(open(single / "manifest.json"))
    images = []
    for s in read_split(single, "train").values():
        pixels, _ = load((src / json.loads(s["json"])["src"]).read_bytes())
        images.append(pixels[..., :3].astype(np.float64))
    stack = np.stack(images)
    x = stack.reshape(-1, 3) / 255.0
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)
    eigval, eigvec = np.linalg.eigh(cov)
    st = m["stats"]
    assert st["images"] == len(images) and st["pixels"] == len(x)
    assert np.allclose(st["mean"], mean, atol=1e-12) and np.allclose(st["cov"], cov, atol=1e-12)
    assert np.allclose(st["std"], np.sqrt(np.diag(cov)), atol=1e-12)
    assert np.allclose(st["eigval"], eigval[::-1], atol=1e-12)
    got = np.array(st["eigvec"])
    for i in range(3):  # columns, up to sign
        assert np.allclose(np.abs(got[:, i] @ eigvec[:, 2 - i]), 1.0, atol=1e-9)
    assert np.array_equal(np.load(single / "pixel_sum.npy"), stack.sum(0).astype(np.int64))
    assert np.allclose(np.load(single / "mean_image.npy"), stack.mean(0) / 255.0, atol=1e-6)
    assert st["sums"]["sum"] == stack.reshape(-1, 3).sum(0).astype(np.int64).tolist()


def test_same_bytes_for_any_worker_count(src, single, tmp_path):
    run(src, tmp_path / "w2", workers=2)
    assert tars(tmp_path / "w2") == tars(single)
    assert (tmp_path / "w2" / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert (tmp_path / "w2" / "errors.jsonl").read_bytes() == (single / "errors.jsonl").read_bytes()


def test_shards_assembled_from_several_chunks_are_the_same_bytes(src, single, tmp_path, monkeypatch):
    """Shards of 5 images sent to the workers in chunks of 2 (not 1 chunk per shard as above)."""
    from preprocess import plan

    whole = plan.ShardTask.chunks
    calls = []

    def small_chunks(task, size=plan.CHUNK):
        parts = whole(task, 2)
        calls.append(len(parts))
        return parts

    monkeypatch.setattr(plan.ShardTask, "chunks", small_chunks)
    run(src, tmp_path / "w2", workers=2)
    assert max(calls) > 1  # the multi-chunk path really ran
    assert tars(tmp_path / "w2") == tars(single)
    assert (tmp_path / "w2" / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()


def test_adding_a_split_equals_one_run(src, single, tmp_path):
    out = tmp_path / "out"
    run(src, out, split="train")
    assert "val" not in json.load(open(out / "manifest.json"))["splits"]
    run(src, out, split="val")
    assert (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert (out / "errors.jsonl").read_bytes() == (single / "errors.jsonl").read_bytes()
    assert tars(out) == tars(single)


def test_rerun_reuses_and_redoes_a_damaged_shard(src, single, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(single, out)
    with open(out / "train-000001.tar", "r+b") as f:  # same size, other bytes
        f.seek(700)
        f.write(b"X")
    summary = run(src, out)
    m = json.load(open(single / "manifest.json"))
    assert summary.reused == sum(len(s["shards"]) for s in m["splits"].values()) - 1
    assert tars(out) == tars(single)
    assert (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()


def test_limit_and_max_errors(src, tmp_path):
    summary = run(src, tmp_path / "lim", limit=7, split="train")
    assert summary.samples + summary.errors == 7
    with pytest.raises(TooManyErrors) as e:
        run(src, tmp_path / "max0", max_errors=0, split="train")
    assert e.value.summary.errors == 1 and os.path.exists(tmp_path / "max0" / "errors.jsonl")
    assert run(src, tmp_path / "max1", max_errors=1, split="train").errors == 1


def test_errors_are_one_line_exceptions_for_any_caller(src, tmp_path):
    """The library raises shards.errors exceptions, so a caller other than the CLI (the demo) gets
    the same one line and exit code: 2 for bad input, 1 for damage found."""
    with pytest.raises(ScanError, match="no such folder") as e:
        preprocess(Settings(src=str(tmp_path / "missing"), out=str(tmp_path / "o"), workers=1), show_progress=False)
    assert isinstance(e.value, UserError) and e.value.exit_code == 2 and not (tmp_path / "o").exists()
    for k in range(2):
        folder = tmp_path / "bad" / "train" / sample_data.wnid(k)
        folder.mkdir(parents=True)
        (folder / "x.JPEG").write_bytes(b"not an image")
    with pytest.raises(NothingUsable, match="every image of the train split failed") as e:
        run(tmp_path / "bad", tmp_path / "o")
    assert isinstance(e.value, Damage) and e.value.exit_code == 1
    assert (tmp_path / "o" / "errors.jsonl").exists() and not (tmp_path / "o" / "manifest.json").exists()
    with pytest.raises(TooManyErrors) as e:
        run(src, tmp_path / "max0", max_errors=0, split="train")
    assert isinstance(e.value, Damage) and e.value.exit_code == 1
