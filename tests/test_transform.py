"""preprocess/transform.py: decoding by content, the exact geometry, damaged files, the encoder.

Every result is compared with a direct reference (Pillow's full resize, then the crop).
"""
import io
import math

import numpy as np
import pytest
from PIL import Image, ImageFile

from demo import sample_data
from preprocess.transform import BadImage, decode, encode, geometry, load
from samplekit import CLASSES, TRAIN_PER_CLASS, src  # noqa: F401 (src: a fixture)

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def reference(im: Image.Image, resize_filter="bilinear"):
    """The obviously-correct transform: full resize to the exact W×H, then the centre crop,
    both from docs/DESIGN.md's definition (not from the module's `geometry`)."""
    w, h = im.size
    s = 256 / min(w, h)
    W, H = max(256, round(w * s)), max(256, round(h * s))
    left, top = math.floor((W - 256) / 2), math.floor((H - 256) / 2)  # the centre, rounded down
    big = im.convert("RGB").resize((W, H), FILTERS[resize_filter])
    return np.asarray(big.crop((left, top, left + 256, top + 256)), np.float64)


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


@pytest.mark.parametrize("size,teeth_db", [
    ((1600, 1800), 6.0),  # short side 1600: decoded at 2/8 -> 400 px, a reduction of 1.56
    ((2047, 1536), 6.0),  # short side 1536: 2/8 -> 384 px, exactly 1.5
    ((3100, 3080), 2.0),  # short side 3080: 1/8 -> 385 px, 1.50 (the 8-px board averages out here)
])
def test_reductions_of_1_5_or_more_after_dct_scaling(size, teeth_db):
    """Short sides 1,536-2,047 and >= 3,072 px: after the DCT-scaled decode the remaining
    reduction is >= 1.5 decoded px per output px (Pillow's antialiased box resample, not
    OpenCV's 2-tap kernel), against Pillow's full-resolution resize and crop."""
    short = min(size)
    m = next(m for m in range(1, 9) if math.ceil(short * m / 8) >= 256)  # libjpeg-turbo's M/8
    assert math.ceil(short * m / 8) / 256 >= 1.5
    im = photo(*size)
    data = jpeg_bytes(im, quality=95)
    pixels, got_size = load(data)
    assert got_size == size
    ref = reference(Image.open(io.BytesIO(data)))
    assert psnr(pixels, ref) > 38  # measured 41.9, 42.3, 52.6 dB; OpenCV's kernel here: 28-30 dB
    assert psnr(pixels[:, 1:], ref[:, :-1]) < psnr(pixels, ref) - teeth_db


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


def test_16_bit_grey_is_rounded_to_8_bits():
    """16-bit values that are not an 8-bit value x 257: v -> round(v / 257) (255 / 65535 = 1 / 257;
    never a half, 257 being odd), not the truncation v >> 8. Checked at 256x256 (no resampling,
    so exact) and, through the resize, as the mean over a larger image."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 65536, (256, 256), dtype=np.uint16)
    a[0, :6] = (0, 128, 129, 385, 65407, 65535)  # -> 0, 0, 1, 1, 255, 255 (v >> 8: 0, 0, 0, 1, 255, 255)
    want = np.rint(a / 257.0).astype(np.uint8)
    assert want[0, :6].tolist() == [0, 0, 1, 1, 255, 255]
    assert np.mean(want != (a >> 8)) > 0.2  # the test has teeth: truncation differs in a quarter of the pixels
    pixels, size = load(png_bytes(Image.fromarray(a)))
    assert size == (256, 256)
    for c in range(3):
        assert np.array_equal(pixels[..., c], want), c
    big = rng.integers(0, 65536, (300, 420), dtype=np.uint16)
    pixels, _ = load(png_bytes(Image.fromarray(big)))
    ref = reference(Image.fromarray(np.rint(big / 257.0).astype(np.uint8)))
    assert np.abs(pixels[..., :3] - ref).max() <= 1
    assert abs(np.mean(pixels[..., :3] - ref)) < 0.05  # truncation is ~0.25 lower on average


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
    # 4:2:0 chroma, as Pillow's default: Y sampled 2x2, Cb and Cr 1x1 (the frame header's factors)
    assert [(h, v) for _, h, v, _ in im.layer] == [(2, 2), (1, 1), (1, 1)]
    assert psnr(np.asarray(im), pixels[..., :3].astype(np.float64)) > 30  # q90, 4:2:0, a hard test image


def test_libjpeg_warnings_are_judged_never_ignored():
    """Each damaged copy (tests/samplekit.py) is listed with libjpeg's message: extraneous bytes
    are kept (pixel-identical where the bytes were only added), any other warning is skipped;
    `strict` skips them all. The desync copy is the case the module's docstring measures:
    damage that libjpeg reports only as extraneous bytes (kept by default, its pixels differ)."""
    from samplekit import damaged_jpegs

    for progressive in (False, True):
        good = jpeg_bytes(photo(400, 300), quality=90, progressive=progressive)
        ref = decode(good)
        assert ref.warnings == () and np.array_equal(ref.pixels, load(good)[0])
        bad = damaged_jpegs(good)
        for name in ("header junk", "tail junk"):
            got = decode(bad[name])
            assert len(got.warnings) == 1 and "extraneous bytes before marker" in got.warnings[0], name
            assert np.array_equal(got.pixels, ref.pixels), name  # the bytes were only added
            with pytest.raises(BadImage, match=r"extraneous bytes .*\(skipped: --strict\)"):
                decode(bad[name], strict=True)
        assert decode(bad["header junk"]).warnings == ("Corrupt JPEG data: 3 extraneous bytes before marker 0xdb",)
        for name, says in (("truncated", r"^truncated \(Premature end of JPEG file\)$"),
                           ("marker", r"^Corrupt JPEG data: premature end of data segment$")):
            for strict in (False, True):
                with pytest.raises(BadImage, match=says):
                    decode(bad[name], strict=strict)
    desync = damaged_jpegs(jpeg_bytes(photo(400, 300), quality=90))["desync"]
    got = decode(desync)
    assert got.warnings == ("Corrupt JPEG data: 62 extraneous bytes before marker 0xd9",)
    assert not np.array_equal(got.pixels, decode(jpeg_bytes(photo(400, 300), quality=90)).pixels)
    with pytest.raises(BadImage, match="62 extraneous"):
        decode(desync, strict=True)


def test_junk_in_the_header_does_not_hide_damage_behind_it():
    """The header's junk is removed and the rest checked again: a broken scan after it is found."""
    from samplekit import damaged_jpegs

    bad = damaged_jpegs(jpeg_bytes(photo(400, 300), quality=90))["marker"]
    dqt = bad.index(b"\xff\xdb")
    with pytest.raises(BadImage, match="0xdb; Corrupt JPEG data: premature end of data segment$"):
        decode(bad[:dqt] + b"\x07\x08" + bad[dqt:])


def test_cmyk_jpegs_are_checked_too():
    """Pillow decodes CMYK (and would ignore libjpeg's warnings); libjpeg-turbo checks it first."""
    from samplekit import damaged_jpegs

    good = jpeg_bytes(photo(300, 200).convert("CMYK"), quality=90)
    bad = damaged_jpegs(good)
    assert np.array_equal(decode(bad["header junk"]).pixels, decode(good).pixels)
    assert decode(bad["tail junk"]).warnings and np.array_equal(decode(bad["tail junk"]).pixels, decode(good).pixels)
    with pytest.raises(BadImage, match="premature end of data segment"):
        decode(bad["marker"])
    with pytest.raises(BadImage, match="Premature end of JPEG file"):
        decode(bad["truncated"])
