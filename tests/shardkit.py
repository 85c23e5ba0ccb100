"""Tiny shard directories for tests and benchmarks, built with `shards` alone (no `preprocess`).

`make_shards(dir, n_train, n_val, classes, shard_size, seed)` writes a complete shard directory
(docs/DESIGN.md, "Shard directory"): 256×256 quality-90 JPEG samples in tars with DALI indexes,
finished by `shards.finish_shard_dir` like any other (`mean_image.npy`, `pixel_sum.npy`,
`errors.jsonl` and a manifest whose statistics come from `shards.StatSums` over the training
images as written, before JPEG encoding, exactly as `preprocess` computes them).

Image kinds:
  "smooth"    low-frequency random colour fields plus mild noise (natural-image-like, so JPEG
              decoders agree to a level or two);
  "gradient"  R = x, G = y (pixel coordinates, 0..255), B = a per-sample constant: the crop
              offset and mirroring of any 224×224 view can be read back from its pixels.
Sample i of a split has label `i % classes`; with `classes >= n` every label names its sample.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shards import (IMAGE_SIZE, SPLITS, TRAIN, ClassInfo, Manifest, ShardWriter, StatSums, finish_shard_dir,
                    sample_key, shard_stem)

SIZE = IMAGE_SIZE


def make_image(rng: np.random.Generator, kind: str = "smooth") -> np.ndarray:
    """One 256×256×3 uint8 image."""
    if kind == "gradient":
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        b = np.full((SIZE, SIZE), rng.integers(0, 256))
        return np.stack([x, y, b], axis=-1).astype(np.uint8)
    if kind != "smooth":
        raise ValueError(f"unknown image kind {kind!r}")
    coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    field = np.asarray(coarse.resize((SIZE, SIZE), Image.BICUBIC), np.int16)
    noise = rng.integers(-8, 9, size=(SIZE, SIZE, 3), dtype=np.int16)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_shard(directory, split, k, first, stop, classes, kind, quality, rng):
    """(ShardInfo, StatSums of its training images) of shard `k` of `split`: samples [first, stop),
    drawn from `rng` (a Generator, or a seed for one)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sums = StatSums()
    with ShardWriter(directory, shard_stem(split, k)) as w:
        for i in range(first, stop):
            image = make_image(rng, kind)
            if split == TRAIN:
                sums.add(image)
            label = i % classes
            meta = {"src": f"{split}/{i}.JPEG", "wnid": f"n{label:08d}", "size": [SIZE, SIZE]}
            w.write(sample_key(split, i), encode_jpeg(image, quality), label, meta)
    return w.info, sums


def make_shards(
    directory,
    n_train: int = 48,
    n_val: int = 20,
    classes: int = 10,
    shard_size: int = 16,
    seed: int = 0,
    kind: str = "smooth",
    quality: int = 90,
    workers: int | None = None,
) -> Manifest:
    """Write a shard directory under `directory` and return its (saved) Manifest.

    `workers=None` draws every image from one generator seeded by `seed`, in order. `workers=N`
    writes the shards in N processes, each shard's images drawn from a generator seeded by
    (seed, split, shard): the same directory for every N (benchmarks: ~370 images/s a core)."""
    rng = np.random.default_rng(seed)
    sums = StatSums()
    splits = {}
    for s, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
        if n <= 0:
            continue
        jobs = [(directory, split, k, first, min(n, first + shard_size), classes, kind, quality,
                 rng if workers is None else [seed, s, k]) for k, first in enumerate(range(0, n, shard_size))]
        if workers is None:
            done = [_write_shard(*job) for job in jobs]
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                done = pool.starmap(_write_shard, jobs)
        for _, shard_sums in done:
            sums.merge(shard_sums)
        splits[split] = [info for info, _ in done]
    return finish_shard_dir(
        directory,
        classes=[ClassInfo(index=c, wnid=f"n{c:08d}", name=f"class {c}") for c in range(classes)],
        params={"size": SIZE, "quality": quality, "seed": seed, "source": "tests/shardkit"},
        splits=splits,
        sums=sums,
        image_size=SIZE,
    )


def overwrite(path, offset: int = 2000, length: int = 1) -> None:
    """Damage a file in place, its size intact: `length` bytes from `offset` inverted (a tar
    that passes every size check and fails its sha256)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
