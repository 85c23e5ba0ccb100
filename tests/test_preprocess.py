"""`alexnet preprocess`: decoding, geometry, statistics, order, determinism, resume, errors, CLI.

Small data only: the sample-data generator (4 classes) plus images made here, all in tmp_path;
every result is compared with a direct reference (Pillow, numpy).
"""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

import alexnet_cli
from demo import sample_data
from preprocess.plan import Part, Settings
from preprocess.run import TooManyErrors, preprocess
from preprocess.scan import scan
from preprocess.transform import BadImage, encode, geometry, load

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 12, 4
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


# ----------------------------------------------------------------------------- helpers

def run(src, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 5)
    return preprocess(Settings(src=str(src), out=str(out), **kw), show_progress=False)


def read_tar(path):
    """{key: {ext: bytes}} in tar order."""
    samples = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def read_split(out, split):
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    samples = {}
    for shard in manifest["splits"][split]["shards"]:
        samples.update(read_tar(os.path.join(out, shard["tar"])))
    return samples


def tars(out):
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out)) if f.endswith((".tar", ".idx"))}


def reference(im: Image.Image, resize_filter="bilinear"):
    """The obviously-correct transform: full resize to the exact W×H, then the centre crop."""
    w, h = im.size
    g = geometry(w, h)
    big = im.convert("RGB").resize((g.width, g.height), FILTERS[resize_filter])
    return np.asarray(big.crop((g.left, g.top, g.left + 256, g.top + 256)), np.float64)


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64)[..., :3] - b) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def jpeg_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def png_bytes(im):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def photo(w, h, seed=0):
    """Structured test content: gradient, 8-px checkerboard, noise (a 1-px shift is visible)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    board = (((x // 8) + (y // 8)) % 2) * 60.0
    a = np.stack([x * 200.0 / w + board, y * 200.0 / h, (x + y) * 100.0 / (w + h) + board], -1)
    a += rng.normal(0, 6, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "imagenet"
    sample_data.generate(root, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS)
    return root


@pytest.fixture(scope="session")
def single(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    run(src, out)
    return out


# ----------------------------------------------------------------------------- transform

def test_geometry_is_exact():
    assert geometry(500, 375) == (341, 256, 42, 0)
    assert geometry(375, 500) == (256, 341, 0, 42)
    assert geometry(200, 150) == (341, 256, 42, 0)  # upscaled
    assert geometry(256, 256) == (256, 256, 0, 0)
    assert geometry(1600, 333) == (1230, 256, 487, 0)
    g = geometry(257, 1000)
    assert g.width == 256 and g.height == round(1000 * 256 / 257) and g.top == (g.height - 256) // 2


@pytest.mark.parametrize("resize_filter", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size,fmt,min_db", [
    ((1200, 700), "jpeg", 33.0),  # DCT-scaled decode (4/8), then the box resample
    ((700, 1100), "jpeg", 33.0),  # portrait
    ((180, 120), "jpeg", 99.0),  # upscaled: decoded at full size, equals the full resize
    ((640, 480), "png", 99.0),  # the Pillow path: equals the full resize
])
def test_geometry_against_full_resize(size, fmt, min_db, resize_filter):
    im = photo(*size)
    data = jpeg_bytes(im, quality=95) if fmt == "jpeg" else png_bytes(im)
    pixels, got_size = load(data, resize_filter=resize_filter)
    assert got_size == size and pixels.shape == (256, 256, 4) and pixels.dtype == np.uint8
    ref = reference(Image.open(io.BytesIO(data)), resize_filter)
    if min_db >= 99:
        assert np.abs(pixels[..., :3] - ref).max() <= 1
    else:
        assert psnr(pixels, ref) > min_db
    # the test has teeth: the same image one pixel off is far worse
    assert psnr(pixels[:, 1:], ref[:, :-1]) < min(psnr(pixels, ref), 99) - 6


def test_odd_sample_files_decode_like_pillow(src):
    odd = sample_data.odd_positions(CLASSES, TRAIN_PER_CLASS)
    for kind, (k, i) in odd.items():
        path = src / "train" / sample_data.wnid(k) / f"{sample_data.wnid(k)}_{i}.JPEG"
        data = path.read_bytes()
        if kind == "truncated":
            with pytest.raises(BadImage, match="truncated"):
                load(data)
            continue
        pixels, size = load(data)
        im = Image.open(path)
        if im.mode == "I;16":  # scaled to 8 bits, not clipped
            im = Image.fromarray(np.rint(np.asarray(im) / 257.0).astype(np.uint8))
        ref = reference(im)
        assert size == im.size
        assert psnr(pixels, ref) > 35, kind
        if kind in ("cmyk", "png", "palette", "rgba", "gray16"):  # Pillow path: exact
            assert np.abs(pixels[..., :3] - ref).max() <= 1, kind
        if kind in ("grayscale", "gray16"):
            assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_odd_modes_made_here():
    rgb = photo(300, 260, seed=1)
    palette = rgb.quantize(colors=32)
    rgba = rgb.copy()
    rgba.putalpha(200)
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257))  # full 16-bit range
    assert grey16.mode == "I;16"
    for im, expect in [(palette, palette.convert("RGB")), (rgba, rgb), (grey16, rgb.convert("L"))]:
        pixels, _ = load(png_bytes(im))
        assert np.abs(pixels[..., :3] - reference(expect)).max() <= 1, im.mode
    # a PNG named .JPEG and a JPEG named .png are decoded by content
    pixels, _ = load(png_bytes(rgb))
    assert np.abs(pixels[..., :3] - reference(rgb)).max() <= 1


def test_damaged_files_raise():
    data = jpeg_bytes(photo(400, 300), quality=90)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    for cut in (0.3, 0.9, 0.999):
        with pytest.raises(BadImage, match="truncated"):
            load(data[: int(len(data) * cut)])
    with pytest.raises(BadImage, match="empty"):
        load(b"")
    with pytest.raises(BadImage, match="not an image"):
        load(b"<html>not an image</html>")
    with pytest.raises(BadImage):
        load(png_bytes(photo(100, 100))[:300])


def test_encoded_jpeg_is_baseline_256_rgb():
    pixels, _ = load(jpeg_bytes(photo(500, 375)))
    data = encode(pixels, 90)
    assert b"\xff\xc0" in data and b"\xff\xc2" not in data  # SOF0 baseline, no SOF2 progressive
    im = Image.open(io.BytesIO(data))
    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (256, 256))
    assert psnr(np.asarray(im), pixels[..., :3].astype(np.float64)) > 30  # q90, 4:2:0, a hard test image


# ----------------------------------------------------------------------------- a whole run

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
    assert lines[1] == {"summary": {"errors": 1, "by_split": {"train": 1, "val": 0}}}
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


def test_resume_after_kill_is_byte_identical(tmp_path):
    src = tmp_path / "src"
    sample_data.generate(src, classes=3, train_per_class=40, val_per_class=0)
    whole = tmp_path / "whole"
    run(src, whole, shard_size=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(out), "--workers", "1",
           "--shard-size", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        # the record is written after the tar: once it is there, shard 0 is complete
        while not (out / ".parts" / "train-000000.npz").exists() and time.time() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (out / "train-000000.tar").exists() and (out / ".parts" / "train-000000.npz").exists()
    assert not (out / "manifest.json").exists(), "the run finished before the kill; nothing was tested"
    # leftovers of other accidents: stray temporaries, a final-named tar without its record
    (out / "train-000040.tar.tmp").write_bytes(b"garbage")
    (out / ".parts" / "train-000041.npz.tmp").write_bytes(b"garbage")
    (out / "train-000050.tar").write_bytes(b"not a finished shard")
    (out / "train-000050.idx").write_bytes(b"v1.2 1\n")
    result = subprocess.run(cmd[:-1], capture_output=True, text=True)  # without -q: the summary
    assert result.returncode == 0, result.stderr
    assert " reused" in result.stdout + result.stderr  # complete shards were kept, not redone
    assert tars(out) == tars(whole)
    assert (out / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()
    assert (out / "errors.jsonl").read_bytes() == (whole / "errors.jsonl").read_bytes()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_when_the_main_process_is_killed(src, tmp_path, sig):
    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(tmp_path / "o"), "--workers", "2",
           "--shard-size", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(_children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        workers = _children(proc.pid)
        assert len(workers) >= 2, "the pool never started; nothing was tested"
        proc.send_signal(sig)
    finally:
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "orphaned workers"


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(src, single, tmp_path):
    """The first run holds OUT/.lock (flock) throughout; here this test process holds it, so the
    outcome does not depend on timing. After kill -9 the kernel drops the lock
    (test_resume_after_kill_is_byte_identical reruns into such an OUT)."""
    from preprocess.outdir import locked

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(out), "--workers", "1",
           "--shard-size", "5", "-q"]
    with locked(str(out)):
        second = subprocess.run(cmd, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"(pid {os.getpid()})" in lines[0] and "another alexnet preprocess" in lines[0]
        assert os.listdir(out) == [".lock"]  # the refused run touched nothing
    assert not (out / ".lock").exists()
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert tars(out) == tars(single) and (out / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    assert not (out / ".lock").exists()


def test_limit_and_max_errors(src, tmp_path):
    summary = run(src, tmp_path / "lim", limit=7, split="train")
    assert summary.samples + summary.errors == 7
    with pytest.raises(TooManyErrors) as e:
        run(src, tmp_path / "max0", max_errors=0, split="train")
    assert e.value.summary.errors == 1 and os.path.exists(tmp_path / "max0" / "errors.jsonl")
    assert run(src, tmp_path / "max1", max_errors=1, split="train").errors == 1


def test_part_parsing():
    assert Part.parse("1/3") == Part(1, 3) and str(Part(1, 3)) == "1/3"
    assert Part(1, 3).owns(4) and not Part(1, 3).owns(3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError):
            Part.parse(bad)


# ----------------------------------------------------------------------------- the CLI

def cli(*args):
    return CliRunner().invoke(alexnet_cli.main, list(map(str, args)))


def one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_cli_bad_invocations_exit_2_and_touch_nothing(src, single, tmp_path):
    assert "no such folder" in one_line_error(cli("preprocess", tmp_path / "missing", tmp_path / "o"))
    (tmp_path / "notimagenet").mkdir()
    assert "no train/" in one_line_error(cli("preprocess", tmp_path / "notimagenet", tmp_path / "o"))
    before = {f: os.path.getmtime(single / f) for f in os.listdir(single)}
    msg = one_line_error(cli("preprocess", src, single, "--quality", "80", "--shard-size", "5"))
    assert "other settings" in msg and "quality" in msg
    msg = one_line_error(cli("preprocess", src, single, "--split", "val", "--seed", "3", "--shard-size", "5"))
    assert "seed" in msg
    assert {f: os.path.getmtime(single / f) for f in os.listdir(single)} == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(cli("preprocess", src, foreign))
    assert os.listdir(foreign) == ["notes.txt"]
    assert "--part" in one_line_error(cli("preprocess", src, tmp_path / "o", "--part", "2/2"))
    assert not (tmp_path / "o").exists()


def test_cli_run_summary_and_max_errors_exit_1(src, tmp_path):
    result = cli("preprocess", src, tmp_path / "a", "--workers", "1", "--shard-size", "8", "--split", "train", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("preprocess: 47 images in 6 shards, 1 errors") and "img/s" in result.stdout
    result = cli("preprocess", src, tmp_path / "b", "--workers", "1", "--split", "train", "--max-errors", "0", "-q")
    assert result.exit_code == 1
    assert "more than --max-errors 0" in result.stderr and "errors.jsonl" in result.stderr
    assert (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.parametrize("stray, files, says", [
    ("n01440764_backup_old", 1, "not a class folder"),   # not a wnid: would become class 1
    ("n09999999", 0, "no image files"),                 # a wnid, but empty: an index with no images
])
def test_stray_or_empty_class_folder_is_refused_not_a_class(src, tmp_path, stray, files, says):
    """A folder in train/ that is not a class must not shift every later class's index."""
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    folder = tree / "train" / stray
    folder.mkdir()
    first = sorted((tree / "train" / sample_data.wnid(0)).iterdir())[0]
    for i in range(files):
        shutil.copy(first, folder / f"copy{i}.JPEG")
    result = cli("preprocess", tree, tmp_path / "o", "--workers", "1", "-q")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and says in lines[0], result.stderr
    assert not (tmp_path / "o").exists()
    # listed in LOC_synset_mapping.txt, a non-wnid folder with images is a class of its own
    if files:
        with open(tree / "LOC_synset_mapping.txt", "a") as f:
            f.write(f"{stray} my own class\n")
        assert stray in scan(str(tree)).wnids


