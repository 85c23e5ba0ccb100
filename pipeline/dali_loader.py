"""The PyTorch-facing DALI loader (docs/DESIGN.md, "Loader"): `build_loader(OUT, split, batch_size, device)`.

Each iteration is one epoch and builds a fresh DALI pipeline for it (`pipeline.graph`), seeded
from (seed, rank, epoch): the reader's shuffle and the host-side draws (`pipeline.draws`) are
then exact functions of those three numbers, whatever happened before (a resumed run at epoch
e sees what an uninterrupted one saw). The rebuild costs a fraction of a second per epoch
(0.1–0.2 s to the first batch on CPU, plus nvJPEG's set-up on a GPU).

Which samples a rank reads, in which order, comes from `pipeline.plan`, shared with the
reference loader. For validation the reader pads the rank's slice to whole batches and the
iterator trims the padding (LastBatchPolicy.PARTIAL); training drops the rest of the slice
(LastBatchPolicy.DROP).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.draws import STRIDE, Draws, epoch_draws
from pipeline.normalise import Normalisation, load_normalisation
from pipeline.plan import EpochLoader, LoaderOptions, open_split, resolve_options
from shards import Manifest

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def read_error(options, error):
    """DALI's multi-line reader or decoder error as one line (shards.Damage, exit 1)."""
    from shards.errors import Damage

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    noise = ("Critical error in pipeline", "Current pipeline object", "File ", "which was used")
    operator = next((line.split("`")[1] for line in lines if line.startswith("Error in") and "`" in line), None)
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        cause = lines[lines.index("encountered:") + 1]
    else:
        cause = next((line for line in lines if not line.startswith(noise)), repr(error))
    cause = cause.split("failed: ", 1)[-1]
    s3 = _s3_read_error(options, lines)
    if s3 is not None:
        return s3
    where = f"{operator.removeprefix('nvidia.dali.fn.')}: " if operator else ""
    return Damage(f"{options.out}: DALI could not read the {options.split} shards ({where}{cause[:300]}); "
                  f"run `alexnet verify {options.out}`")


def _s3_read_error(options, lines):
    """One line for DALI's S3 client failing during an epoch (None for any other error): the
    endpoint gone (curl could not connect: UserError, exit 2) or an object that is not there or
    not readable (DALI reports both as "S3 Object not found": Damage, exit 1). The shards were
    checked through boto3 before the epoch (pipeline.plan.check_split_files), so either changed
    while it ran."""
    import re

    from shards.errors import Damage, UserError

    text = " ".join(lines)
    found = re.search(r"S3 Object not found\. bucket=(\S+) object=(\S+?):?(?:\s|$)", text)
    if found is None:
        return None
    url = f"s3://{found.group(1)}/{found.group(2)}"
    curl = re.search(r"curlCode: \d+, [^;]*", text)
    if curl is not None:
        return UserError(f"{url}: DALI lost the S3 endpoint while reading the {options.split} shards "
                         f"({curl.group(0)}); check AWS_ENDPOINT_URL and the network, then run the command again")
    return Damage(f"{url}: DALI could not read it while reading the {options.split} shards (the object is gone or "
                  f"its access was refused); check the credentials and run `alexnet verify {options.out}`")


MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


