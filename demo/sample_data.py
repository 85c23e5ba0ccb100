"""A small synthetic dataset laid out exactly like ImageNet ILSVRC-2012.

Why: the real ImageNet is 150 GB behind a licence, so tests, demos and CI need a stand-in
that exercises every seam of the system (folder discovery, the odd files, resizing, the
statistics, the shards, the loaders and a model that actually learns) in seconds.

What: each class is one combination of a shape (disc, square, triangle, star, ring, cross,
hexagon, crescent, or a stripes / checkerboard patch), a colour and, past 100 classes, a
fill (solid, speckled, outlined). An image shows one such object at a random position near
the centre (its centre within 20% of the shorter side of the image centre, so that the
centre crop of the shorter side keeps it), scale (30-70% of the shorter side) and rotation,
over a random muted colour gradient with blotchy texture, with a few small distractor shapes
of other colours, random lighting (contrast, brightness, colour cast) and sensor noise.
A small convnet separates the classes well; shape and colour both carry the label, but the
jitter keeps it from being trivial.

Layout written under OUT (the ILSVRC-2012 / Kaggle "LOC" layout)::

    OUT/train/<wnid>/<wnid>_<i>.JPEG
    OUT/val/ILSVRC2012_val_<00000001>.JPEG          flat, classes shuffled
    OUT/LOC_val_solution.csv                        ImageId,PredictionString
    OUT/LOC_synset_mapping.txt                      "<wnid> <name>, <other name>"

Sizes are ImageNet-like: shorter side 200-500 px, aspect 0.6-1.8, each side clamped to
200..800, JPEG quality 75-95.

The odd files real ImageNet holds sit in the train split, counted within train_per_class, at
fixed positions: odd kind j (in the order of ODD_KINDS) replaces image j // classes of class
j % classes. With 7 or more classes that is image 0 of classes 0..6:

    0 cmyk       CMYK JPEG
    1 grayscale  mode "L" JPEG
    2 png        RGB PNG named .JPEG
    3 truncated  a valid JPEG cut to 60% of its bytes (preprocessing must skip and report it)
    4 palette    mode "P" PNG named .JPEG
    5 rgba       RGBA PNG named .JPEG
    6 gray16     16-bit grayscale ("I;16") PNG named .JPEG

Kinds that do not fit (classes * train_per_class < 7) are left out.

Determinism: every image draws from its own stream numpy.random.default_rng([seed, split,
class, index]) and Pillow's encoders are deterministic, so one seed gives byte-identical files
on the same Pillow build.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent",
          "stripes", "checkerboard")
COLOURS = {  # ordered so that neighbouring classes differ strongly in colour
    "red": (215, 40, 40), "blue": (40, 70, 215), "yellow": (235, 215, 45),
    "green": (45, 165, 60), "purple": (135, 50, 185), "white": (240, 240, 240),
    "orange": (245, 135, 25), "cyan": (40, 200, 215), "black": (25, 25, 25),
    "pink": (245, 130, 195),
}
FILLS = ("", "speckled ", "outlined ")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(FILLS)
ODD_KINDS = ("cmyk", "grayscale", "png", "truncated", "palette", "rgba", "gray16")
TRAIN, VAL = 0, 1  # split ids in the random streams
TRUNCATE_FRACTION = 0.6
_COLOUR_LIST = list(COLOURS.values())
_COLOUR_NAMES = list(COLOURS)


# ----------------------------------------------------------------------------- classes

def wnid(k: int) -> str:
    """Fake WordNet id of class k: 8 digits, increasing with k (so sorted = class order)."""
    return f"n{1440764 + 1000 * k:08d}"


def class_spec(k: int) -> tuple[int, int, int]:
    """(shape, colour, fill) indices of class k; distinct for k < MAX_CLASSES."""
    ns, nc = len(SHAPES), len(COLOURS)
    shape, rest = k % ns, k // ns
    return shape, (shape + rest) % nc, k // (ns * nc)


def class_name(k: int) -> str:
    shape, colour, fill = class_spec(k)
    return f"{FILLS[fill]}{_COLOUR_NAMES[colour]} {SHAPES[shape]}"


# ----------------------------------------------------------------------------- drawing

def _image_size(rng) -> tuple[int, int]:
    short = int(rng.integers(200, 501))
    aspect = float(rng.uniform(0.6, 1.8))  # width / height
    if aspect >= 1:
        w, h = round(short * aspect), short
    else:
        w, h = short, round(short / aspect)
    return min(max(w, 200), 800), min(max(h, 200), 800)


def _background(rng, w: int, h: int) -> np.ndarray:
    """Muted two-colour linear gradient plus low-frequency blotches, float32 H×W×3."""
    grey = rng.uniform(60, 200, size=(2, 1))
    c0, c1 = 0.55 * grey + 0.45 * rng.uniform(0, 255, size=(2, 3))
    phi = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(0, np.cos(phi), w, dtype=np.float32)
    ys = np.linspace(0, np.sin(phi), h, dtype=np.float32)
    t = xs[None, :] + ys[:, None]
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    bg = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)
    blotch = rng.uniform(-1, 1, size=(max(h // 40, 2), max(w // 40, 2), 3))
    blotch_img = Image.fromarray(((blotch + 1) * 127.5).astype(np.uint8)).resize(
        (w, h), Image.BILINEAR)
    amp = np.float32(rng.uniform(10, 35) / 127.5)
    bg += (np.asarray(blotch_img, dtype=np.float32) - 127.5) * amp
    return bg


def _polygon(n: int, r: float, cx: float, cy: float, angle: float, radii=None):
    a = angle + np.arange(n) * 2 * np.pi / n
    rr = r if radii is None else r * np.asarray(radii)
    return list(zip((cx + rr * np.cos(a)).tolist(), (cy + rr * np.sin(a)).tolist()))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, angle, fill, bg=0):
    """Draw one shape of 'radius' r centred at (cx, cy); bg paints holes (ring, crescent)."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape in ("square", "stripes", "checkerboard"):
        draw.polygon(_polygon(4, r, cx, cy, angle + np.pi / 4), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r, cx, cy, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(10, r, cx, cy, angle, [1, 0.45] * 5), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, r, cx, cy, angle), fill=fill)
    elif shape == "cross":
        k = 0.38  # half width of the arms, relative to r
        pts = [(k, 1), (k, k), (1, k), (1, -k), (k, -k), (k, -1),
               (-k, -1), (-k, -k), (-1, -k), (-1, k), (-k, k), (-k, 1)]
        c, s = np.cos(angle), np.sin(angle)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts],
                     fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        q = 0.55 * r
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=bg)
    elif shape == "crescent":
        draw.ellipse(box, fill=fill)
        ox, oy = cx + 0.45 * r * np.cos(angle), cy + 0.45 * r * np.sin(angle)
        q = 0.8 * r
        draw.ellipse((ox - q, oy - q, ox + q, oy + q), fill=bg)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _jitter_colour(rng, rgb, spread=14.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, spread, 3), 0, 255)


