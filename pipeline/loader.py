"""The PyTorch-facing loader (DESIGN.md, Contract 2): `build_loader(OUT, split, batch_size, device)`.

Each iteration is one epoch and builds a fresh DALI pipeline for it, seeded from
(seed, rank, epoch): the reader's shuffle and the host-side draws (`pipeline.lighting`) are
then exact functions of those three numbers, whatever happened before (a resumed run at epoch
e sees what an uninterrupted one saw). The rebuild costs a fraction of a second per epoch
(0.1–0.2 s to the first batch on CPU, plus nvJPEG's set-up on a GPU).

Sharding (`epoch_plan`): the split, in shard order, is cut into `world_size` contiguous slices
the way DALI's reader cuts it (slice s = samples [N·s//W, N·(s+1)//W)).
  - Training (shuffle on): the shards are first put in an order drawn from (seed, epoch)
    (`shard_order`, the same on every rank), so each epoch's stream meets other neighbours; the
    slices are cut from that order. Rank r reads slice (r + epoch) mod W, shuffled in a buffer
    of 4096 samples; every rank yields the same number of full batches, N // (W·B), and drops
    the rest of its (shuffled) slice.
  - Validation: rank r reads slice r in shard order; the reader pads the slice to whole
    batches and the iterator trims the padding (LastBatchPolicy.PARTIAL), so each sample
    appears exactly once across ranks. Batch counts may then differ by one between ranks:
    reduce evaluation sums once at the end, not per batch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.lighting import Draws, Normalisation, epoch_draws, load_normalisation
from shards import Manifest

MEANS = ("image", "channel")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)
PAPER_LIGHTING = 0.1  # σ of the PCA weights α (Section 4.1)


# --- options ------------------------------------------------------------------------------
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


def resolve_options(out, split, batch_size, rank=0, world_size=1, seed=0, augment=None, lighting=None,
                    mean="image", ten_crop=False, shuffle=None, drop_last=None) -> LoaderOptions:
    """Fill in the split-dependent defaults and check every value (ValueError naming the option)."""
    train = split == "train"
    if mean not in MEANS:
        raise ValueError(f"mean={mean!r}: expected one of {', '.join(map(repr, MEANS))}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank={rank!r}, world_size={world_size!r}: expected 0 <= rank < world_size")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
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


# --- sharding and epoch length ----------------------------------------------------------
@dataclass
class EpochPlan:
    shard_id: int  # which slice this rank reads in this epoch
    start: int  # the slice: samples [start, stop) of the split in shard order
    stop: int
    batches: int  # batches this rank yields
    samples: int  # samples this rank yields


def epoch_plan(n: int, batch_size: int, rank: int, world_size: int, epoch: int, shuffle: bool,
               drop_last: bool) -> EpochPlan:
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


def open_split(options: LoaderOptions) -> Manifest:
    """The manifest, checked to hold the split and at least one batch per rank (else one-line errors)."""
    manifest = Manifest.load(options.out)
    n = manifest.split(options.split).samples
    o = options
    if epoch_plan(n, o.batch_size, o.rank, o.world_size, 0, o.shuffle, o.drop_last).batches == 0:
        raise ValueError(f"split {o.split!r} has {n} samples: too few for one batch of {o.batch_size} "
                         f"on each of {o.world_size} rank(s)")
    return manifest


def parse_labels(raw: torch.Tensor) -> torch.Tensor:
    """int64 labels from the `.cls` bytes (ASCII decimal, NUL-padded on the right), N×L uint8."""
    raw = raw.reshape(raw.shape[0], -1).to(torch.int64)
    digits = raw - ord("0")
    valid = (digits >= 0) & (digits <= 9)
    labels = torch.zeros(raw.shape[0], dtype=torch.int64)
    for j in range(raw.shape[1]):
        labels = torch.where(valid[:, j], labels * 10 + digits[:, j], labels)
    return labels


def default_threads() -> int:
    """CPU cores for this process: its affinity set shared among the local ranks (torchrun)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


