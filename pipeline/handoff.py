"""The uint8 hand-off's torch side (docs/DESIGN.md, "Loader"): DALI's uint8 crops → the
network's input, in one fused elementwise op on the device.

DALI hands over each view already cropped and mirrored, uint8 HWC (N×224×224×3, or
N×10×224×224×3 for ten-crop). What the float hand-off does inside DALI is done here, per
element, with the same formulas (pipeline.graph):

    out[n, c, h, w] = (x[n, h, w, c] − 255·M[y0 + h, x0 + w', c] − shift[n, c]) · scale[c]

where w' = 223 − w for a mirrored view (the crop of the mean image is mirrored with the
sample), shift is the lighting-folded per-sample mean of `per_sample_shift` and scale is 1 for
mean="image" (M is the mean image, Section 2) or 1/(255σ) for mean="channel" (M = 0). The
result is written once, in the loader's dtype (bfloat16 for a bf16 autocast step: no second
cast pass) and memory format. On a GPU the function is compiled by torch.compile into one
kernel: it reads 1 byte per element and writes 2 or 4; the mean image (768 KiB) stays in L2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from pipeline.draws import CROP, TEN_CROP_VIEWS, Draws
from pipeline.normalise import Normalisation


def per_sample_shift(norm: Normalisation, mean: str, draws: Draws) -> np.ndarray:
    """(n, 3) float32: what each image's pixels are shifted by before the scale, in 0–255 units:
    −255·offset for mean="image" (Section 4.1's lighting), 255·μ − 255·offset for "channel"."""
    offsets = norm.offsets255(draws.alpha)
    base = 0.0 if mean == "image" else norm.channel_mean
    return (base - offsets).astype(np.float32)


def normalise(images: torch.Tensor, mean_image: Optional[torch.Tensor], x0: torch.Tensor, y0: torch.Tensor,
              mirror: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
              channels_last: bool) -> torch.Tensor:
    """The fused op of the module docstring. images: uint8 (N, V, 224, 224, 3); x0, y0, mirror:
    (N or 1, V) int64 views; shift: (N, 3); scale: (3,). Returns (N, V, 3, 224, 224) in `dtype`,
    channels-last strides when asked (a view of the HWC result), else contiguous."""
    x = images.float()
    if mean_image is not None:
        k = torch.arange(CROP, device=images.device)
        rows = y0[..., None] + k  # (N, V, 224)
        cols = x0[..., None] + torch.where(mirror[..., None] != 0, CROP - 1 - k, k)
        x = x - mean_image[rows[..., :, None], cols[..., None, :]]
    out = ((x - shift[:, None, None, None, :]) * scale).to(dtype).movedim(-1, -3)
    return out if channels_last else out.contiguous()


def normalise_cpu(images: torch.Tensor, mean_image: Optional[torch.Tensor], x0: torch.Tensor, y0: torch.Tensor,
                  mirror: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                  channels_last: bool) -> torch.Tensor:
    """`normalise` as the CPU computes it fastest without a compiler: per view, the mean
    image's crop is a slice (of the mirrored mean image for a mirrored view: M[y+h, x+223−w] =
    Mf[y+h, 32−x+w] with Mf = M mirrored), so there is no gather, and each view is written in
    two passes into its place of the output. Single-threaded: DALI's worker threads are busy on
    the next batches meanwhile, and torch's intra-op threads spinning beside them made the CPU
    loader 3× slower on 2 cores (measured: 365 against 1,078 img/s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _normalise_cpu(images, mean_image, x0, y0, mirror, shift, scale, dtype, channels_last)
    finally:
        torch.set_num_threads(threads)


def _normalise_cpu(images, mean_image, x0, y0, mirror, shift, scale, dtype, channels_last):
    n, v = images.shape[:2]
    if channels_last:
        hwc = torch.empty((n, v, CROP, CROP, 3), dtype=dtype)
        out = hwc.movedim(-1, -3)
    else:
        out = torch.empty((n, v, 3, CROP, CROP), dtype=dtype)
        hwc = out.movedim(-3, -1)
    view = torch.empty((CROP, CROP, 3), dtype=torch.float32)  # one view at a time, in cache
    flipped = mean_image.flip(1) if mean_image is not None else None
    side = mean_image.shape[1] if mean_image is not None else 0
    unit = bool((scale == 1).all())
    x0, y0, mirror = (t.expand(n, v).tolist() for t in (x0, y0, mirror))
    for i in range(n):
        for j in range(v):
            if mean_image is None:
                view.copy_(images[i, j])
            else:
                x, y = x0[i][j], y0[i][j]
                if mirror[i][j]:
                    x, source = side - CROP - x, flipped
                else:
                    source = mean_image
                torch.sub(images[i, j], source[y:y + CROP, x:x + CROP], out=view)
            view.sub_(shift[i])
            if not unit:
                view.mul_(scale)
            hwc[i, j].copy_(view)  # the cast to dtype and the layout, in the one write
    return out


_compiled = {}


def fused(device: torch.device):
    """`normalise`, compiled into one kernel on CUDA (once per process); `normalise_cpu` on the CPU."""
    if device.type != "cuda":
        return normalise_cpu
    if "cuda" not in _compiled:
        _compiled["cuda"] = torch.compile(normalise, dynamic=False)
    return _compiled["cuda"]


@dataclass
class EpochViews:
    """One epoch's per-position views on the device: row p is the p-th image of the stream."""

    x0: torch.Tensor  # (n, V) int64, or (1, 10) for ten-crop's fixed views
    y0: torch.Tensor
    mirror: torch.Tensor
    shift: torch.Tensor  # (n, 3) float32


class Handoff:
    """DALI's uint8 crops → the loader's output, on the loader's device."""

    def __init__(self, norm: Normalisation, mean: str, dtype: torch.dtype, memory_format, device, ten_crop: bool):
        self.device = torch.device(device)
        self.mean, self.dtype, self.ten_crop = mean, dtype, ten_crop
        self.channels_last = memory_format == torch.channels_last
        self.norm = norm
        self.mean_image = (torch.as_tensor(norm.mean_image, dtype=torch.float32, device=self.device)
                           if mean == "image" else None)
        scale = np.ones(3) if mean == "image" else 1.0 / norm.channel_std
        self.scale = torch.as_tensor(scale, dtype=torch.float32, device=self.device)
        self.op = fused(self.device)

    def epoch(self, draws: Draws) -> EpochViews:
        """The epoch's views and shifts, moved to the device once (a few KB per epoch)."""
        def dev(a):
            return torch.as_tensor(np.asarray(a), device=self.device)

        if self.ten_crop:
            x0, y0, mirror = (dev([[v[i] for v in TEN_CROP_VIEWS]]).long() for i in range(3))
        else:
            x0, y0, mirror = (dev(a).long()[:, None] for a in (draws.x0, draws.y0, draws.mirror))
        return EpochViews(x0, y0, mirror, dev(per_sample_shift(self.norm, self.mean, draws)))

    def __call__(self, images: torch.Tensor, views: EpochViews, start: int) -> torch.Tensor:
        """The batch whose first image is stream position `start`: N×3×224×224 (N×10×… ten-crop)."""
        n = images.shape[0]
        rows = slice(start, start + n)
        x0, y0, mirror = (v if self.ten_crop else v[rows] for v in (views.x0, views.y0, views.mirror))
        if not self.ten_crop:
            images = images[:, None]  # one view per image
        with torch.profiler.record_function("alexnet.handoff"):  # the loader's side in `alexnet profile --trace`
            out = self.op(images, self.mean_image, x0, y0, mirror, views.shift[rows], self.scale, self.dtype,
                          self.channels_last)
        return out if self.ten_crop else out[:, 0]
