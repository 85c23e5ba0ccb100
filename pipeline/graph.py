"""The DALI graph of one epoch: read → decode → (− mean image) → crop · mirror · normalise.

One graph serves the GPU and the CPU: `device_id` set means `mixed` JPEG decoding (nvJPEG, with
the hardware decoder where the GPU has one) and every per-pixel op on the GPU; `device_id=None`
means the same ops on the CPU (CI, machines without a GPU). The maths is identical.

Per image (paper Section 4.1, docs/DESIGN.md, "Loader"), in 0–255 units:

    mean="image":    out = crop_mirror(x − 255·M) + 255·eigvec(α ⊙ eigval)
    mean="channel":  out = (crop_mirror(x) − 255·(μ − offset)) / (255·σ)
                         = (x/255 + offset − μ) / σ

The crop corner, mirror flag and lighting α are drawn on the host (`pipeline.draws`) and fed
in through `fn.external_source`, so they are exact functions of (seed, rank, epoch). The only
randomness inside DALI is the reader's buffered shuffle, seeded per epoch by the loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.draws import CROP, STRIDE, TEN_CROP_VIEWS
from shards import IMAGE_SIZE

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
    """Everything one epoch's pipeline needs; built by `pipeline.dali_loader`."""

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
    mean: str  # "image" or "channel" ("none": no normalisation, for pipeline.stages)
    mean_image: Optional[np.ndarray]  # float32 256×256×3 in 0–255 units ("image")
    channel_mean: Sequence[float]  # 0–255 units ("channel")
    channel_std: Sequence[float]  # 0–255 units ("channel")
    per_sample_mean: bool  # lighting on: crop_mirror_normalize's mean comes per image
    half: bool  # float16 output instead of float32
    layout: str  # "CHW" or "HWC" (channels-last)
    initial_fill: int = 4096  # shuffle buffer, in samples
    hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)
    mean_after_crop: bool = False  # mean="image": subtract the cropped mean image after the crop (a candidate, issue 13)
    stop: str = "views"  # the last stage built: "read", "decode" or "views" (the whole graph; pipeline.stages)

    @property
    def gpu(self) -> bool:
        return self.device_id is not None


def build_pipeline(spec: PipelineSpec, source: Callable):
    """A DALI Pipeline with outputs (images, label bytes).

    `source(iteration)` returns the per-sample arguments of that batch as a tuple of arrays with
    the batch as first axis: (crop_pos_x, crop_pos_y, mirror, mean) without ten-crop, (mean,)
    with it; `mean` is (B, 3) float32 and only present when `spec.per_sample_mean`.
    """
    require_dali()
    from nvidia.dali import Pipeline

    pipe = Pipeline(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                    seed=spec.seed, prefetch_queue_depth=spec.prefetch)
    with pipe:  # DALI seeds its ops from spec.seed in creation order: the reader (the only random op) first
        jpegs, cls = read(spec)
        if spec.stop == "read":  # the truncated graphs `alexnet profile --stages` times
            pipe.set_outputs(jpegs, labels(cls))
            return pipe
        images = decode(spec, jpegs)
        if spec.stop == "decode":
            pipe.set_outputs(images, labels(cls))
            return pipe
        args = per_sample_args(spec, source)
        images, mean, std = normalisation(spec, images, args)
        pipe.set_outputs(views(spec, images, args, mean, std), labels(cls))
    return pipe


def read(spec: PipelineSpec):
    """(JPEG bytes, label bytes) of this rank's slice, padded to whole batches."""
    from nvidia.dali import fn

    return fn.readers.webdataset(
        name=READER_NAME, paths=list(spec.tars), index_paths=list(spec.indexes), ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=spec.shard_id, num_shards=spec.num_shards,
        random_shuffle=spec.shuffle, initial_fill=spec.initial_fill, pad_last_batch=True,
    )


def decode(spec: PipelineSpec, jpegs):
    """uint8 RGB images: nvJPEG (with the hardware decoder) on a GPU, libjpeg-turbo on the CPU."""
    from nvidia.dali import fn, types

    if not spec.gpu:
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
    return fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, hw_decoder_load=spec.hw_decoder_load,
                             preallocate_width_hint=IMAGE_SIZE, preallocate_height_hint=IMAGE_SIZE)