@dataclass
class DaliLoader(EpochLoader):
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
    # Graph candidates of issue 13, off until a GPU measurement favours them (docs/PERFORMANCE.md):
    mean_after_crop: bool = False  # mean="image": subtract the cropped mean image after the crop
    hw_decoder_load: float = 0.65  # share of JPEGs for the GPU's hardware JPEG decoder
    _next: object = field(default=None, repr=False)  # (epoch, Future of (pipeline, iterator))
    _builder: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.prepare_next is None:  # training loaders on the GPU: read epoch after epoch
            self.prepare_next = self.device.type == "cuda" and self.options.shuffle

    @property
    def samples(self) -> int:
        return self.manifest.split(self.options.split).samples

    def draws(self, epoch=None) -> Draws:
        """Per-position draws of an epoch: position i is the i-th image this rank yields."""
        o = self.options
        epoch = self.epoch if epoch is None else epoch
        plan = self.plan(epoch)
        # whole padded batches of the slice, plus the batches DALI asks for ahead of the end
        n = (math.ceil((plan.stop - plan.start) / o.batch_size) + self.prefetch + 2) * o.batch_size
        return epoch_draws(o.seed, o.rank, epoch, n, o.augment, o.lighting)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        plan = self.plan(epoch)
        pipe = it = failure = None
        try:
            pipe, it = self._take(epoch)
            for b, batch in enumerate(it):
                if b >= plan.batches:
                    break
                if b == 0 and self.prepare_next:
                    self._prepare(self.epoch)  # the epoch a plain loop iterates next
                yield self._finish(batch[0]["images"]), self._labels(batch[0]["labels"])
        except RuntimeError as e:  # DALI's reader or decoder: the shards are damaged
            failure = read_error(self.options, e)
        finally:
            del it, pipe
        if failure is not None:  # raised here, with no reference left to DALI's broken pipeline
            raise failure

    def close(self) -> None:
        """Drop a pipeline prepared for the next epoch and stop the builder thread."""
        ready, self._next = self._next, None
        if ready is not None:
            ready[1].cancel()
        if self._builder is not None:
            self._builder.shutdown(wait=True)
            self._builder = None
        ready = None

    # --- one epoch's pipeline -------------------------------------------------------------
    def _take(self, epoch):
        """(pipeline, iterator) of `epoch`: the one prepared in the background, else a fresh one."""
        ready, self._next = self._next, None
        if ready is not None and ready[0] == epoch:
            return ready[1].result()
        if ready is not None:  # set_epoch jumped: drop the pipeline built for another epoch
            ready[1].cancel()
        return self._open(epoch)

    def _open(self, epoch):
        """(pipeline, iterator) of an epoch; the iterator starts filling its buffers at once."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from pipeline.graph import OUTPUTS, READER_NAME, build_pipeline

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

    def _spec(self, epoch):
        from pipeline.graph import PipelineSpec

        o, plan = self.options, self.plan(epoch)
        pairs = o.in_epoch_order(self.manifest.shard_paths(o.out, o.split), epoch)
        seed = int(np.random.SeedSequence([o.seed, o.rank, epoch, 1]).generate_state(1)[0] & 0x7FFFFFFF)
        return PipelineSpec(
            tars=[t for t, _ in pairs], indexes=[i for _, i in pairs], batch_size=o.batch_size,
            shard_id=plan.shard_id, num_shards=o.world_size, shuffle=o.shuffle, seed=seed,
            device_id=self._device_id(), num_threads=self.num_threads, prefetch=self.prefetch,
            ten_crop=o.ten_crop, mean=o.mean, mean_image=self.norm.mean_image,
            channel_mean=self.norm.channel_mean.tolist(), channel_std=self.norm.channel_std.tolist(),
            per_sample_mean=o.lighting > 0, half=self.dtype == torch.float16,
            layout="HWC" if self.memory_format == torch.channels_last else "CHW",
            initial_fill=max(1, min(self.shuffle_buffer, plan.stop - plan.start)),
            hw_decoder_load=self.hw_decoder_load, mean_after_crop=self.mean_after_crop,
        )

    def _device_id(self):
        """The CUDA device's index for DALI, None for a CPU-only pipeline."""
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _source(self, draws: Draws):
        """The external source's callback: per-sample crop corner, mirror and mean of a batch."""
        o, B = self.options, self.options.batch_size
        batches = len(draws) // B
        x = (draws.x0 / float(STRIDE)).astype(np.float32)  # crop_pos is relative: x0 / (256 − 224)
        y = (draws.y0 / float(STRIDE)).astype(np.float32)
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

    # --- one batch ------------------------------------------------------------------------
    def _labels(self, raw: torch.Tensor) -> torch.Tensor:
        labels = parse_labels(raw)
        if self.device.type == "cuda":  # pinned + non-blocking: no host sync per batch
            return labels.pin_memory().to(self.device, non_blocking=True)
        return labels

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        if self.dtype == torch.bfloat16:  # DALI writes float16 or float32 only
            images = images.to(torch.bfloat16)
        if self.memory_format == torch.channels_last:  # DALI wrote N(×10)×H×W×C
            images = images.movedim(-1, -3)
        return images


