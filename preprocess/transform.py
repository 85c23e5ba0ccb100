"""One source file -> one 256×256 RGB image -> one baseline JPEG (docs/DESIGN.md, "Shard directory").

Geometry, exactly: for a w×h source, s = size/min(w, h); the resized image is
W×H = (round(w·s), round(h·s)), at least size each; the crop's top-left corner is
((W−size)//2, (H−size)//2). `round` is Python's (half to even).

Speed (one core, ImageNet-like photos): instead of resizing the whole image and cropping,
  1. JPEGs (YCbCr, grayscale, RGB) are decoded by libjpeg-turbo (simplejpeg) with DCT-domain
     scaling by M/8 to the smallest size that still covers W×H, so a large photo is never
     materialised at full resolution (measured: 2.1 ms full decode -> 1.3-2.0 ms);
  2. only the part of the (scaled) source that maps onto the crop is resampled, in one call:
     with the default bilinear filter and a remaining reduction f < 1.5 (decoded px per output
     px; DCT scaling leaves nearly every photo there) by OpenCV's SIMD `cv2.resize` with the
     exact factors W/(w·scale), H/(h·scale) (~0.16 ms per image); otherwise (bicubic, upscaling,
     f ≥ 1.5) by Pillow's antialiased filter, whose support widens with the reduction,
     `Image.resize(size, box=...)` (~1.0 ms bilinear, ~1.5 ms bicubic). Either equals the crop of
     the full resize by the same filter (bit-exact when nothing was DCT-scaled);
  3. the decoded buffer is handed over without a copy (RGBX) and the result is encoded by
     libjpeg-turbo (simplejpeg), baseline, 4:2:0 chroma like Pillow's default.
OpenCV's bilinear kernel is not widened for downscaling (no antialiasing); at f < 1.5 that
measured no loss: against a bicubic (antialiased) reference, after q90 JPEG encoding, 35.60 dB
against 35.47 dB for Pillow's bilinear on 600 generated photos (scripts/bench_preprocess.py).
Only synthetic stripes near the Nyquist frequency alias (after q90: −0.2 dB at f < 1.33, −1.5 dB
at 1.33 ≤ f < 1.5). Bicubic (--filter bicubic, 36.0 dB) stays Pillow's: OpenCV's (a = −0.75,
not antialiased) gave 0.2 dB less.
The box is always computed from the ORIGINAL w, h, so decoding at a reduced scale never changes
the geometry. Everything else (PNG named .JPEG, CMYK/YCCK JPEG, palette, RGBA, 16-bit, files
libjpeg-turbo only warns about) goes through Pillow at full resolution, decoded by content.

Damaged files raise `BadImage`; truncated data is never padded: simplejpeg runs in strict mode
(a premature end of data is an error) and Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` stays False.

libjpeg's warnings ("Corrupt JPEG data: ...", "Premature end of JPEG file") are judged here,
never ignored (Pillow would ignore them and decode the lost part as grey). libjpeg-turbo in
strict mode stops at the first one and says it (a CMYK/YCCK JPEG, which Pillow decodes, is
checked the same way at 1/8 scale first). Measured on generated photos, baseline and
progressive (tests/test_transform.py keeps one case of each):
  * "N extraneous bytes before marker 0xXX": bytes the decoder skips, between segments or after
    a scan's compressed data. Bytes added there decode pixel-identically (1-50 random bytes
    before a random header segment: 100/100; 1-300 before EOI: 100/100). But random damage
    inside the compressed data gives the same warning in 10% (baseline) to 13% (progressive)
    of 300 trials each, with pixels changed in every one: the decoder loses sync, finishes
    early and skips the rest (libjpeg-turbo's fast Huffman path does not warn of bad codes).
    The warning cannot tell the two apart; such a file is kept and listed
    (`Decoded.warnings`) by default, skipped with `strict`. Junk between the header's
    segments is removed and the rest checked again, so that damage later in the file is not
    hidden behind it; after a scan there is nothing to remove, and a progressive JPEG's later
    scans are then decoded without that check.
  * every other warning (premature end of data segment, bad Huffman code, premature end of
    file, a marker instead of RST, ...): the decoder fills what it lost with grey (pixels
    changed in every measured case): the file is skipped (BadImage with libjpeg's message).
"""
import io
import math
import re
import warnings
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageFile

