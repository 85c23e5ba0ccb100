"""The DALI pipeline definitions: read → decode → (− mean image) → crop · mirror · normalise.

One graph serves the GPU and the CPU: `device_id` set means `mixed` JPEG decoding (nvJPEG, with
the hardware decoder where the GPU has one) and every per-pixel op on the GPU; `device_id=None`
means the same ops on the CPU (CI, machines without a GPU). The maths is identical.

Per image (paper Section 4.1, DESIGN.md Contract 2), in 0–255 units:

    mean="image":    out = crop_mirror(x − 255·M) + 255·eigvec(α ⊙ eigval)
    mean="channel":  out = (crop_mirror(x) − 255·(μ − offset)) / (255·σ)
                         = (x/255 + offset − μ) / σ

Why this shape, for speed: the lighting offset is one RGB constant per image and normalisation
is linear, so it folds into `crop_mirror_normalize`'s per-sample `mean` argument (3 floats per
image from the external source). DALI's crop_mirror_normalize kernels take mean and 1/std per
sample in every case, so the lighting pipeline runs exactly the same ops and kernels as the one
without lighting; no extra op, no extra pass over the pixels, no DALI random op.

The per-pixel mean image M is subtracted from the whole 256×256 decoded image *before*
cropping, by one arithmetic op against a constant tensor (`fn.constant` builds it once and
returns the same memory every iteration; 768 KiB, it stays in the GPU's L2). Cropping and
mirroring then act on the difference, so the mean image is cropped and mirrored with the
sample for the random crop and for all ten views of ten-crop testing alike (crop and mirror
commute with the subtraction). Cost: one extra float32 pass per image (≈ 2 MB of traffic per
image, ≈ 80 GB/s at 40k img/s, under 2% of an H100's bandwidth), and crop_mirror_normalize
takes its generic kernel (float input) instead of the uint8 HWC special case. The other
orders cost more: subtracting a cropped mean image after the crop needs a second
crop_mirror_normalize on the mean image plus an arithmetic op (three passes), and a torch-side
gather of the mean crop adds two kernels per batch outside DALI's prefetching.

The crop corner, mirror flag and lighting α are drawn on the host (`pipeline.lighting`) and fed
in through `fn.external_source`, so they are exact functions of (seed, rank, epoch). The only
randomness inside DALI is the reader's buffered shuffle, seeded per epoch by the loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.lighting import CROP, STRIDE, TEN_CROP_VIEWS

DALI_MISSING = "NVIDIA DALI is not installed: pip install 'alexnet-imagenet[cuda13]' (or [cuda12])"
READER_NAME = "reader"
OUTPUTS = ("images", "labels")


class DALINotInstalled(ImportError):
    """DALI is missing; the message says what to install."""


def require_dali():
    """Import DALI or raise DALINotInstalled with the install line."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        raise DALINotInstalled(DALI_MISSING) from None
    return nvidia.dali


@dataclass
class PipelineSpec:
    """Everything one epoch's pipeline needs; built by `pipeline.loader`."""

    tars: Sequence[str]
    indexes: Sequence[str]
    batch_size: int
    shard_id: int  # which of num_shards equal slices of the split to read
    num_shards: int
    shuffle: bool
    seed: int  # the reader's shuffle (the only randomness inside DALI)
    device_id: Optional[int]  # None: CPU-only pipeline
    num_threads: int
    prefetch: int
    ten_crop: bool
    mean: str  # "image" or "channel"
    mean_image: Optional[np.ndarray]  # float32 256×256×3 in 0–255 units ("image")
    channel_mean: Sequence[float]  # 0–255 units ("channel")
    channel_std: Sequence[float]  # 0–255 units ("channel")
    per_sample_mean: bool  # lighting on: crop_mirror_normalize's mean comes per image
    half: bool  # float16 output instead of float32
    layout: str  # "CHW" or "HWC" (channels-last)
    initial_fill: int = 4096  # shuffle buffer, in samples
    hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)


def build_pipeline(spec: PipelineSpec, source: Callable):
    """A DALI Pipeline with outputs (images, label bytes).

    `source(iteration)` returns the per-sample arguments of that batch as a tuple of arrays with
    the batch as first axis: (crop_pos_x, crop_pos_y, mirror, mean) without ten-crop, (mean,)
    with it; `mean` is (B, 3) float32 and only present when `spec.per_sample_mean`.
    """
    require_dali()
    from nvidia.dali import Pipeline, fn, types

    gpu = spec.device_id is not None
    pipe = Pipeline(
        batch_size=spec.batch_size,
        num_threads=spec.num_threads,
        device_id=spec.device_id,
        seed=spec.seed,
        prefetch_queue_depth=spec.prefetch,
    )
    with pipe:
        jpegs, cls = fn.readers.webdataset(
            name=READER_NAME,
            paths=list(spec.tars),
            index_paths=list(spec.indexes),
            ext=["jpg", "cls"],
            missing_component_behavior="error",
            shard_id=spec.shard_id,
            num_shards=spec.num_shards,
            random_shuffle=spec.shuffle,
            initial_fill=spec.initial_fill,
            pad_last_batch=True,
        )
        if gpu:
            images = fn.decoders.image(
                jpegs,
                device="mixed",
                output_type=types.RGB,
                hw_decoder_load=spec.hw_decoder_load,
                preallocate_width_hint=256,
                preallocate_height_hint=256,
            )
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

        n_args = (0 if spec.ten_crop else 3) + (1 if spec.per_sample_mean else 0)
        args = []
        if n_args:
            dtypes = ([] if spec.ten_crop else [types.FLOAT, types.FLOAT, types.INT32]) + (
                [types.FLOAT] if spec.per_sample_mean else []
            )
            args = fn.external_source(
                source=lambda info: source(info.iteration),
                num_outputs=n_args,
                batch=True,
                batch_info=True,
                dtype=dtypes,
            )
            args = list(args) if isinstance(args, (list, tuple)) else [args]

        if spec.mean == "image":
            mean_image = types.Constant(
                np.ascontiguousarray(spec.mean_image, np.float32), device="gpu" if gpu else "cpu"
            )
            images = images - mean_image  # uint8 − float32 → float32, full 256×256 image
            mean, std = 0.0, 1.0
        else:
            mean, std = list(spec.channel_mean), list(spec.channel_std)
        if spec.per_sample_mean:
            mean = args[-1]

        def view(x0, y0, mirror):
            return fn.crop_mirror_normalize(
                images,
                crop=(CROP, CROP),
                crop_pos_x=x0,  # relative: corner = pos × (256 − 224), so x0/32 is exact
                crop_pos_y=y0,
                mirror=mirror,
                mean=mean,
                std=std,
                dtype=types.FLOAT16 if spec.half else types.FLOAT,
                output_layout=spec.layout,
            )

        if spec.ten_crop:
            out = fn.stack(*[view(x / STRIDE, y / STRIDE, m) for x, y, m in TEN_CROP_VIEWS], axis=0)
        else:
            out = view(args[0], args[1], args[2])
        labels = fn.pad(cls, fill_value=0)  # ASCII digits, right-padded with NUL: parsed on the host
        pipe.set_outputs(out, labels)
    return pipe