def parse_labels(raw: torch.Tensor) -> torch.Tensor:
    """int64 labels from the `.cls` bytes (ASCII decimal, NUL-padded on the right), N×L uint8."""
    raw = raw.reshape(raw.shape[0], -1).to(torch.int64)
    digits = raw - ord("0")
    valid = (digits >= 0) & (digits <= 9)
    labels = torch.zeros(raw.shape[0], dtype=torch.int64)
    for j in range(raw.shape[1]):
        labels = torch.where(valid[:, j], labels * 10 + digits[:, j], labels)
    return labels


def default_threads(processes: int = 1) -> int:
    """DALI worker threads for this process: its CPU affinity set, shared among the `processes`
    of its machine (the trainer passes torchrun's local world size, train.launch)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def build_loader(OUT, split, batch_size, device="cpu", rank=0, world_size=1, seed=0, augment=None, lighting=None,
                 mean="image", ten_crop=False, dtype=torch.float32, memory_format=torch.contiguous_format,
                 num_threads=None, prefetch=2, shuffle=None, drop_last=None, prepare_next=None,
                 shuffle_buffer=4096, mean_after_crop=False, hw_decoder_load=0.65) -> DaliLoader:
    """The DALI loader of a split of a shard directory (docs/DESIGN.md, "Loader").

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
        shuffle, drop_last: default on for train only (see `pipeline.plan`).
        prepare_next: build the next epoch's pipeline in the background (default: training
            loaders on the GPU).
        shuffle_buffer: samples in the reader's shuffle buffer (training).
        mean_after_crop: with mean="image", subtract the crop of the mean image after the crop
            (two 224×224 passes) instead of the whole mean image before it (one 256×256 float
            pass); the same numbers to float32 rounding. Off by default (issue 13: unmeasured).
        hw_decoder_load: share of the JPEGs the GPU's hardware decoder takes (0–1; nvJPEG's
            CUDA decoder the rest); ignored on the CPU.
    """
    options = resolve_options(OUT, split, batch_size, rank, world_size, seed, augment, lighting, mean, ten_crop,
                              shuffle, drop_last)
    device = _check(dtype, memory_format, shuffle_buffer, hw_decoder_load, device)
    manifest = open_split(options)
    norm = load_normalisation(OUT, manifest, mean)
    from pipeline.graph import require_dali

    require_dali()
    return DaliLoader(options, manifest, norm, device, dtype, memory_format,
                      num_threads or default_threads(), prefetch, prepare_next=prepare_next,
                      shuffle_buffer=shuffle_buffer, mean_after_crop=bool(mean_after_crop),
                      hw_decoder_load=float(hw_decoder_load))


def _check(dtype, memory_format, shuffle_buffer, hw_decoder_load, device) -> torch.device:
    """The device, once the DALI loader's own options are checked (ValueError naming the option)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected torch.float32, torch.float16 or torch.bfloat16")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer={shuffle_buffer!r}: expected a positive integer")
    if not 0.0 <= hw_decoder_load <= 1.0:
        raise ValueError(f"hw_decoder_load={hw_decoder_load!r}: expected a share between 0 and 1")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format={memory_format!r}: expected torch.contiguous_format or torch.channels_last")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available (use device='cpu')")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(device)!r}: expected 'cuda' or 'cpu'")
    return device
