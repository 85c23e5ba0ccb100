"""The training graph cut after each stage (pipeline/stages.py): each cut computes what the
stages before it compute, checked against numpy on the cut before it, and the last DALI cut is
the loader's own graph."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from alexnet_cli import main as cli
from shardkit import make_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("stages")
    make_shards(d, n_train=24, n_val=4, classes=4, shard_size=12, seed=5)
    return str(d)


def _outputs(loader, stage):
    from pipeline.stages import stage_pipeline

    pipe = stage_pipeline(loader, stage)
    images, labels = pipe.run()
    return np.stack([np.asarray(images[i]) for i in range(len(images))]), labels


def test_each_cut_adds_exactly_its_stage(shards):
    from pipeline import build_loader
    from pipeline.draws import CROP

    loader = build_loader(shards, "train", 6, device="cpu", lighting=0.1, mean="image")
    crop = _outputs(loader, "crop")[0]            # N×3×224×224 float32, no normalisation
    mean_image = _outputs(loader, "mean_image")[0]
    lighting = _outputs(loader, "lighting")[0]
    decoded = _outputs_raw(loader, "decode")       # 256×256×3 uint8, the same samples in the same order
    draws = loader.draws(0)
    m = loader.norm.mean_image                     # 256×256×3 in 0–255 units
    for i in range(6):
        x0, y0 = int(draws.x0[i]), int(draws.y0[i])
        cut = decoded[i][y0:y0 + CROP, x0:x0 + CROP].transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(crop[i], cut[:, :, ::-1] if draws.mirror[i] else cut)  # corner and flip
        mean = m[y0:y0 + CROP, x0:x0 + CROP].transpose(2, 0, 1)
        if draws.mirror[i]:
            mean = mean[:, :, ::-1]
        np.testing.assert_allclose(mean_image[i], crop[i] - mean, atol=1e-3)   # the mean image, cropped and mirrored
        offset = loader.norm.offsets255(draws.alpha[i:i + 1])[0]
        np.testing.assert_allclose(lighting[i], mean_image[i] + offset[:, None, None], atol=1e-3)  # Section 4.1
    assert crop.min() >= 0 and crop.max() <= 255 and np.all(crop == np.round(crop))  # uint8 values, as floats
    # the lighting cut is the loader's graph: its first batch is the loader's first batch
    images, _ = next(iter(loader))
    np.testing.assert_array_equal(lighting, images.numpy())


def test_read_and_decode_cuts(shards):
    from pipeline import build_loader

    loader = build_loader(shards, "train", 6, device="cpu")
    jpegs = _outputs_raw(loader, "read")
    assert all(j[:2].tobytes() == b"\xff\xd8" for j in jpegs)  # JPEG bytes, as read
    decoded = _outputs_raw(loader, "decode")
    assert all(d.shape == (256, 256, 3) and d.dtype == np.uint8 for d in decoded)


def _outputs_raw(loader, stage):
    from pipeline.stages import stage_pipeline

    images, _ = stage_pipeline(loader, stage).run()
    return [np.asarray(images[i]) for i in range(len(images))]


def test_profile_stages_json_table_and_plot(shards, tmp_path):
    png = tmp_path / "stages.png"
    r = CliRunner().invoke(cli, ["profile", shards, "--device", "cpu", "--width", "0.125", "--init", "kaiming",
                                 "--batch-size", "4", "--batches", "3", "--warmup", "1", "--stages", "--json",
                                 "--plot", str(png)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(out["stages"]) == ["read", "decode", "crop", "mean_image", "lighting", "torch"]
    for k in ("pipeline", "model", "end_to_end", "peer", "data_wait"):  # the other figures stay
        assert k in out
    shares = [v["share"] for v in out["stages"].values()]
    assert all(v["img_s"] > 0 for v in out["stages"].values()) and all(0 <= s for s in shares)
    per_batch = [v["ms_per_batch"] for v in out["stages"].values()]
    assert all(v["img_s"] == pytest.approx(4e3 / ms) for v, ms in zip(out["stages"].values(), per_batch))
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 600
    table = CliRunner().invoke(cli, ["profile", shards, "--device", "cpu", "--width", "0.125", "--init", "kaiming",
                                     "--batch-size", "4", "--batches", "2", "--warmup", "1", "--stages"]).stdout
    assert "the input is bound by:" in table and "mean_image" in table


def test_uint8_handoff_cuts_its_graph_where_torch_takes_over(shards):
    """With the uint8 hand-off DALI's graph ends at the crop (uint8 HWC, ROI-decoded on the CPU):
    the crop cut is the decode cut's crop at the host's corners and flips, pixel for pixel, and
    the stages after it run in torch."""
    from pipeline import build_loader
    from pipeline.draws import CROP
    from pipeline.stages import stages_of

    loader = build_loader(shards, "train", 6, device="cpu", lighting=0.1, handoff="uint8")
    assert stages_of(loader) == ("read", "decode", "crop", "torch")
    crops = _outputs_raw(loader, "crop")
    decoded = _outputs_raw(loader, "decode")
    draws = loader.draws(0)
    for i in range(6):
        x0, y0 = int(draws.x0[i]), int(draws.y0[i])
        cut = decoded[i][y0:y0 + CROP, x0:x0 + CROP]
        assert crops[i].dtype == np.uint8 and crops[i].shape == (CROP, CROP, 3)
        np.testing.assert_array_equal(crops[i], cut[:, ::-1] if draws.mirror[i] else cut)
    with pytest.raises(ValueError, match="not one of read, decode, crop"):
        _outputs_raw(loader, "lighting")


def test_the_one_timer_leaves_out_the_build_and_the_prefetched_batches(shards):
    """pipeline.stages.time_loader: warm-up of at least prefetch + 1 batches, epochs crossed as
    training crosses them, and a loader's background build of its next epoch finished before
    the timed batches."""
    from pipeline import build_loader
    from pipeline.stages import min_warmup, time_loader

    loader = build_loader(shards, "train", 4, device="cpu", prefetch=3, prepare_next=True)
    assert min_warmup(loader) == 4
    assert len(loader) == 6
    t = time_loader(loader, batches=9, warmup=1)  # 4 warm-up + 9 timed: over two epochs
    assert t.warmup == 4 and len(t.per_batch_s) == 9 and t.sizes == [4] * 9 and t.img_s > 0
    assert loader.epoch == 3  # epochs 0, 1 and 2 were started
    assert t.first_batch_s > 0