# --- the loader ---------------------------------------------------------------------------
@dataclass
class DaliLoader:
    """Iterable of (images, labels) on the device, one epoch per iteration. Build with build_loader."""

    options: LoaderOptions
    manifest: Manifest = field(repr=False)
    norm: Normalisation = field(repr=False)
    device: torch.device
    dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.contiguous_format
    num_threads: int = 1
    prefetch: int = 2
    epoch: int = 0
    # Build the next epoch's pipeline in the background: on by default for training loaders on the
    # GPU, where a fresh pipeline took ~2 s to its first batch on an H200; off on the CPU, where
    # the build competes with the running epoch for the same cores (measured on 2 cores: no gain),
    # and for validation loaders, which are read once between training epochs.
    prepare_next: bool = None
    shuffle_buffer: int = 4096  # samples in DALI's shuffle buffer (its initial_fill)
    _next: object = field(default=None, repr=False)  # (epoch, Future of (pipeline, iterator))
    _builder: object = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        return self.manifest.split(self.options.split).samples

    def plan(self, epoch=None) -> EpochPlan:
        o = self.options
        return epoch_plan(self.samples, o.batch_size, o.rank, o.world_size, self.epoch if epoch is None else epoch,
                          o.shuffle, o.drop_last)

    def __len__(self) -> int:
        return self.plan().batches

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch `epoch` (iterating advances it by one)."""
        self.epoch = int(epoch)

    def draws(self, epoch=None) -> Draws:
        """Per-position draws of an epoch: position i is the i-th image this rank yields."""
        o = self.options
        epoch = self.epoch if epoch is None else epoch
        plan = self.plan(epoch)
        # whole padded batches of the slice, plus the batches DALI asks for ahead of the end
        n = (math.ceil((plan.stop - plan.start) / o.batch_size) + self.prefetch + 2) * o.batch_size
        return epoch_draws(o.seed, o.rank, epoch, n, o.augment, o.lighting)

    def _spec(self, epoch):
        from pipeline.dali import PipelineSpec

        o, plan = self.options, self.plan(epoch)
        pairs = self.manifest.shard_paths(o.out, o.split)
        pairs = [pairs[i] for i in shard_order(len(pairs), o.seed, epoch, o.shuffle)]
        seed = int(np.random.SeedSequence([o.seed, o.rank, epoch, 1]).generate_state(1)[0] & 0x7FFFFFFF)
        gpu = self.device.type == "cuda"
        return PipelineSpec(
            tars=[t for t, _ in pairs], indexes=[i for _, i in pairs], batch_size=o.batch_size,
            shard_id=plan.shard_id, num_shards=o.world_size, shuffle=o.shuffle, seed=seed,
            device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None,
            num_threads=self.num_threads, prefetch=self.prefetch, ten_crop=o.ten_crop, mean=o.mean,
            mean_image=self.norm.mean_image, channel_mean=self.norm.channel_mean.tolist(),
            channel_std=self.norm.channel_std.tolist(), per_sample_mean=o.lighting > 0,
            half=self.dtype == torch.float16,
            layout="HWC" if self.memory_format == torch.channels_last else "CHW",
            initial_fill=max(1, min(self.shuffle_buffer, plan.stop - plan.start)),
        )

    def _source(self, draws: Draws):
        """The external source's callback: per-sample crop corner, mirror and mean of a batch."""
        o, B = self.options, self.options.batch_size
        batches = len(draws) // B
        x = (draws.x0 / 32.0).astype(np.float32)  # crop_pos is relative: x0 / (256 − 224)
        y = (draws.y0 / 32.0).astype(np.float32)
        offsets = self.norm.offsets255(draws.alpha)
        if o.mean == "image":
            mean = (-offsets).astype(np.float32)  # out = (x − 255·M) − (−255·offset)
        else:
            mean = (self.norm.channel_mean - offsets).astype(np.float32)

        def source(iteration):
            rows = slice((iteration % batches) * B, (iteration % batches + 1) * B)  # past the end: prefetch only
            args = () if o.ten_crop else (x[rows], y[rows], draws.mirror[rows])
            return args + ((mean[rows],) if o.lighting > 0 else ())

        return source

    def __post_init__(self):
        if self.prepare_next is None:  # training loaders on the GPU: read epoch after epoch
            self.prepare_next = self.device.type == "cuda" and self.options.shuffle

    def _open(self, epoch):
        """(pipeline, iterator) of an epoch; the iterator starts filling its buffers at once."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from pipeline.dali import OUTPUTS, READER_NAME, build_pipeline

        pipe = build_pipeline(self._spec(epoch), self._source(self.draws(epoch)))
        policy = LastBatchPolicy.DROP if self.options.drop_last else LastBatchPolicy.PARTIAL
        return pipe, DALIGenericIterator([pipe], list(OUTPUTS), reader_name=READER_NAME, last_batch_policy=policy)

    def _prepare(self, epoch):
        """Build epoch `epoch`'s pipeline in the background, so the next epoch starts without the
        seconds a fresh pipeline takes to build and fill its shuffle buffer."""
        from concurrent.futures import ThreadPoolExecutor

        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, thread_name_prefix="dali-next-epoch")
        self._next = (epoch, self._builder.submit(self._open, epoch))

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        plan = self.plan(epoch)
        ready, self._next = self._next, None
        if ready is not None and ready[0] == epoch:
            pipe, it = ready[1].result()
        else:
            if ready is not None:  # set_epoch jumped: drop the pipeline built for another epoch
                ready[1].cancel()
            pipe, it = self._open(epoch)
        ready = None
        try:
            for b, batch in enumerate(it):
                if b >= plan.batches:
                    break
                if b == 0 and self.prepare_next:
                    self._prepare(self.epoch)  # the epoch a plain loop iterates next
                yield self._finish(batch[0]["images"]), self._labels(batch[0]["labels"])
        finally:
            del it, pipe

    def close(self) -> None:
        """Drop a pipeline prepared for the next epoch and stop the builder thread."""
        ready, self._next = self._next, None
        if ready is not None:
            ready[1].cancel()
        if self._builder is not None:
            self._builder.shutdown(wait=True)
            self._builder = None
        ready = None

    def _labels(self, raw: torch.Tensor) -> torch.Tensor:
        labels = parse_labels(raw)
        if self.device.type == "cuda":  # pinned + non-blocking: no host sync per batch
            return labels.pin_memory().to(self.device, non_blocking=True)
        return labels

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.bfloat16:
            images = images.to(torch.bfloat16)
        if self.memory_format == torch.channels_last:  # DALI wrote N(×10)×H×W×C
            images = images.movedim(-1, -3)
        return images


def build_loader(OUT, split, batch_size, device="cpu", rank=0, world_size=1, seed=0, augment=None, lighting=None,
                 mean="image", ten_crop=False, dtype=torch.float32, memory_format=torch.contiguous_format,
                 num_threads=None, prefetch=2, shuffle=None, drop_last=None, prepare_next=None,
                 shuffle_buffer=4096) -> DaliLoader:
    """The DALI loader of a split of a shard directory (DESIGN.md, Contract 2).

    Args:
        OUT: shard directory (manifest.json, tars, .idx files, mean_image.npy).
        split: "train" or "val".
        batch_size: images per batch on this rank.
        device: "cuda" (or "cuda:N"): mixed decoding, all pixel work on that GPU; "cpu": a
            CPU-only DALI pipeline.
        rank, world_size: this process's slice of the split.
        seed: with rank and epoch, fixes the shuffle and every draw.
        augment: random 224 crop + mirror (default: train only).
        lighting: σ of the PCA lighting α (default 0.1 for train, 0 otherwise).
        mean: "image" (x − 255·mean image, 0–255 scale; the paper's) or "channel" ((x/255 − μ)/σ).
        ten_crop: N×10×3×224×224, torchvision TenCrop order.
        dtype: torch.float32, float16 or bfloat16.
        memory_format: torch.contiguous_format (NCHW) or torch.channels_last.
        num_threads: DALI CPU threads (default: this process's share of the cores).
        prefetch: batches DALI prepares ahead.
        shuffle, drop_last: default on for train only (see the module docstring).
        prepare_next: build the next epoch's pipeline in the background (default: training
            loaders on the GPU).
        shuffle_buffer: samples in the reader's shuffle buffer (training).
    """
    options = resolve_options(OUT, split, batch_size, rank, world_size, seed, augment, lighting, mean, ten_crop,
                              shuffle, drop_last)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected torch.float32, torch.float16 or torch.bfloat16")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer={shuffle_buffer!r}: expected a positive integer")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={memory_format!r}: expected torch.contiguous_format or torch.channels_last")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available (use device='cpu')")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(device)!r}: expected 'cuda' or 'cpu'")
    manifest = open_split(options)
    norm = load_normalisation(OUT, manifest, mean)
    from pipeline.dali import require_dali

    require_dali()
    return DaliLoader(options, manifest, norm, device, dtype, memory_format,
                      num_threads or default_threads(), prefetch, prepare_next=prepare_next,
                      shuffle_buffer=shuffle_buffer)