def _distractors(rng, img: Image.Image, colour_idx: int) -> None:
    """A few small solid shapes of other colours, anywhere in the image."""
    w, h = img.size
    short = min(w, h)
    draw = ImageDraw.Draw(img)
    others = [c for i, c in enumerate(_COLOUR_LIST) if i != colour_idx]
    for _ in range(int(rng.integers(2, 7))):
        shape = SHAPES[int(rng.integers(0, 8))]  # the solid shapes only
        colour = others[int(rng.integers(0, len(others)))]
        fill = tuple(int(v) for v in _jitter_colour(rng, colour, 25))
        r = short * rng.uniform(0.03, 0.07)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        hole = tuple(int(v) for v in rng.uniform(60, 200, 3))
        _draw_shape(draw, shape, cx, cy, r, rng.uniform(0, 2 * np.pi), fill, hole)


def _object_fill(rng, shape: str, fill_mode: int, colour, box, r: float, angle: float):
    """RGB pixels (uint8, box-sized) of the object's surface: shading, texture, speckle."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    c, s = np.cos(angle), np.sin(angle)
    u = ((xs - cx) * c + (ys - cy) * s) / r
    v = (-(xs - cx) * s + (ys - cy) * c) / r
    col = _jitter_colour(rng, colour)
    shade = 1.0 + rng.uniform(0.1, 0.3) * (u * 0.7 + v * 0.7) / 2
    out = shade[..., None] * col
    dark = float(col @ np.array([0.3, 0.59, 0.11], np.float32)) < 100
    if shape == "stripes":
        band = np.floor(u * rng.uniform(2.5, 4.0)) % 2 == 1
        out[band] = out[band] * 0.3 + (150 if dark else 0)
    elif shape == "checkerboard":
        f = rng.uniform(2.0, 3.0)
        band = (np.floor(u * f) + np.floor(v * f)) % 2 == 1
        out[band] = out[band] * 0.45 + 130
    if FILLS[fill_mode] == "speckled ":
        speck = rng.random(u.shape, dtype=np.float32) < 0.25
        out[speck] = out[speck] * 0.35 + (120 if dark else 0)
    return np.clip(out, 0, 255).astype(np.uint8)


def _main_object(rng, img: Image.Image, k: int) -> tuple[int, int, int, int]:
    """Draw class k's object; return its bounding box (x0, y0, x1, y1), inclusive."""
    shape_i, colour_i, fill_i = class_spec(k)
    shape = SHAPES[shape_i]
    w, h = img.size
    short = min(w, h)
    r = short * rng.uniform(0.30, 0.70) / 2
    off = max(0.05 * short, min(0.20 * short, 0.5 * short - r))
    cx = w / 2 + rng.uniform(-off, off)
    cy = h / 2 + rng.uniform(-off, off)
    angle = float(rng.uniform(0, 2 * np.pi))
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    _draw_shape(draw, shape, cx, cy, r, angle, 255, 0)
    if FILLS[fill_i] == "outlined ":
        _draw_shape(draw, shape, cx, cy, 0.6 * r, angle, 0, 255)
    box = mask.getbbox()
    if box is None:  # cannot happen for r >= 30 px; keep the caller total
        return (int(cx), int(cy), int(cx), int(cy))
    pixels = _object_fill(rng, shape, fill_i, _COLOUR_LIST[colour_i], box, r, angle)
    img.paste(Image.fromarray(pixels), box[:2], mask.crop(box))
    return box[0], box[1], box[2] - 1, box[3] - 1


