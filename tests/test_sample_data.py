"""Tests of the synthetic ImageNet-layout dataset (demo/sample_data.py)."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from demo.sample_data import ODD_KINDS, generate

SMALL = dict(classes=3, train_per_class=6, val_per_class=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd") / "data"
    calls = []
    info = generate(out, seed=0, progress=lambda d, t: calls.append((d, t)), **SMALL)
    return out, info, calls


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _open_loaded(path):
    im = Image.open(path)
    im.load()
    return im


def test_layout(small):
    out, info, _ = small
    wnids = [w for w, _ in info["classes"]]
    assert wnids == sorted(wnids) and len(set(wnids)) == 3
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert sorted(p.name for p in (out / "train").iterdir()) == wnids
    for w in wnids:
        names = sorted(p.name for p in (out / "train" / w).iterdir())
        assert names == sorted(f"{w}_{i}.JPEG" for i in range(6))
    val = sorted(p.name for p in (out / "val").iterdir())
    assert val == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 7)]
    assert all(p.is_file() for p in (out / "val").iterdir())
    assert info["train"] == 18 and info["val"] == 6 and info["root"] == str(out)
    assert not [p for p in out.parent.iterdir() if p.name != "data"]  # no temp left


def test_val_solution_and_synsets(small):
    out, info, _ = small
    wnids = {w for w, _ in info["classes"]}
    with open(out / "LOC_val_solution.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["ImageId", "PredictionString"]
        rows = list(reader)
    val_ids = sorted(p.stem for p in (out / "val").iterdir())
    assert sorted(r[0] for r in rows) == val_ids
    per_class = {}
    for image_id, pred in rows:
        wnid, *box = pred.split()
        assert wnid in wnids
        x0, y0, x1, y1 = map(int, box)
        w, h = Image.open(out / "val" / f"{image_id}.JPEG").size
        assert 0 <= x0 < x1 < w and 0 <= y0 < y1 < h
        per_class[wnid] = per_class.get(wnid, 0) + 1
    assert per_class == {w: 2 for w in wnids}
    lines = (out / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [ln.split(" ", 1)[0] for ln in lines] == [w for w, _ in info["classes"]]
    for ln, (w, name) in zip(lines, info["classes"]):
        assert ln.startswith(f"{w} {name}, ")


def test_progress(small):
    _, _, calls = small
    assert calls == [(i, 24) for i in range(1, 25)]


def test_determinism(small, tmp_path):
    out, _, _ = small
    generate(tmp_path / "again", seed=0, **SMALL)
    generate(tmp_path / "other", seed=1, **SMALL)
    first, again, other = _files(out), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    images = [k for k in first if k.endswith(".JPEG")]
    assert sum(first[k] != other[k] for k in images) == len(images)


def test_odd_files(small, monkeypatch):
    out, info, _ = small
    odd = info["odd_files"]
    assert list(odd) == list(ODD_KINDS)
    assert len(set(odd.values())) == len(odd)
    assert all(p.startswith("train/") and p.endswith(".JPEG") for p in odd.values())
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    expect = {"cmyk": ("JPEG", "CMYK"), "grayscale": ("JPEG", "L"), "png": ("PNG", "RGB"),
              "palette": ("PNG", "P"), "rgba": ("PNG", "RGBA"), "gray16": ("PNG", "I;16")}
    for kind, (fmt, mode) in expect.items():
        im = _open_loaded(out / odd[kind])
        assert (im.format, im.mode) == (fmt, mode), kind
    trunc = out / odd["truncated"]
    assert trunc.read_bytes()[:2] == b"\xff\xd8"
    with pytest.raises(OSError):
        _open_loaded(trunc)
    odd_paths = set(odd.values())
    for p in (out / "train").rglob("*.JPEG"):  # everything else is a plain RGB JPEG
        if p.relative_to(out).as_posix() not in odd_paths:
            im = _open_loaded(p)
            assert (im.format, im.mode) == ("JPEG", "RGB")


def test_odd_files_left_out_when_too_few_slots(tmp_path):
    info = generate(tmp_path / "d", classes=2, train_per_class=2, val_per_class=0)
    assert list(info["odd_files"]) == list(ODD_KINDS[:4])
    assert not (tmp_path / "d" / "val").exists()


def test_sizes(small, monkeypatch):
    out, _, _ = small
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    sizes = [Image.open(p).size for p in out.rglob("*.JPEG")]
    assert len(sizes) == 24
    assert all(200 <= w <= 800 and 200 <= h <= 800 for w, h in sizes)
    assert len({w / h > 1 for w, h in sizes}) == 2  # both landscape and portrait


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        generate(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    generate(tmp_path / "empty", classes=1, train_per_class=1, val_per_class=1)
    assert (tmp_path / "empty" / "train").is_dir()


def _features(path):
    """Centre-crop colour and edge statistics: a stand-in for what a convnet sees."""
    im = _open_loaded(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    a = np.asarray(im.crop((left, top, left + s, top + s)).resize((32, 32), Image.BILINEAR),
                   np.float32) / 255
    centre = a[8:24, 8:24].reshape(-1, 3)
    g = a.mean(2)
    dx, dy = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    edges = [dx.mean(), dy.mean(), (dx > 0.1).mean(), (dy > 0.1).mean()]
    return np.concatenate([centre.mean(0), centre.std(0), np.median(centre, 0), edges])


def test_classes_are_learnable(tmp_path):
    """Nearest class centroid on colour and edge statistics: 10 classes (chance 0.10), 160
    training and 100 validation images. Measured on seeds 0-19: 0.53-0.70 (0.64 on seed 0, the
    one tested; no torch here, so torch's thread count plays no part); a generator whose class
    signal weakens falls below the bar."""
    out = tmp_path / "d"
    info = generate(out, classes=10, train_per_class=16, val_per_class=10, seed=0)
    wnids = [w for w, _ in info["classes"]]
    xs, ys = [], []
    for k, w in enumerate(wnids):
        for p in sorted((out / "train" / w).iterdir()):
            if p.relative_to(out).as_posix() != info["odd_files"]["truncated"]:
                xs.append(_features(p))
                ys.append(k)
    xs, ys = np.array(xs), np.array(ys)
    mu, sd = xs.mean(0), xs.std(0) + 1e-6
    centroids = np.array([((xs[ys == k] - mu) / sd).mean(0) for k in range(10)])
    with open(out / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    hits = 0
    for r in rows:
        f = (_features(out / "val" / f"{r['ImageId']}.JPEG") - mu) / sd
        hits += int(np.argmin(((centroids - f) ** 2).sum(1))) == wnids.index(
            r["PredictionString"].split()[0])
    assert len(rows) == 100 and hits / len(rows) >= 0.5, hits
