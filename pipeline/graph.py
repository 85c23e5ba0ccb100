"""The DALI graph of one epoch: read → decode → crop · mirror (→ normalise).

One graph serves the GPU and the CPU: a CUDA device means `mixed` JPEG decoding (nvJPEG, with
the hardware decoder where the GPU has one) and every per-pixel op on the GPU; a CPU device
means the same ops on the CPU (CI, machines without a GPU). The maths is identical.

What DALI hands to torch is the loader's `handoff` (docs/DESIGN.md, "Loader"):

  "float"  the network's input, normalised inside DALI, in 0–255 units per image
           (paper Section 4.1):
               mean="image":    out = crop_mirror(x − 255·M) + 255·eigvec(α ⊙ eigval)
               mean="channel":  out = (crop_mirror(x) − 255·(μ − offset)) / (255·σ)
  "uint8"  the uint8 crops, HWC, mirrored; `pipeline.handoff` applies the same formulas on the
           device in one fused op. Where the decoder runs on the CPU (libjpeg-turbo) it decodes
           only the crop's region (ROI decoding; not for ten-crop, whose views cover the image).

`cpu_decode` (GPU loaders) routes a fixed share of each batch to libjpeg-turbo on the CPU
cores inside the same graph (DALI's conditional split and merge), so those JPEGs take no SM
time; the rest go to nvJPEG (`hw_decoder_load` of them to the hardware decoder). One reader
feeds both, so the batches stay the reference loader's.

The crop corner, mirror flag, lighting α and the decoder route are decided on the host
(`pipeline.draws`) and fed in through `fn.external_source`, so they are exact functions of
(seed, rank, epoch). The only randomness inside DALI is the reader's buffered shuffle, seeded
per epoch by the loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.draws import CROP, STRIDE, TEN_CROP_VIEWS
from pipeline.plan import LoaderSpec
from shards import IMAGE_SIZE

DALI_MISSING = "NVIDIA DALI is not installed: pip install 'alexnet-imagenet[cuda13]' (or [cuda12])"
READER_NAME = "reader"
OUTPUTS = ("images", "labels")
# the cuts `alexnet profile --stages` times (pipeline.stages): each adds one piece to the one before
CUTS = ("read", "decode", "crop", "mean_image", "views")


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
class EpochGraph:
    """One epoch's graph: the loader's spec and what the epoch adds to it (built by
    `pipeline.dali_loader`; `pipeline.stages` cuts it with `stop`)."""

    spec: LoaderSpec
    tars: Sequence[str]  # in the epoch's shard order
    indexes: Sequence[str]
    shard_id: int  # which of spec.world_size equal slices of the split to read
    slice_samples: int  # samples in that slice (the shuffle buffer never holds more)
    seed: int  # the reader's shuffle (the only randomness inside DALI)
    device_id: Optional[int]  # None: CPU-only pipeline
    mean_image: Optional[np.ndarray]  # float32 256×256×3 in 0–255 units (mean="image")
    channel_mean: Sequence[float]  # 0–255 units (mean="channel")
    channel_std: Sequence[float]  # 0–255 units (mean="channel")
    stop: str = "views"  # the last cut built (CUTS); "views" is the whole graph
    num_shards: Optional[int] = None  # slices the tars are cut into (None: spec.world_size; 1: the tars are the slice)

    @property
    def gpu(self) -> bool:
        return self.device_id is not None

    @property
    def split_decode(self) -> bool:
        """A share of each batch is decoded on the CPU inside a GPU graph."""
        return self.gpu and self.spec.cpu_decode > 0

    @property
    def roi(self) -> bool:
        """The CPU decoder decodes only the crop (uint8 hand-off, one view per image)."""
        return self.spec.handoff == "uint8" and not self.spec.ten_crop and self.stop != "decode"

    @property
    def lit(self) -> bool:
        """The lighting offset is folded into DALI's per-sample mean (float hand-off)."""
        return self.spec.handoff == "float" and self.spec.lighting > 0 and self.stop == "views"