from shards.format import IMAGE_SIZE

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}  # antialiased
DEFAULT_FILTER = "bilinear"
# OpenCV's SIMD bilinear (not antialiased) stands in for Pillow's for reductions by f < 1/_CV_MIN_FACTOR
# = 1.5 decoded px per output px (see _resize_cv). Not for bicubic: OpenCV's (a = −0.75, Pillow's
# −0.5, not antialiased) loses 0.2 dB against the bicubic reference; bicubic stays Pillow's.
_CV_INTERPOLATION = {Image.Resampling.BILINEAR: cv2.INTER_LINEAR}
_CV_MIN_FACTOR = 2 / 3
CHROMA_SUBSAMPLING = "420"
_FAST_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what libjpeg-turbo converts to RGB itself
_JPEG_SOI = b"\xff\xd8\xff"
# libjpeg's warnings (jerror.h, JWRN_*): the decoder goes on after them; anything else it raises is an error
_LIBJPEG_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file", "Warning: unknown JFIF revision",
                     "Unknown Adobe color transform", "Inconsistent progression sequence",
                     "Invalid SOS parameters", "Application transferred too many scanlines")
_EXTRANEOUS = re.compile(r"Corrupt JPEG data: \d+ extraneous bytes before marker 0x[0-9a-f]{2}$")
_SOS = 0xDA


class BadImage(ValueError):
    """A source file that cannot be turned into an image; the message is the reason."""


class Decoded(NamedTuple):
    """A decoded source: the size×size×4 RGBX crop, the source's (w, h), libjpeg's warnings
    about a JPEG that was used all the same (extraneous bytes; see the module's docstring), and
    notes on what was done as documented but may surprise (`notes_for`)."""

    pixels: np.ndarray
    size: Tuple[int, int]
    warnings: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()


# Documented behaviour that is listed (errors.jsonl, "note": true) without skipping the file:
# an animated image keeps its first frame, and a source whose shorter side is below NOTE_BELOW px
# is upscaled by more than 8 times. EXIF orientation is not applied (as PIL's and torchvision's
# loaders do not) and is not listed: most photos carry the tag.
NOTE_BELOW = 32


def notes_for(w: int, h: int, frames: int = 1, size: int = IMAGE_SIZE) -> Tuple[str, ...]:
    """The notes on a w×h source of `frames` frames."""
    notes = []
    if frames > 1:
        notes.append(f"animated ({frames} frames): the first frame is used")
    if min(w, h) < NOTE_BELOW:
        notes.append(f"{w}x{h}: the shorter side is below {NOTE_BELOW} px; upscaled {size / min(w, h):.0f} times")
    return tuple(notes)


class _NotFast(Exception):
    """A JPEG libjpeg-turbo does not turn into RGB itself (CMYK, YCCK): Pillow's."""


class Geometry(NamedTuple):
    """The resize of a source (W×H) and the corner of the centre crop in it."""

    width: int  # W: the whole resized image
    height: int  # H
    left: int  # crop corner in the resized image
    top: int