def per_sample_args(spec: PipelineSpec, source: Callable) -> list:
    """The host's draws of each batch (crop corner, mirror, lighting-folded mean), as DALI nodes."""
    from nvidia.dali import fn, types

    dtypes = ([] if spec.ten_crop else [types.FLOAT, types.FLOAT, types.INT32]) + (
        [types.FLOAT] if spec.per_sample_mean else [])
    if not dtypes:
        return []
    args = fn.external_source(source=lambda info: source(info.iteration), num_outputs=len(dtypes), batch=True,
                              batch_info=True, dtype=dtypes)
    return list(args) if isinstance(args, (list, tuple)) else [args]


def normalisation(spec: PipelineSpec, images, args: list):
    """(images, mean, std) for crop_mirror_normalize: images − 255·M with (0, 1) for mean="image"
    (Section 2's mean image; with `mean_after_crop` the uint8 images, `views` subtracting the
    crop of M), the images with the channel (μ, σ) for mean="channel"; with lighting the mean is
    the per-sample one from the host."""
    if spec.mean == "image":
        images = images if spec.mean_after_crop else images - mean_image_constant(spec)  # uint8 − float32
        mean, std = 0.0, 1.0
    elif spec.mean == "none":  # crop, mirror and the float conversion only (pipeline.stages)
        mean, std = 0.0, 1.0
    else:
        mean, std = list(spec.channel_mean), list(spec.channel_std)
    if spec.per_sample_mean:
        # The lighting offset is one RGB constant per image and normalisation is linear, so it
        # folds into this per-sample mean (3 floats per image): crop_mirror_normalize takes mean
        # and 1/std per sample in every case, so lighting adds no op, no pass, no DALI random op.
        mean = args[-1]
    return images, mean, std


def mean_image_constant(spec: PipelineSpec):
    """The mean image 255·M (256×256×3 float32, HWC) as a DALI constant on the graph's device."""
    from nvidia.dali import types

    # Subtracted before cropping (the default), so crop and mirror (which commute with the
    # subtraction) crop and mirror the mean image with the sample, for the random crop and all
    # ten views alike. fn.constant builds the 768 KiB tensor once (it stays in the GPU's L2).
    # Cost: one float32 pass, ≈ 2 MB of traffic per image (≈ 80 GB/s at 40k img/s, under 2% of an
    # H100's bandwidth), and crop_mirror_normalize's generic float kernel instead of its uint8
    # HWC one. `mean_after_crop` trades that for three 224×224 ops (`views`): the candidate of
    # docs/PERFORMANCE.md, "The input graph's candidates".
    return types.Constant(np.ascontiguousarray(spec.mean_image, np.float32), device="gpu" if spec.gpu else "cpu",
                          layout="HWC")


def views(spec: PipelineSpec, images, args: list, mean, std):
    """N×C×224×224 crops (N×10×… for ten-crop, Section 4.1), mirrored and normalised in one op
    each; with `mean_after_crop`, minus the same crop and mirror of the mean image (float32, then
    one cast to float16 when asked)."""
    from nvidia.dali import fn, types

    after = spec.mean == "image" and spec.mean_after_crop
    mean_image = mean_image_constant(spec) if after else None
    out_type = types.FLOAT16 if spec.half else types.FLOAT

    def cut(source, x0, y0, mirror, mean=0.0, std=1.0, dtype=types.FLOAT):
        return fn.crop_mirror_normalize(
            source, crop=(CROP, CROP),
            crop_pos_x=x0, crop_pos_y=y0,  # relative: corner = pos × STRIDE, so x0/32 is exact
            mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout=spec.layout,
        )

    def view(x0, y0, mirror):
        if not after:
            return cut(images, x0, y0, mirror, mean, std, out_type)
        x = cut(images, x0, y0, mirror, mean) - cut(mean_image, x0, y0, mirror)
        return fn.cast(x, dtype=out_type) if spec.half else x

    if spec.ten_crop:
        return fn.stack(*[view(x / STRIDE, y / STRIDE, m) for x, y, m in TEN_CROP_VIEWS], axis=0)
    return view(args[0], args[1], args[2])


def labels(cls):
    """The `.cls` bytes, right-padded with NUL to one length; parsed to integers on the host."""
    from nvidia.dali import fn

    return fn.pad(cls, fill_value=0)