def source_names(graph: EpochGraph) -> list:
    """The per-sample arrays the external source hands each batch, in order: the crop corner
    and flip (x, y relative to the 32-pixel stride, mirror), the lighting-folded mean ("shift",
    float hand-off with lighting) and the decoder route ("on_cpu", split decoding)."""
    names = [] if graph.spec.ten_crop else ["x", "y", "mirror"]
    if graph.lit:
        names.append("shift")
    if graph.split_decode:
        names.append("on_cpu")
    return names


SOURCE_TYPES = {"x": "FLOAT", "y": "FLOAT", "mirror": "INT32", "shift": "FLOAT", "on_cpu": "BOOL"}


def build_pipeline(graph: EpochGraph, source: Callable):
    """A DALI Pipeline with outputs (images, label bytes).

    `source(iteration)` returns a dict of per-sample arrays (batch first) holding at least
    `source_names(graph)`: x, y (float32 corner / 32), mirror (int32), shift ((B, 3) float32),
    on_cpu (bool).
    """
    require_dali()
    from nvidia.dali import Pipeline

    spec = graph.spec
    pipe = Pipeline(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=graph.device_id,
                    seed=graph.seed, prefetch_queue_depth=spec.prefetch)
    with pipe:  # DALI seeds its ops from the seed in creation order: the reader (the only random op) first
        jpegs, cls = read(graph)
        if graph.stop == "read":
            pipe.set_outputs(jpegs, labels(cls))
            return pipe
        args = per_sample_args(graph, source)
        images = decode(graph, jpegs, args)
        if graph.stop != "decode":
            images = views(graph, images, args)
        pipe.set_outputs(images, labels(cls))
    return pipe


def read(graph: EpochGraph):
    """(JPEG bytes, label bytes) of this rank's slice, padded to whole batches."""
    from nvidia.dali import fn

    spec = graph.spec
    return fn.readers.webdataset(
        name=READER_NAME, paths=list(graph.tars), index_paths=list(graph.indexes), ext=["jpg", "cls"],
        missing_component_behavior="error", shard_id=graph.shard_id,
        num_shards=graph.num_shards or spec.world_size,
        random_shuffle=spec.shuffle, initial_fill=max(1, min(spec.shuffle_buffer, graph.slice_samples)),
        pad_last_batch=True,
    )


def per_sample_args(graph: EpochGraph, source: Callable) -> dict:
    """The host's decisions of each batch (`source_names`), as DALI nodes by name."""
    from nvidia.dali import fn, types

    names = source_names(graph)
    if not names:
        return {}
    nodes = fn.external_source(source=lambda info: tuple(source(info.iteration)[n] for n in names),
                               num_outputs=len(names), batch=True, batch_info=True,
                               dtype=[getattr(types, SOURCE_TYPES[n]) for n in names])
    return dict(zip(names, nodes if isinstance(nodes, (list, tuple)) else [nodes]))


def decode(graph: EpochGraph, jpegs, args: dict):
    """uint8 RGB images, HWC: the whole 256×256 image, or its crop where `graph.roi`.

    On a GPU with `cpu_decode`, the batch is split by the host's route: libjpeg-turbo decodes
    its share on the CPU threads (copied to the GPU after), nvJPEG the rest, and the two halves
    are merged back in batch order.
    """
    from nvidia.dali import fn

    if not graph.gpu:
        return _cpu_decode(graph, jpegs, args)
    if not graph.split_decode:
        return _gpu_decode(graph, jpegs, args)
    route = args["on_cpu"]
    cpu_args, gpu_args = {}, {}
    for name in ("x", "y"):
        if graph.roi:
            cpu_args[name], gpu_args[name] = fn._conditional.split(args[name], predicate=route)
    cpu_jpegs, gpu_jpegs = fn._conditional.split(jpegs, predicate=route)
    on_cpu = _cpu_decode(graph, cpu_jpegs, cpu_args).gpu()
    return fn._conditional.merge(on_cpu, _gpu_decode(graph, gpu_jpegs, gpu_args), predicate=route)


def _cpu_decode(graph: EpochGraph, jpegs, args: dict):
    from nvidia.dali import fn, types

    if graph.roi:  # libjpeg-turbo skips the rows and blocks outside the crop (tested: the same pixels)
        return fn.decoders.image_crop(jpegs, device="cpu", output_type=types.RGB, crop=(CROP, CROP),
                                      crop_pos_x=args["x"], crop_pos_y=args["y"])
    return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)


