"""What both loaders share (docs/DESIGN.md, "Loader"): their options, and which samples a rank
reads in an epoch, in which order, and how many batches it yields.

Sharding (`epoch_plan`): the split, in shard order, is cut into `world_size` contiguous slices
the way DALI's reader cuts it (slice s = samples [N·s//W, N·(s+1)//W)).
  - Training (shuffle on): the shards are first put in an order drawn from (seed, epoch)
    (`shard_order`, the same on every rank), so each epoch's stream meets other neighbours; the
    slices are cut from that order. Rank r reads slice (r + epoch) mod W, shuffled in a buffer
    (4096 samples by default); every rank yields the same number of full batches, N // (W·B),
    and drops the rest of its (shuffled) slice.
  - Validation: rank r reads slice r in shard order; the reader pads the slice to whole
    batches and the loader trims the padding, so each sample appears exactly once across
    ranks. Batch counts may then differ by one between ranks: reduce evaluation sums once at
    the end, not per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shards import TRAIN, Manifest

MEANS = ("image", "channel")
PAPER_LIGHTING = 0.1  # σ of the PCA weights α (Section 4.1)


@dataclass
class EpochPlan:
    """One rank's share of one epoch."""

    shard_id: int  # which slice this rank reads in this epoch
    start: int  # the slice: samples [start, stop) of the split in the epoch's shard order
    stop: int
    batches: int  # batches this rank yields
    samples: int  # samples this rank yields


def epoch_plan(n: int, batch_size: int, rank: int, world_size: int, epoch: int, shuffle: bool,
               drop_last: bool) -> EpochPlan:
    """The slice of a split of `n` samples that `rank` reads in `epoch`, and what it yields."""
    shard_id = (rank + epoch) % world_size if shuffle else rank
    start, stop = n * shard_id // world_size, n * (shard_id + 1) // world_size
    if drop_last:
        batches = n // (world_size * batch_size)
        samples = batches * batch_size
    else:
        batches = math.ceil((stop - start) / batch_size)
        samples = stop - start
    return EpochPlan(shard_id, start, stop, batches, samples)


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which an epoch reads the split's shards: a permutation drawn from
    (seed, epoch) for training (the same on every rank, so the ranks' slices of it stay disjoint
    and cover the split), shard order otherwise.

    Without it a buffer shuffle of B samples mixes only within a window of B consecutive
    samples of a fixed stream, so an image meets mostly the same neighbours every epoch.
    """
    if not shuffle:
        return list(range(n_shards))
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 3]))
    return rng.permutation(n_shards).tolist()


@dataclass
class LoaderOptions:
    """The resolved options of one loader (defaults filled in, values checked)."""

    out: str
    split: str
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    augment: bool = False
    lighting: float = 0.0  # σ of α; 0 turns lighting off
    mean: str = "image"
    ten_crop: bool = False
    shuffle: bool = False
    drop_last: bool = False

    def plan(self, samples: int, epoch: int) -> EpochPlan:
        """This rank's plan of `epoch` over a split of `samples` samples."""
        return epoch_plan(samples, self.batch_size, self.rank, self.world_size, epoch, self.shuffle, self.drop_last)

    def in_epoch_order(self, shards: Sequence, epoch: int) -> list:
        """`shards` (one item per shard of the split, in shard order) in the order `epoch` reads them."""
        return [shards[i] for i in shard_order(len(shards), self.seed, epoch, self.shuffle)]


def resolve_options(out, split, batch_size, rank=0, world_size=1, seed=0, augment=None, lighting=None,
                    mean="image", ten_crop=False, shuffle=None, drop_last=None) -> LoaderOptions:
    """Fill in the split-dependent defaults and check every value (ValueError naming the option)."""
    train = split == TRAIN
    _check(batch_size, rank, world_size, seed, mean)
    if augment is None:
        augment = train and not ten_crop
    if augment and ten_crop:
        raise ValueError("augment=True and ten_crop=True: ten-crop takes the ten fixed views, not a random crop")
    if lighting is None:
        lighting = PAPER_LIGHTING if train else 0.0
    if not lighting >= 0:
        raise ValueError(f"lighting={lighting!r}: expected σ >= 0")
    return LoaderOptions(
        out=str(out), split=split, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
        augment=bool(augment), lighting=float(lighting), mean=mean, ten_crop=bool(ten_crop),
        shuffle=train if shuffle is None else bool(shuffle),
        drop_last=train if drop_last is None else bool(drop_last),
    )


def _check(batch_size, rank, world_size, seed, mean) -> None:
    """ValueError naming the first option that has no default and is out of range."""
    if mean not in MEANS:
        raise ValueError(f"mean={mean!r}: expected one of {', '.join(map(repr, MEANS))}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")


def open_split(options: LoaderOptions) -> Manifest:
    """The manifest, checked to hold the split, its files and at least one batch per rank (else
    one-line errors: ValueError for a request that does not fit, shards.Damage for files)."""
    manifest = Manifest.load(options.out)
    split = manifest.split(options.split)
    n = split.samples
    if options.plan(n, 0).batches == 0:
        raise ValueError(f"split {options.split!r} has {n} samples: too few for one batch of {options.batch_size} "
                         f"on each of {options.world_size} rank(s)")
    check_split_files(options.out, split)
    return manifest


def check_split_files(directory, split) -> None:
    """shards.Damage (exit 1, one line naming the file) when a shard of `split` is missing its tar
    or index, or its index does not fit its tar (a truncated or replaced file). Sizes only, no
    hashes: a cheap check before a reader is handed the paths; `alexnet verify` checks all. On S3
    a wrong address or credentials are one line too (shards.store, exit 2)."""
    from shards.errors import Damage
    from shards.store import open_store
    from shards.verify import split_files_problems

    hint = f"run `alexnet verify {directory}`, then preprocess again to repair it"
    for problem in split_files_problems(directory, split.shards)[:1]:
        what = "missing from the shard directory" if problem.message == "missing" else problem.message
        raise Damage(f"{open_store(directory).url(problem.file)}: {what}; {hint}")


class EpochLoader:
    """What both loaders share: one epoch per iteration, its plan and its length.

    A subclass has `options`, `samples` (of the split) and `epoch` (the next iteration's).
    """

    options: LoaderOptions
    samples: int
    epoch: int

    def plan(self, epoch=None) -> EpochPlan:
        """This rank's plan of `epoch` (default: the next iteration's)."""
        return self.options.plan(self.samples, self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return self.plan().batches

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch `epoch` (iterating advances it by one)."""
        self.epoch = int(epoch)
