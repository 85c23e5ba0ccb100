"""A fast, exact accumulator of the training-pixel sums, producing a `shards.StatSums`.

`StatSums.add` is the reference (Σx, Σxxᵀ, per-pixel Σx as int64); at ~1 ms per image it would
cost as much as decoding. This accumulator gives the same integers for a fraction of that:
  * per-pixel Σx in uint32 over the whole RGBX buffer (contiguous, no strided copies);
  * Σ x_c·x_d per pixel position in float32 planes: each product is an integer ≤ 255² and a
    float32 holds integers exactly up to 2²⁴, so up to 2²⁴/255² = 258 images add up exactly;
    every 256 images the planes (and the uint32 pixel sums) are folded into int64 totals.
"""
import numpy as np

from shards.stats import StatSums

FOLD_EVERY = 256  # images; 256 · 255² = 16,646,400 < 2²⁴ = 16,777,216


class PixelSums:
    """Accumulates uint8 size×size RGBX (or RGB) images; `.stat_sums()` gives the StatSums."""

    def __init__(self, size: int = 256):
        self.size = size
        self.images = 0
        n = size * size
        self._pixel = np.zeros((size, size, 4), np.uint32)
        self._planes = np.empty((3, n), np.float32)  # R, G, B of the current image
        self._prod = np.empty((3, n), np.float32)
        self._squares = np.zeros((3, n), np.float32)  # Σ r², g², b² per pixel position
        self._cross = np.zeros((3, n), np.float32)  # Σ rg, gb, br per pixel position
        self._outer = np.zeros((3, 3), np.int64)  # folded totals
        self._pixel_total = np.zeros((size, size, 3), np.int64)
        self._pending = 0  # images in the float32 planes

    def add(self, pixels: np.ndarray) -> None:
        s = self.size
        if pixels.dtype != np.uint8 or pixels.shape[:2] != (s, s) or pixels.shape[2] not in (3, 4):
            raise ValueError(f"expected uint8 {s}x{s}x3 or x4, got {pixels.dtype} {pixels.shape}")
        if pixels.shape[2] == 4:
            np.add(self._pixel, pixels, out=self._pixel)
        else:
            np.add(self._pixel[..., :3], pixels, out=self._pixel[..., :3])
        p, q = self._planes, self._prod
        p[:] = pixels[..., :3].reshape(-1, 3).T
        np.multiply(p, p, out=q)
        np.add(self._squares, q, out=self._squares)
        np.multiply(p[0], p[1], out=q[0])
        np.multiply(p[1], p[2], out=q[1])
        np.multiply(p[2], p[0], out=q[2])
        np.add(self._cross, q, out=self._cross)
        self.images += 1
        self._pending += 1
        if self._pending == FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        sq = self._squares.sum(axis=1, dtype=np.float64)  # exact: integers < 2⁵³
        cr = self._cross.sum(axis=1, dtype=np.float64)
        o = np.array([[sq[0], cr[0], cr[2]], [cr[0], sq[1], cr[1]], [cr[2], cr[1], sq[2]]])
        self._outer += o.astype(np.int64)
        self._pixel_total += self._pixel[..., :3]
        self._pixel[:] = 0
        self._squares[:] = 0
        self._cross[:] = 0
        self._pending = 0

    def stat_sums(self) -> StatSums:
        """The exact sums so far, as the int64 StatSums of the shards package."""
        self._fold()
        pixel_sum = self._pixel_total.copy()
        return StatSums(
            size=self.size,
            images=self.images,
            sum=pixel_sum.sum(axis=(0, 1)),
            outer=self._outer.copy(),
            pixel_sum=pixel_sum,
        )
