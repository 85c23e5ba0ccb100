"""Tests of the Section 6.1 figures (train/figures.py): kernels, top-5 predictions, fc7 nearest
neighbours and the training curves, on a tiny shard directory and a width-0.125 checkpoint."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from shardkit import make_shards
from train.checkpoint import model_from_checkpoint, save_checkpoint
from train.figures import (
    NeighbourSearch,
    kernel_mosaic,
    make_figures,
    mean_crop,
    nearest,
    plot_curves,
    plot_kernels,
    read_metrics,
    to_display,
)
from train.model import AlexNet

CLASSES = 5
N_TRAIN, N_VAL = 20, 10
N_PRED, N_QUERIES, BATCH = 4, 3, 8


def _write_metrics(path, steps=30, torn=False):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "epoch": s // 10, "loss": 1.6 - s / 40 + rng.normal(0, 0.05),
                                "lr": 0.01 if s <= 20 else 0.001, "images_per_s": 50.0, "data_wait": 0.2}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"step": s, "epoch": s // 10, "top1_error": 0.8 - s / 100,
                                    "top5_error": 0.3 - s / 200, "loss": 1.5 - s / 50, "lr": 0.01}) + "\n")
        f.write("\n")
        if torn:
            f.write('{"step": 31, "lo')


def _image(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    shards = root / "shards"
    shards.mkdir()
    make_shards(shards, n_train=N_TRAIN, n_val=N_VAL, classes=CLASSES, shard_size=8, seed=3)
    run_dir = root / "run"
    run_dir.mkdir()
    torch.manual_seed(0)
    model = AlexNet(num_classes=CLASSES, width=0.125, init="kaiming")
    ckpt = save_checkpoint(str(run_dir), {"model": model.state_dict(), "model_config": model.config, "step": 1})
    _write_metrics(run_dir / "metrics.jsonl")
    out = make_figures(shards, ckpt, root / "out", devices=None, n_predictions=N_PRED,
                       n_neighbours=N_QUERIES, batch_size=BATCH)
    return {"root": root, "shards": shards, "ckpt": ckpt, "out": out}


# --- end to end ------------------------------------------------------------------------------


def test_every_png_is_a_valid_image(run):
    out = run["out"]
    assert "notes" not in out, out.get("notes")
    for name in ("kernels", "predictions", "neighbours", "curves"):
        assert os.path.dirname(out[name]) == str(run["root"] / "out")
        img = _image(out[name])
        h, w, _ = img.shape
        assert 150 <= h <= 3000 and 250 <= w <= 3000, (name, img.shape)
        assert img.std() > 5, f"{name} looks blank"


def test_kernels_png_is_two_column_blocks(run):
    model, _ = model_from_checkpoint(run["ckpt"])
    w = model.conv1_weight()
    assert w.shape == (12, 3, 11, 11)  # 96 × 0.125
    layout = plot_kernels(w, run["root"] / "k.png", places=["cpu", "cpu"])
    assert [b["title"] for b in layout["blocks"]] == ["column 1 (on cpu)", "column 2 (on cpu)"]
    assert layout["size"][0] >= 900, "readable at a glance, as the paper's Figure 3 (issue 20: 567 px)"
    assert [b["kernels"] for b in layout["blocks"]] == [6, 6]
    img = _image(run["out"]["kernels"])
    assert (img.shape[1], img.shape[0]) == tuple(layout["size"])
    (x0, y0, x1, y1), (u0, v0, u1, v1) = (b["box"] for b in layout["blocks"])
    assert y1 < v0, "column 1's block must sit above column 2's"
    assert np.all(img[y1 : y1 + 6] >= 250), "the blocks are separated by a white band"
    assert img[y1 + 6 : v0].min() < 100 and img[:y0].min() < 100, "each block has its title above it"
    # the PNG holds each block's mosaic pixel for pixel (nearest-neighbour upscaling, no resampling)
    for (a, b, c, d), kernels in zip((layout["blocks"][0]["box"], layout["blocks"][1]["box"]), (w[:6], w[6:])):
        mosaic, _ = kernel_mosaic(kernels.numpy(), scale=layout["scale"])
        assert np.abs(img[b:d, a:c].astype(int) - np.rint(mosaic * 255)).max() <= 1


def test_predictions_are_the_softmax_top5(run):
    from pipeline import build_loader

    model, _ = model_from_checkpoint(run["ckpt"])
    xs, ys = [], []
    assert model.config["input_norm"] == "channel"  # figures must read the shards as training did
    for x, y in build_loader(run["shards"], "val", BATCH, "cpu", mean=model.config["input_norm"]):
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs)[:N_PRED], torch.cat(ys)[:N_PRED]
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    p, i = torch.topk(probs, 5, dim=1)
    with open(run["out"]["predictions_json"]) as f:
        shown = json.load(f)
    assert len(shown) == N_PRED
    assert [s["label"] for s in shown] == y.tolist()
    assert [s["top5"] for s in shown] == i.tolist()
    np.testing.assert_allclose([s["probs"] for s in shown], p.numpy(), rtol=1e-5, atol=1e-6)


def test_neighbours_are_the_true_nearest_training_images(run):
    from pipeline import build_loader

    model, _ = model_from_checkpoint(run["ckpt"])
    with torch.no_grad():
        norm = model.config["input_norm"]
        qx, qy = next(iter(build_loader(run["shards"], "val", BATCH, "cpu", mean=norm)))
        _, qf = model(qx[:N_QUERIES], return_features=True)
        feats, labels = [], []
        for x, y in build_loader(run["shards"], "train", BATCH, "cpu", augment=False, lighting=0.0,
                                 shuffle=False, drop_last=False, mean=norm):
            feats.append(model(x, return_features=True)[1])
            labels.append(y)
    train_f, train_y = torch.cat(feats).numpy().astype(np.float64), torch.cat(labels).numpy()
    assert train_f.shape[1] == 512  # fc7: 4096 × 0.125
    brute = np.sqrt(((qf.numpy().astype(np.float64)[:, None, :] - train_f[None]) ** 2).sum(-1))
    with open(run["out"]["neighbours_json"]) as f:
        shown = json.load(f)
    assert shown["train_images_searched"] == len(train_f) == N_TRAIN
    assert len(shown["queries"]) == N_QUERIES
    for r, q in enumerate(shown["queries"]):
        assert q["label"] == int(qy[r])
        want = np.sort(brute[r])[:6]
        np.testing.assert_allclose(q["distances"], want, rtol=1e-4)
        # the indices name training images at those distances (the loader's order is the same)
        np.testing.assert_allclose(brute[r, q["neighbours"]], want, rtol=1e-4)
        assert q["labels"] == train_y[q["neighbours"]].tolist()


def test_curves_skipped_without_metrics(run, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    ckpt = shutil.copy(run["ckpt"], lone / "checkpoint-00000001.pt")
    out = make_figures(run["shards"], ckpt, tmp_path / "out", n_predictions=0, n_neighbours=0)
    assert set(out) == {"kernels", "notes"}
    assert any("curves skipped" in n for n in out["notes"])
    assert os.path.exists(out["kernels"])


# --- the pieces ------------------------------------------------------------------------------


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    q, t = rng.normal(size=(5, 64)), rng.normal(size=(200, 64))
    t[17] = q[2] + 1e-3  # a near-duplicate must come first
    d, i = nearest(q, t, 6)
    brute = np.linalg.norm(q[:, None] - t[None], axis=2)
    order = np.argsort(brute, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_allclose(d, np.take_along_axis(brute, order, 1), rtol=1e-12)
    assert i[2, 0] == 17
    dt, it = nearest(torch.from_numpy(q).float(), torch.from_numpy(t).float(), 6)
    assert isinstance(it, torch.Tensor)
    np.testing.assert_array_equal(it.numpy(), order)
    assert nearest(q, t[:3], 6)[1].shape == (5, 3)  # k capped at the training set's size


def test_streaming_search_equals_the_full_search():
    rng = np.random.default_rng(1)
    q = torch.from_numpy(rng.normal(size=(3, 32)))
    t = torch.from_numpy(rng.normal(size=(37, 32)))
    # image j is the constant j (with a zero mean image), so the kept images can be checked
    images = torch.arange(37, dtype=torch.float32)[:, None, None, None].expand(37, 3, 224, 224)
    zero = np.zeros((224, 224, 3), np.float32)
    s = NeighbourSearch(q, k=6)
    for a in range(0, 37, 8):
        s.add(t[a : a + 8], torch.arange(a, min(a + 8, 37)) % 4, images[a : a + 8], lambda x: to_display(x, zero))
    d, i = nearest(q, t, 6)
    assert s.seen == 37
    np.testing.assert_array_equal(s.index.numpy(), i.numpy())
    np.testing.assert_allclose(s.dist.numpy(), d.numpy())
    np.testing.assert_array_equal(s.labels.numpy(), i.numpy() % 4)
    assert s.images.shape == (3, 6, 224, 224, 3)
    np.testing.assert_array_equal(s.images[:, :, 100, 100, 0], i.numpy())


def test_kernel_mosaic_normalises_each_kernel():
    k = np.random.default_rng(2).normal(size=(5, 3, 11, 11)) * np.arange(1, 6)[:, None, None, None]
    k[4] = 7.0  # a constant kernel shows as mid-grey
    m, (rows, cols) = kernel_mosaic(k, cols=3, scale=2, gap=1)
    assert (rows, cols) == (2, 3)
    assert m.shape == (2 * 22 + 3, 3 * 22 + 4, 3)
    tile = m[1:23, 1:23]
    assert tile.min() == 0.0 and tile.max() == 1.0
    assert np.array_equal(tile[::2, ::2], tile[1::2, 1::2])  # nearest-neighbour ×2
    np.testing.assert_allclose(m[24:46, 24:46], 0.5)


def test_to_display_adds_the_mean_and_clips(tmp_path):
    make_shards(tmp_path, n_train=4, n_val=0, classes=2, shard_size=4, seed=0)
    mc = mean_crop(tmp_path)
    full = np.load(tmp_path / "mean_image.npy")
    np.testing.assert_allclose(mc, full[16:240, 16:240] * 255, rtol=1e-6)
    x = torch.zeros(1, 3, 224, 224)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 1000.0, -1000.0
    shown = to_display(x, mc)
    assert shown.dtype == np.uint8 and shown.shape == (1, 224, 224, 3)
    assert shown[0, 0, 0, 0] == 255 and shown[0, 0, 0, 1] == 0
    np.testing.assert_array_equal(shown[0, 5, 5], np.rint(mc[5, 5]))


def test_to_display_undoes_the_channel_normalisation(tmp_path):
    """"channel" input (x/255 − μ)/σ is shown as x again: the DALI loader's centre crop, undone,
    equals the stored image's centre crop (up to JPEG decoding, which is the same libjpeg here)."""
    from PIL import Image as PILImage

    from pipeline import build_loader
    from shards import Manifest

    make_shards(tmp_path, n_train=4, n_val=2, classes=2, shard_size=4, seed=0)
    stats = Manifest.load(tmp_path).stats
    x, _ = next(iter(build_loader(tmp_path, "val", 2, "cpu", mean="channel")))
    shown = to_display(x, 255 * np.asarray(stats.mean, np.float32), 255 * np.asarray(stats.std, np.float32))
    import tarfile

    with tarfile.open(tmp_path / "val-000000.tar") as tar:
        jpg = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        original = np.asarray(PILImage.open(tar.extractfile(jpg)).convert("RGB"))[16:240, 16:240]
    assert np.abs(shown[0].astype(int) - original.astype(int)).max() <= 2


