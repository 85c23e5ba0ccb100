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
from typing import Optional, Sequence

import numpy as np

from shards import TRAIN, Manifest

MEANS = ("image", "channel")
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # torch dtypes a loader can hand over
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


HANDOFFS = ("float", "uint8")


@dataclass
class LoaderSpec:
    """Every option of a loader, one name each from `build_loader` down to the DALI graph
    (docs/DESIGN.md, "Loader"); built, with its defaults filled in and checked, by `loader_spec`.

    The first twelve fields mean the same to both loaders (the reference loader ignores the
    rest); the DALI loader's own follow.
    """

    out: str  # shard directory or s3://bucket/prefix
    split: str  # "train" or "val"
    batch_size: int  # images per batch on this rank
    rank: int = 0  # this process's slice of the split ...
    world_size: int = 1  # ... of this many
    seed: int = 0  # with rank and epoch, fixes the shuffle and every draw
    augment: bool = False  # random 224 crop + mirror (Section 4.1); else the centre crop
    lighting: float = 0.0  # σ of the PCA lighting α (Section 4.1); 0 turns lighting off
    mean: str = "image"  # "image": x − 255·mean image (Section 2); "channel": (x/255 − μ)/σ
    ten_crop: bool = False  # N×10×3×224×224, torchvision TenCrop order (Section 4.1)
    shuffle: bool = False  # shard order drawn per epoch + DALI's buffer shuffle
    drop_last: bool = False  # whole batches only, the same count on every rank
    device: str = "cpu"  # "cuda[:N]": mixed decoding and pixel work on that GPU; "cpu": a CPU-only pipeline
    dtype: object = None  # torch.float32, float16 or bfloat16 (default float32)
    memory_format: object = None  # torch.contiguous_format (NCHW, the default) or torch.channels_last
    num_threads: int = 1  # DALI CPU threads
    prefetch: int = 2  # batches DALI prepares ahead
    prepare_next: bool = False  # build the next epoch's pipeline in the background
    shuffle_buffer: int = 4096  # samples in DALI's shuffle buffer (training)
    handoff: str = "float"  # what DALI hands to torch: "float" (normalised) or "uint8" (crops; torch normalises)
    cpu_decode: float = 0.0  # share of each batch decoded by libjpeg-turbo on the CPU cores (GPU loaders)
    hw_decoder_load: float = 0.65  # share of the GPU-decoded JPEGs for nvJPEG's hardware decoder
    cache_dir: Optional[str] = None  # s3:// shards: the local shard cache's folder (pipeline.cache)
    cache_limit: Optional[int] = None  # s3:// shards: bytes the cache may hold (None: no limit)

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def plan(self, samples: int, epoch: int) -> EpochPlan:
        """This rank's plan of `epoch` over a split of `samples` samples."""
        return epoch_plan(samples, self.batch_size, self.rank, self.world_size, epoch, self.shuffle, self.drop_last)

    def in_epoch_order(self, shards: Sequence, epoch: int) -> list:
        """`shards` (one item per shard of the split, in shard order) in the order `epoch` reads them."""
        return [shards[i] for i in shard_order(len(shards), self.seed, epoch, self.shuffle)]


def loader_spec(out, split, batch_size, rank=0, world_size=1, seed=0, augment=None, lighting=None, mean="image",
                ten_crop=False, shuffle=None, drop_last=None, device="cpu", dtype=None, memory_format=None,
                num_threads=None, prefetch=2, prepare_next=None, shuffle_buffer=4096, handoff="float",
                cpu_decode=0.0, hw_decoder_load=0.65, cache_dir=None, cache_limit=None) -> LoaderSpec:
    """The one place a loader's options are resolved: the split-dependent defaults filled in and
    every value checked (ValueError naming the option). See `LoaderSpec` for each option."""
    import torch

    train = split == TRAIN
    _check(batch_size, rank, world_size, seed, mean)
    if augment is None:
        augment = train and not ten_crop
    if augment and ten_crop:
        raise ValueError("augment=True and ten_crop=True: ten-crop takes the ten fixed views, not a random crop")
    if lighting is None:
        lighting = PAPER_LIGHTING if train else 0.0
    if not 0 <= lighting < float("inf"):
        raise ValueError(f"lighting={lighting!r}: expected a finite σ >= 0")
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in tuple(getattr(torch, name) for name in DTYPE_NAMES):
        raise ValueError(f"dtype={dtype!r}: expected torch.float32, torch.float16 or torch.bfloat16")
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise ValueError(f"memory_format={memory_format!r}: expected torch.contiguous_format or torch.channels_last")
    if handoff not in HANDOFFS:
        raise ValueError(f"handoff={handoff!r}: expected one of {', '.join(map(repr, HANDOFFS))}")
    for name, share in (("cpu_decode", cpu_decode), ("hw_decoder_load", hw_decoder_load)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name}={share!r}: expected a share between 0 and 1")
    for name, count in (("shuffle_buffer", shuffle_buffer), ("prefetch", prefetch)):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{name}={count!r}: expected a positive integer")
    device = _device(device)
    from pipeline.cache import default_cache_dir, parse_size

    cache_limit = parse_size(cache_limit)
    if cache_limit is not None and cache_limit < 0:
        raise ValueError(f"cache_limit={cache_limit!r}: expected a size >= 0")
    shuffle = train if shuffle is None else bool(shuffle)
    return LoaderSpec(
        out=str(out), split=split, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
        augment=bool(augment), lighting=float(lighting), mean=mean, ten_crop=bool(ten_crop), shuffle=shuffle,
        drop_last=train if drop_last is None else bool(drop_last), device=device, dtype=dtype,
        memory_format=memory_format, num_threads=num_threads or default_threads(), prefetch=prefetch,
        # the next epoch's pipeline built during this one: training loaders on a GPU, where a
        # fresh pipeline took ~2 s to its first batch on an H200; off on the CPU, where the build
        # competes with the running epoch for the same cores (measured on 2 cores: no gain)
        prepare_next=(device.startswith("cuda") and shuffle) if prepare_next is None else bool(prepare_next),
        shuffle_buffer=shuffle_buffer, handoff=handoff, cpu_decode=float(cpu_decode),
        hw_decoder_load=float(hw_decoder_load), cache_dir=str(cache_dir or default_cache_dir()),
        cache_limit=cache_limit,
    )