@pytest.mark.parametrize("case, says", [
    ("bom", None),                                        # Excel's UTF-8 BOM: read as usual
    ("semicolon", "expected the header ImageId,PredictionString"),
    ("headerless", "expected the header ImageId,PredictionString"),
    ("empty", "the file is empty"),
    ("latin1", "not UTF-8 text"),
])
def test_validation_csv_variants(src, tmp_path, case, says):
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    csv_path = tree / "LOC_val_solution.csv"
    original = csv_path.read_bytes()
    body = original.split(b"\n", 1)[1]
    csv_path.write_bytes({"bom": b"\xef\xbb\xbf" + original, "semicolon": original.replace(b",", b";"),
                          "headerless": body, "empty": b"",
                          "latin1": b"ImageId,PredictionString\nval_caf\xe9,n01440764 1 2 3 4\n"}[case])
    result = cli("preprocess", tree, tmp_path / "o", "--workers", "1", "-q")
    if says is None:
        assert result.exit_code == 0, result.output
        m = json.load(open(tmp_path / "o" / "manifest.json"))
        assert m["splits"]["val"]["samples"] == CLASSES * VAL_PER_CLASS  # every val image labelled
        return
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(csv_path) in lines[0] and says in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_a_tree_of_only_bad_images_exits_1_without_a_manifest(tmp_path):
    for k, data in enumerate((b"not an image", b"\xff\xd8\xff\xe0 truncated")):
        folder = tmp_path / "src" / "train" / sample_data.wnid(k)
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"x{i}.JPEG").write_bytes(data)
    result = cli("preprocess", tmp_path / "src", tmp_path / "o", "--workers", "1", "-q")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "every image of the train split failed" in lines[0], result.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert len([line for line in open(tmp_path / "o" / "errors.jsonl") if '"path"' in line]) == 6
    result = cli("verify", tmp_path / "o")
    assert result.exit_code != 0 and "all checks passed" not in result.output