def geometry(w: int, h: int, size: int = IMAGE_SIZE) -> Geometry:
    """The exact resize and crop of a w×h source (docs/DESIGN.md, "Shard directory")."""
    s = size / min(w, h)
    W, H = max(size, round(w * s)), max(size, round(h * s))
    return Geometry(W, H, (W - size) // 2, (H - size) // 2)


def crop_box(w: int, h: int, size: int = IMAGE_SIZE, scale: float = 1.0, limit=None):
    """The box of the source (in pixels of the source decoded at `scale`) that maps onto the crop.

    `limit` (width, height of the decoded source) clips float rounding at the far edges.
    """
    g = geometry(w, h, size)
    fx, fy = scale * w / g.width, scale * h / g.height
    x1, y1 = (g.left + size) * fx, (g.top + size) * fy
    if limit is not None:
        x1, y1 = min(x1, limit[0]), min(y1, limit[1])
    return (g.left * fx, g.top * fy, x1, y1)


def load(data: bytes, size: int = IMAGE_SIZE, resize_filter: str = DEFAULT_FILTER):
    """Decode `data` (any format, by content) to the size×size crop, resampled by `resize_filter`.

    Returns (pixels, (w, h)): pixels is uint8 size×size×4 RGBX (channel 3 is padding; the image
    is `pixels[..., :3]`), (w, h) the source size. Raises BadImage. (`decode` also says
    libjpeg's warnings about a file it kept.)
    """
    return decode(data, size, resize_filter)[:2]


def decode(data: bytes, size: int = IMAGE_SIZE, resize_filter: str = DEFAULT_FILTER, strict: bool = False) -> Decoded:
    """`load`, with libjpeg's warnings judged (module docstring): a JPEG whose only warnings are
    extraneous bytes is decoded and its warnings returned, unless `strict`; any other warning
    (and, with `strict`, any warning at all) raises BadImage with libjpeg's message."""
    if not data:
        raise BadImage("empty file")
    resample = FILTERS[resize_filter]
    if not data.startswith(_JPEG_SOI):
        return _pil(data, size, resample)
    said, lenient = [], False  # libjpeg's warnings so far; whether the decoder may go past them
    for _ in range(4):  # at most: junk in the header, then junk after the data, then the decode
        try:
            pixels, (w, h) = _load_jpeg(data, size, resample, strict=not lenient)
            return Decoded(pixels, (w, h), tuple(said), notes_for(w, h, size=size))
        except _NotFast:  # CMYK/YCCK: Pillow's, once libjpeg-turbo has checked the data
            message = None if lenient else _first_warning(data)
        except ValueError as e:
            message = None if lenient else str(e)
        if message is None or not message.startswith(_LIBJPEG_WARNINGS):  # none, or an error: Pillow judges
            return _pil(data, size, resample, said)
        said.append(message)
        if not _EXTRANEOUS.match(message):
            reason = "; ".join(said)
            raise BadImage(f"truncated ({reason})" if message.startswith("Premature end of JPEG file") else reason)
        if strict:
            raise BadImage(f"{'; '.join(said)} (skipped: --strict)")
        cleaned = _without_header_junk(data)
        if cleaned is None:  # junk after a scan: nothing to remove; the decoder goes on past it
            lenient = True
        else:
            data = cleaned
    raise BadImage("; ".join(said))


def _pil(data: bytes, size: int, resample, said=()) -> Decoded:
    pixels, (w, h), frames = _load_pil(data, size, resample)
    return Decoded(pixels, (w, h), tuple(said), notes_for(w, h, frames, size))


def _first_warning(data: bytes) -> Optional[str]:
    """libjpeg-turbo's first warning or error about `data` (decoded at 1/8 scale), or None."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="CMYK", min_height=1, min_width=1)
    except ValueError as e:
        return str(e)
    return None


def _without_header_junk(data: bytes) -> Optional[bytes]:
    """`data` without the bytes between its header's segments that start no marker (libjpeg
    skips them with an "extraneous bytes" warning), or None when there are none before the
    first scan (or the header does not parse, which the decoder will say)."""
    parts, i, n, junk = [data[:2]], 2, len(data), False
    while True:
        j = data.find(b"\xff", i)
        if j < 0:
            return None
        k = j
        while k + 1 < n and data[k + 1] == 0xFF:  # fill bytes
            k += 1
        if k + 3 >= n:
            return None
        marker = data[k + 1]
        if marker == 0 or 0xD0 <= marker <= 0xD9 or marker == 0x01:  # no segment starts here
            junk, i = True, k + 2
            continue
        junk = junk or j > i
        end = k + 2 + int.from_bytes(data[k + 2:k + 4], "big")
        parts.append(data[k:end])
        i = end
        if marker == _SOS:
            return b"".join(parts) + data[i:] if junk else None


def _load_jpeg(data: bytes, size: int, resample, strict: bool = True):
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace not in _FAST_COLORSPACES:
        raise _NotFast(colorspace)
    g = geometry(w, h, size)
    # smallest M/8 scale whose output still covers W×H (no upscaling: M <= 8)
    rgbx = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_height=g.height, min_width=g.width, strict=strict)
    dh, dw = rgbx.shape[:2]
    m = max(1, min(8, round(8 * dw / w)))
    scale = m / 8 if (-(-w * m // 8), -(-h * m // 8)) == (dw, dh) else dw / w
    out = _resize_cv(rgbx, w, h, g, scale, size, resample)
    if out is None:
        im = Image.frombuffer("RGBX", (dw, dh), rgbx, "raw", "RGBX", 0, 1)  # shares rgbx's memory
        out = np.asarray(im.resize((size, size), resample, box=crop_box(w, h, size, scale, (dw, dh))))
    return out, (w, h)


def _resize_cv(rgbx, w: int, h: int, g: Geometry, scale: float, size: int, resample):
    """The crop by OpenCV's SIMD bilinear resize, or None where Pillow must do it.

    `cv2.resize(src, None, fx=, fy=)` uses the given factors exactly (with a `dsize` it would
    use dsize/ssize), mapping output x to source (x + 0.5)/fx − 0.5, so resizing the decoded
    image from its top-left corner with fx = W/(w·scale) and cutting out the crop is the crop
    of the full resize to W×H; only the part up to the crop's far corner (+3 px) is resized.
    Its 2-tap kernel is not widened for downscaling, so reductions by f ≥ 1.5 decoded px per
    output px go to Pillow, as do upscaling (f < 1: W×H just above the DCT-scaled size) and
    sizes that OpenCV would treat as a plain copy (ignoring a sub-pixel scale).
    """
    interpolation = _CV_INTERPOLATION.get(resample)
    fx, fy = g.width / (w * scale), g.height / (h * scale)  # output px per decoded px
    if interpolation is None or not (_CV_MIN_FACTOR < fx <= 1 and _CV_MIN_FACTOR < fy <= 1):
        return None
    x1 = min(rgbx.shape[1], math.ceil((g.left + size) / fx) + 3)
    y1 = min(rgbx.shape[0], math.ceil((g.top + size) / fy) + 3)
    if abs(x1 * fx - x1) < 1 and abs(y1 * fy - y1) < 1 and (fx, fy) != (1, 1):
        return None  # OpenCV would copy instead of shifting by a fraction of a pixel
    out = cv2.resize(rgbx[:y1, :x1], None, fx=fx, fy=fy, interpolation=interpolation)
    # contiguous: the encoder and the statistics read it at memory speed (a strided view costs more)
    return np.ascontiguousarray(out[g.top:g.top + size, g.left:g.left + size])


def _load_pil(data: bytes, size: int, resample):
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by someone else in this process: it would pad silently
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated images must not be padded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency, EXIF and similar chatter
            im = Image.open(io.BytesIO(data))
            frames = getattr(im, "n_frames", 1)  # before load(): which then holds the first frame
            im.load()
            w, h = im.size
            rgb = to_rgb(im)
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(_reason(e)) from None
    if min(w, h) < 1:
        raise BadImage(f"empty image {w}x{h}")
    out = rgb.resize((size, size), resample, box=crop_box(w, h, size))
    return np.asarray(out.convert("RGBX")), (w, h), frames


def _reason(e: Exception) -> str:
    msg = str(e)
    if "cannot identify image file" in msg:
        return "not an image (unknown format)"
    if "truncated" in msg or isinstance(e, EOFError):
        return f"truncated ({msg})" if msg else "truncated"
    return msg or type(e).__name__


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB of any Pillow mode: 16-bit grey (I;16*, and I, as Pillow opens 16-bit PNGs) scaled to
    8 bits rather than clipped, alpha dropped (as the usual `convert("RGB")` loaders do),
    palette, CMYK and YCbCr converted by Pillow."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        grey = np.clip((a * 255 + 32767) // 65535, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def encode(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline (non-progressive) JPEG of an RGBX or RGB uint8 image, 4:2:0 chroma."""
    colorspace = "RGBX" if pixels.shape[2] == 4 else "RGB"
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality, colorspace, CHROMA_SUBSAMPLING)