def _device(device) -> str:
    """The device as a string, checked ("cuda" needs CUDA)."""
    import torch

    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(device)!r}: expected 'cuda' or 'cpu'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available (use device='cpu')")
    return str(device)


def default_threads(processes: int = 1) -> int:
    """DALI worker threads for this process: its CPU affinity set, shared among the `processes`
    of its machine (the trainer passes torchrun's local world size, train.launch)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


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


def open_split(spec: LoaderSpec, store=None) -> Manifest:
    """The manifest, checked to hold the split, its files and at least one batch per rank (else
    one-line errors: ValueError for a request that does not fit, shards.Damage for files).
    `store`: the shards.store of `spec.out` to list the files with (the shard cache's, whose
    listing the cache then reuses), else a new one."""
    manifest = Manifest.load(spec.out)
    split = manifest.split(spec.split)
    n = split.samples
    if spec.plan(n, 0).batches == 0:
        raise ValueError(f"split {spec.split!r} has {n} samples: too few for one batch of {spec.batch_size} "
                         f"on each of {spec.world_size} rank(s)")
    check_split_files(spec.out, split, store)
    return manifest


def check_split_files(directory, split, store=None) -> None:
    """shards.Damage (exit 1, one line naming the file) when a shard of `split` is missing its tar
    or index, or its index does not fit its tar (a truncated or replaced file). Sizes only, no
    hashes: a cheap check before a reader is handed the paths; `alexnet verify` checks all. On S3
    a wrong address or credentials are one line too (shards.store, exit 2)."""
    from shards.errors import Damage
    from shards.store import open_store
    from shards.verify import split_files_problems

    hint = f"run `alexnet verify {directory}`, then preprocess again to repair it"
    for problem in split_files_problems(directory, split.shards, store)[:1]:
        what = "missing from the shard directory" if problem.message == "missing" else problem.message
        raise Damage(f"{open_store(directory).url(problem.file)}: {what}; {hint}")


class EpochLoader:
    """What both loaders share: one epoch per iteration, its plan and its length.

    A subclass has `spec`, `samples` (of the split) and `epoch` (the next iteration's).
    """

    spec: LoaderSpec
    samples: int
    epoch: int

    def plan(self, epoch=None) -> EpochPlan:
        """This rank's plan of `epoch` (default: the next iteration's)."""
        return self.spec.plan(self.samples, self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return self.plan().batches

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch `epoch` (iterating advances it by one)."""
        self.epoch = int(epoch)

    # s3:// shards (a subclass with `split_shards`, the split's ShardInfo, and `cache`, a
    # pipeline.cache.ShardCache)
    def epoch_slice(self, epoch):
        """The shards this rank reads in `epoch` (pipeline.cache.EpochSlice)."""
        from pipeline.cache import epoch_slice

        plan = self.plan(epoch)
        return epoch_slice(self.spec.in_epoch_order(self.split_shards, epoch), plan.start, plan.stop)

    def fetch_slice(self, epoch):
        """(tars, indexes) of this rank's slice of `epoch`, local and verified, held under `epoch`
        until `cache.release(epoch)`; the slices of the epochs after it set the eviction order."""
        from pipeline.cache import HORIZON

        self.cache.plan_reads({e: self.epoch_slice(e).shards for e in range(epoch + 1, epoch + 1 + HORIZON)})
        return self.cache.fetch(self.epoch_slice(epoch), epoch)