def test_a_rerun_with_another_seed_names_the_seed_only(src, single, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(single, out)
    result = cli("preprocess", src, out, "--workers", "1", "--shard-size", "5", "--seed", "7", "-q")
    assert result.exit_code == 2
    assert "(seed 0 vs 7)" in result.stderr and "files of SRC changed" not in result.stderr, result.stderr


def test_cli_sample_data(tmp_path):
    result = cli("sample-data", tmp_path / "s", "--classes", "2", "--train-per-class", "2", "--val-per-class", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("sample-data: 4 train + 2 val images, 2 classes")
    assert "exists" in one_line_error(cli("sample-data", tmp_path / "s", "--classes", "2"))


def test_help_has_examples_and_no_torch_or_dali_import():
    for command in ("preprocess", "merge", "sample-data"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command
    code = ("import sys, alexnet_cli, preprocess.cli, preprocess.run, preprocess.merge; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nvidia')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_progress_line_and_tty_redraw():
    from preprocess.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress(200, stream=stream)
    bar.update(50, 2)
    bar.update(200, 3)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rpreprocess: 50/200 images (25%)") and "img/s" in text and "ETA" in text
    assert "200/200 images (100%)" in text and "errors 3" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a tty: short runs print nothing (the summary line says it all)
    Progress(10, stream=quiet).update(10, 0)
    assert quiet.getvalue() == ""


def test_pixel_sums_exact_past_the_float32_fold():
    """300 near-saturated images: the float32 planes are folded into int64 every 256 images; the
    sums must equal shards.StatSums (int64 all the way) exactly."""
    from preprocess.sums import PixelSums
    from shards import StatSums

    rng = np.random.default_rng(3)
    fast, exact = PixelSums(size=16), StatSums(size=16)
    for i in range(300):
        img = rng.integers(200 if i % 2 else 0, 256, (16, 16, 3), dtype=np.uint8)
        fast.add(img)
        exact.add(img)
    got = fast.stat_sums()
    assert got.images == exact.images == 300
    assert np.array_equal(got.sum, exact.sum) and np.array_equal(got.outer, exact.outer)
    assert np.array_equal(got.pixel_sum, exact.pixel_sum)