def _lighting(rng, img: Image.Image) -> np.ndarray:
    """Contrast, brightness and colour cast as one lookup table, then sensor noise."""
    contrast = rng.uniform(0.7, 1.3)
    offset = rng.uniform(-30, 30) + rng.normal(0, 8, 3)
    levels = np.arange(256, dtype=np.float32)
    lut = np.concatenate([np.clip((levels - 128) * contrast + 128 + o, 0, 255) for o in offset])
    arr = np.asarray(img.point(lut.astype(np.uint8).tolist()), dtype=np.int16)
    sigma = rng.uniform(2, 8)
    noise = (rng.random(arr.shape, dtype=np.float32) - 0.5) * np.float32(2 * sigma)
    return np.clip(arr + noise.astype(np.int16), 0, 255).astype(np.uint8)


def render(rng, k: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One RGB image of class k and the object's bounding box."""
    w, h = _image_size(rng)
    bg = _background(rng, w, h)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _distractors(rng, img, class_spec(k)[1])
    box = _main_object(rng, img, k)
    return Image.fromarray(_lighting(rng, img)), box


# ----------------------------------------------------------------------------- writing

def _save(img: Image.Image, path: Path, quality: int, kind: str | None) -> None:
    """Write img as a normal RGB JPEG, or as odd file `kind` (see ODD_KINDS)."""
    if kind is None:
        img.save(path, "JPEG", quality=quality)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, "JPEG", quality=quality)
    elif kind == "grayscale":
        img.convert("L").save(path, "JPEG", quality=quality)
    elif kind == "png":
        img.save(path, "PNG")
    elif kind == "truncated":
        img.save(path, "JPEG", quality=quality)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * TRUNCATE_FRACTION)])
    elif kind == "palette":
        img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
                     ).save(path, "PNG")
    elif kind == "rgba":
        alpha = Image.new("L", img.size, 255)
        rgba = img.copy()
        rgba.putalpha(alpha)
        rgba.save(path, "PNG")
    elif kind == "gray16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path, "PNG")  # mode I;16
    else:
        raise ValueError(f"unknown odd file kind {kind!r}")