def _gpu_decode(graph: EpochGraph, jpegs, args: dict):
    """nvJPEG on the whole image (ROI decoding would turn the hardware decoder off), then the crop."""
    from nvidia.dali import fn, types

    images = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB,
                               hw_decoder_load=graph.spec.hw_decoder_load,
                               preallocate_width_hint=IMAGE_SIZE, preallocate_height_hint=IMAGE_SIZE)
    if graph.roi:
        images = fn.crop(images, crop=(CROP, CROP), crop_pos_x=args["x"], crop_pos_y=args["y"])
    return images


def views(graph: EpochGraph, images, args: dict):
    """The network's views of each image: one at the host's corner and flip, or ten-crop's ten
    (N×10×…, Section 4.1), each one op; uint8 HWC for the uint8 hand-off, else normalised here."""
    import torch
    from nvidia.dali import fn, types

    spec = graph.spec
    if graph.roi:  # decoded as the crop already (uint8 hand-off): the flip is left
        return fn.flip(images, horizontal=args["mirror"])
    if spec.handoff == "uint8":
        mean, std, dtype, layout = 0.0, 1.0, types.UINT8, "HWC"
    elif graph.stop == "crop":  # the cut before normalisation: crop and mirror, as floats
        mean, std, dtype, layout = 0.0, 1.0, types.FLOAT, _layout(spec)
    else:
        images, mean, std = normalisation(graph, images, args)
        dtype, layout = (types.FLOAT16 if spec.dtype == torch.float16 else types.FLOAT), _layout(spec)

    def cut(x0, y0, mirror):
        return fn.crop_mirror_normalize(
            images, crop=(CROP, CROP),
            crop_pos_x=x0, crop_pos_y=y0,  # relative: corner = pos × STRIDE, so x0/32 is exact
            mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout=layout,
        )

    if spec.ten_crop:
        return fn.stack(*[cut(x / STRIDE, y / STRIDE, m) for x, y, m in TEN_CROP_VIEWS], axis=0)
    return cut(args["x"], args["y"], args["mirror"])


def _layout(spec: LoaderSpec) -> str:
    import torch

    return "HWC" if spec.memory_format == torch.channels_last else "CHW"


def normalisation(graph: EpochGraph, images, args: dict):
    """(images, mean, std) for crop_mirror_normalize (float hand-off): images − 255·M with (0, 1)
    for mean="image" (Section 2's mean image), the images with the channel (μ, σ) for
    mean="channel"; with lighting the mean is the per-sample one from the host."""
    if graph.spec.mean == "image":
        images = images - mean_image_constant(graph)  # uint8 − float32
        mean, std = 0.0, 1.0
    else:
        mean, std = list(graph.channel_mean), list(graph.channel_std)
    if graph.lit:
        # The lighting offset is one RGB constant per image and normalisation is linear, so it
        # folds into this per-sample mean (3 floats per image): crop_mirror_normalize takes mean
        # and 1/std per sample in every case, so lighting adds no op, no pass, no DALI random op.
        mean = args["shift"]
    return images, mean, std


def mean_image_constant(graph: EpochGraph):
    """The mean image 255·M (256×256×3 float32, HWC) as a DALI constant on the graph's device."""
    from nvidia.dali import types

    # Subtracted before cropping, so crop and mirror (which commute with the subtraction) crop
    # and mirror the mean image with the sample, for the random crop and all ten views alike.
    # Cost: one float32 pass over the 256×256 image (≈ 2 MB of traffic per image), and
    # crop_mirror_normalize's generic float kernel: what the uint8 hand-off moves to torch.
    return types.Constant(np.ascontiguousarray(graph.mean_image, np.float32), device="gpu" if graph.gpu else "cpu",
                          layout="HWC")


def labels(cls):
    """The `.cls` bytes, right-padded with NUL to one length; parsed to integers on the host."""
    from nvidia.dali import fn

    return fn.pad(cls, fill_value=0)