def test_plot_curves_reads_training_and_validation_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path, steps=30, torn=True)
    train, val = read_metrics(path)
    assert len(train) == 30 and len(val) == 3
    info = plot_curves(path, tmp_path / "curves.png")
    assert (info["train_rows"], info["val_rows"]) == (30, 3)
    assert _image(tmp_path / "curves.png").shape[1] >= 500


def test_a_constant_learning_rate_reads_as_constant(tmp_path):
    """Issue 20: a constant rate was drawn on a 0.0096-0.0104 axis, as if it moved."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "epoch": 0, "loss": 2.0 - s / 100, "lr": 0.01}) + "\n"
                            for s in range(1, 21)))
    lo, hi = plot_curves(path, tmp_path / "curves.png")["lr_axis"]
    assert lo == 0 and 0.01 < hi <= 0.02


def test_neighbours_figure_has_the_papers_five_rows_of_six(run, tmp_path):
    """Figure 4 (right): five test images, each with the six training images nearest in fc7."""
    out = make_figures(run["shards"], run["ckpt"], tmp_path / "out", n_predictions=0, n_train=12)
    shown = json.load(open(out["neighbours_json"]))
    assert [q["position"] for q in shown["queries"]] == [0, 1, 2, 3, 4]
    assert all(len(q["neighbours"]) == 6 for q in shown["queries"]) and shown["train_images_searched"] == 12
    full = _image(out["neighbours"])
    three = _image(run["out"]["neighbours"])  # the fixture's figure has 3 rows
    assert full.shape[1] == three.shape[1] and full.shape[0] > three.shape[0] * 1.4
