"""The reference loader: stock `webdataset` + PIL + numpy + `torch.utils.data.DataLoader`.

The correctness oracle in tests and the peer in benchmarks; never the fast path. It does the
same work as the DALI loader (`pipeline.dali_loader`), written directly from the formulas of
docs/DESIGN.md, "Loader" with numpy on the CPU, and yields float32 N×3×224×224 (N×10×3×224×224
with ten_crop) CPU tensors and int64 labels.

Sample order and draws: the rank's slice, epoch length and shard order come from the same
`pipeline.plan` as the DALI loader, and draw i (`pipeline.draws.epoch_draws(seed, rank, epoch)`,
or explicit `draws`) goes to the i-th image of the rank's stream. Without shuffling, and with at
most one worker, the stream is the slice in shard order, exactly as DALI reads it, so both
loaders produce the same images pixel for pixel (up to JPEG decoder rounding). Shuffled training
uses a seeded buffer shuffle of its own (DALI's shuffle cannot be replayed): the same kind of
stream, not the same order.

Workers: the epoch's batches are cut into `num_workers` contiguous runs, one per worker, and
each worker reads only the shards its run covers (as a stock webdataset setup splits shards
over workers), so a batch holds the same images whatever the worker count; the DataLoader
interleaves the workers' batches, so with two or more workers the batch order differs.

An s3:// shard directory is read through the local shard cache (`pipeline.cache`), as the DALI
loader reads it: each epoch first downloads and verifies the tars of this rank's slice
(`epoch_slice`), reads their local copies, and releases them to eviction when the epoch's
iteration ends.
"""
from __future__ import annotations

import io
import itertools
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.draws import CROP, TEN_CROP_VIEWS, Draws, epoch_draws
from pipeline.normalise import Normalisation, load_normalisation
from pipeline.plan import EpochLoader, LoaderSpec, loader_spec, open_split


def transform(image: np.ndarray, x0: int, y0: int, mirror: int, alpha: np.ndarray, norm: Normalisation,
              mean: str, ten_crop: bool) -> np.ndarray:
    """One decoded uint8 256×256×3 image → float32 3×224×224 (10×3×224×224 with ten_crop)."""
    offset = norm.offset(alpha)  # [0,1] units, one RGB triple
    views = TEN_CROP_VIEWS if ten_crop else ((x0, y0, mirror),)
    out = []
    for x, y, m in views:  # float32 throughout, as a practical CPU loader would compute
        crop = image[y:y + CROP, x:x + CROP].astype(np.float32)
        if mean == "image":  # Section 2's mean image, cropped with the sample
            v = crop - norm.mean_image[y:y + CROP, x:x + CROP] + (255.0 * offset).astype(np.float32)
        else:
            v = (crop / np.float32(255) + (offset - norm.channel_mean / 255.0).astype(np.float32)) / (
                norm.channel_std / 255.0).astype(np.float32)
        if m:
            v = v[:, ::-1]
        out.append(np.ascontiguousarray(v.transpose(2, 0, 1)))
    return np.stack(out) if ten_crop else out[0]


def decode(jpeg: bytes) -> np.ndarray:
    """A JPEG's pixels, uint8 H×W×3 RGB, through PIL."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


@dataclass
class _Epoch(IterableDataset):
    """One epoch of one rank; each DataLoader worker yields its run of whole batches."""

    tars: list  # local paths, in the epoch's shard order: every shard, or (s3://, cached) the slice's only
    counts: list  # samples per tar, in the same order
    spec: LoaderSpec
    norm: Normalisation
    epoch: int
    draws: Draws
    shuffle_buffer: int
    samples: int  # of the split (the plan's n)
    first: int = 0  # the epoch's stream position of tars[0]'s first sample

    def _read(self, a: int, b: int):
        """Samples [a, b) of the split in the epoch's shard order, through the stock webdataset reader."""
        import webdataset as wds

        if b <= a:
            return iter(())
        a, b = a - self.first, b - self.first  # positions in self.tars' stream
        if a < 0 or b > sum(self.counts):
            raise IndexError(f"samples [{a + self.first}, {b + self.first}) of epoch {self.epoch}: outside the "
                             f"tars this epoch was given (from {self.first}, {sum(self.counts)} samples)")
        ends = list(itertools.accumulate(self.counts))
        first, last = bisect_right(ends, a), bisect_right(ends, b - 1)
        skip = a - (ends[first - 1] if first else 0)
        tars = self.tars[first:last + 1]
        ds = wds.WebDataset(tars, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
        return itertools.islice(ds, skip, skip + (b - a))

    def _shuffled(self, samples, worker):
        rng = np.random.default_rng([self.spec.seed, self.spec.rank, self.epoch, 2, worker])
        buf = []
        for s in samples:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(int(rng.integers(len(buf))))
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))

    def _stream(self, plan, b0: int, b1: int, worker: int):
        """The samples at stream positions [b0·B, b1·B) (batches [b0, b1) of the rank's epoch)."""
        B = self.spec.batch_size
        p0, p1 = b0 * B, min(b1 * B, plan.samples)
        if not self.spec.shuffle:
            return self._read(plan.start + p0, plan.start + p1)
        # this worker's share of the slice, shuffled, cut to its positions
        length = plan.stop - plan.start
        a, b = plan.start + length * b0 // plan.batches, plan.start + length * b1 // plan.batches
        return itertools.islice(self._shuffled(self._read(a, b), worker), p1 - p0)

    def __iter__(self):
        o, B = self.spec, self.spec.batch_size
        plan = o.plan(self.samples, self.epoch)
        info = get_worker_info()
        w, k = (info.id, info.num_workers) if info else (0, 1)
        b0, b1 = plan.batches * w // k, plan.batches * (w + 1) // k
        if min(b1 * B, plan.samples) <= b0 * B:
            return
        batch, d = [], self.draws
        for p, sample in enumerate(self._stream(plan, b0, b1, w), start=b0 * B):
            image = transform(decode(sample["jpg"]), int(d.x0[p]), int(d.y0[p]), int(d.mirror[p]), d.alpha[p],
                              self.norm, o.mean, o.ten_crop)
            batch.append((image, int(sample["cls"])))
            if len(batch) == B:
                yield self._collate(batch)
                batch = []
        if batch:
            yield self._collate(batch)

    @staticmethod
    def _collate(batch):
        images = torch.from_numpy(np.stack([im for im, _ in batch]))
        return images, torch.tensor([label for _, label in batch], dtype=torch.int64)