def odd_positions(classes: int, train_per_class: int) -> dict[str, tuple[int, int]]:
    """Odd kind -> (class, index in class) of the train image it replaces."""
    out = {}
    for j, kind in enumerate(ODD_KINDS):
        k, i = j % classes, j // classes
        if i < train_per_class:
            out[kind] = (k, i)
    return out


def _check_args(out: Path, classes: int, train_per_class: int, val_per_class: int) -> None:
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be in 1..{MAX_CLASSES}, got {classes}")
    if train_per_class < 0 or val_per_class < 0:
        raise ValueError("train_per_class and val_per_class must be >= 0")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output folder {out} exists and is not empty")


def _write_train(tmp: Path, seed, classes, per_class, odd, tick) -> dict[str, str]:
    by_pos = {pos: kind for kind, pos in odd.items()}
    rel = {}
    for k in range(classes if per_class else 0):
        folder = tmp / "train" / wnid(k)
        folder.mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, TRAIN, k, i])
            img, _ = render(rng, k)
            name = f"{wnid(k)}_{i}.JPEG"
            kind = by_pos.get((k, i))
            _save(img, folder / name, int(rng.integers(75, 96)), kind)
            if kind:
                rel[kind] = f"train/{wnid(k)}/{name}"
            tick()
    return rel


def _write_val(tmp: Path, seed, classes, per_class, tick) -> int:
    (tmp / "val").mkdir()
    order = np.random.default_rng([seed, VAL]).permutation(classes * per_class)
    rows = []
    for n, slot in enumerate(order.tolist(), start=1):
        k, i = divmod(slot, per_class)
        rng = np.random.default_rng([seed, VAL, k, i])
        img, (x0, y0, x1, y1) = render(rng, k)
        image_id = f"ILSVRC2012_val_{n:08d}"
        _save(img, tmp / "val" / f"{image_id}.JPEG", int(rng.integers(75, 96)), None)
        rows.append(f"{image_id},{wnid(k)} {x0} {y0} {x1} {y1}\n")
        tick()
    with open(tmp / "LOC_val_solution.csv", "w", newline="") as f:
        f.write("ImageId,PredictionString\n")
        f.writelines(rows)
    return len(rows)


def generate(out_dir, classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
             seed: int = 0, progress=None) -> dict:
    """Write the synthetic dataset to out_dir (which must be absent or empty); see module doc.

    progress, if given, is called as progress(done, total) after each image. The dataset is
    built in a temporary sibling folder and renamed into place only when complete.
    """
    out = Path(out_dir)
    _check_args(out, classes, train_per_class, val_per_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    total = classes * (train_per_class + val_per_class)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        with open(tmp / "LOC_synset_mapping.txt", "w", newline="") as f:
            f.writelines(f"{wnid(k)} {class_name(k)}, synthetic class {k}\n"
                         for k in range(classes))
        odd = odd_positions(classes, train_per_class)
        rel = _write_train(tmp, seed, classes, train_per_class, odd, tick)
        n_val = _write_val(tmp, seed, classes, val_per_class, tick) if val_per_class else 0
        _check_args(out, classes, train_per_class, val_per_class)  # nobody raced us
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "root": str(out),
        "classes": [(wnid(k), class_name(k)) for k in range(classes)],
        "train": classes * train_per_class,
        "val": n_val,
        "odd_files": {kind: rel[kind] for kind in ODD_KINDS if kind in rel},
    }