@dataclass
class ReferenceLoader(EpochLoader):
    """Iterable of (images, labels) CPU tensors, one epoch per iteration, like DaliLoader."""

    spec: LoaderSpec
    tars: list = field(repr=False)  # in shard order (s3:// URLs, never opened: the cache's copies are read)
    counts: list = field(repr=False)  # samples per tar
    norm: Normalisation = field(repr=False)
    num_workers: int = 2
    draws: Optional[Union[Draws, Callable[[int], Draws]]] = None
    shuffle_buffer: int = 4096
    epoch: int = 0
    shards: list = field(default=None, repr=False)  # shards.manifest.ShardInfo, in shard order
    cache: object = field(default=None, repr=False)  # pipeline.cache.ShardCache of an s3:// directory

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def epoch_draws(self, epoch: int) -> Draws:
        """The draws of `epoch`: the explicit ones if given, else `epoch_draws(seed, rank, epoch, …)`."""
        if isinstance(self.draws, Draws):
            return self.draws
        if callable(self.draws):
            return self.draws(epoch)
        o = self.spec
        return epoch_draws(o.seed, o.rank, epoch, max(1, self.plan(epoch).samples), o.augment, o.lighting)

    @property
    def split_shards(self):
        return self.shards

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        batches = None
        try:
            if self.cache is None:
                shards = self.spec.in_epoch_order(list(zip(self.tars, self.counts)), epoch)
                tars, counts, first = [t for t, _ in shards], [c for _, c in shards], 0
            else:  # s3://: the slice's tars, downloaded and verified, held under `epoch` until the end
                piece = self.epoch_slice(epoch)
                tars, _ = self.fetch_slice(epoch)
                counts, first = [s.samples for s in piece.shards], self.plan(epoch).start - piece.skip
            dataset = _Epoch(tars, counts, self.spec, self.norm, epoch, self.epoch_draws(epoch), self.shuffle_buffer,
                             self.samples, first)
            batches = iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers))
            yield from batches
        finally:  # the epoch ended, failed or was abandoned: its workers stop, then its tars may be evicted
            del batches
            if self.cache is not None:
                self.cache.release(epoch)

    def close(self) -> None:
        """Let go of the shard cache (s3://): nothing of this loader's is held any more (as DaliLoader.close)."""
        if self.cache is not None:
            self.cache.close()


def build_reference_loader(OUT, split, batch_size, rank=0, world_size=1, seed=0, augment=None, lighting=None,
                           mean="image", ten_crop=False, num_workers=2, shuffle=None, drop_last=None, draws=None,
                           shuffle_buffer=4096, cache_dir=None, cache_limit=None) -> ReferenceLoader:
    """The reference loader of a split; the options mean what they mean for `build_loader`
    (cache_dir and cache_limit: an s3:// OUT is read through the local shard cache, pipeline.cache).

    `draws`: explicit per-position draws (a `Draws`, or a function epoch → `Draws`) instead of
    `epoch_draws(seed, rank, epoch, …)`.
    """
    spec = loader_spec(OUT, split, batch_size, rank, world_size, seed, augment, lighting, mean, ten_crop,
                       shuffle, drop_last, cache_dir=cache_dir, cache_limit=cache_limit)
    from pipeline.cache import open_cache

    cache = open_cache(spec)  # s3:// only; an unwritable cache folder: exit 2 before any request
    manifest = open_split(spec, cache.store if cache else None)
    norm = load_normalisation(OUT, manifest, mean)
    tars = [t for t, _ in manifest.shard_paths(OUT, split)]
    shards = manifest.split(split).shards
    return ReferenceLoader(spec, tars, [s.samples for s in shards], norm, num_workers, draws, shuffle_buffer,
                           shards=shards, cache=cache)
