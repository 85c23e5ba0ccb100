"""Exact integer sums of training pixels, and the [0,1] statistics derived from them.

Paper Section 4.1 (PCA lighting) needs the eigenvectors and eigenvalues of the 3×3 covariance
of RGB pixel values over the training set; the paper's input subtracts the per-pixel mean image.
Sums of the 0–255 values are kept as int64 (Σx, Σxxᵀ, per-pixel Σx), so the result is identical
for any worker count, order, resume or merge. Bound: 1.3 M images × 65,536 pixels × 255² ≈ 5.5e15
< 2⁶³ ≈ 9.2e18, so int64 cannot overflow on ImageNet.
"""
from dataclasses import dataclass, field

import numpy as np

from shards.format import IMAGE_SIZE


@dataclass
class StatSums:
    """Integer sums over images of shape SIZE×SIZE×3 (uint8)."""

    size: int = IMAGE_SIZE
    images: int = 0
    sum: np.ndarray = field(default=None)  # (3,) int64: Σ x_c
    outer: np.ndarray = field(default=None)  # (3, 3) int64: Σ x xᵀ
    pixel_sum: np.ndarray = field(default=None)  # (size, size, 3) int64: Σ over images

    def __post_init__(self):
        if self.sum is None:
            self.sum = np.zeros(3, np.int64)
        if self.outer is None:
            self.outer = np.zeros((3, 3), np.int64)
        if self.pixel_sum is None:
            self.pixel_sum = np.zeros((self.size, self.size, 3), np.int64)

    @property
    def pixels(self) -> int:
        return self.images * self.size * self.size

    def add(self, image: np.ndarray) -> None:
        """Add one uint8 image (size×size×3)."""
        if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.size}x{self.size}x3, got {image.dtype} {image.shape}")
        x = image.reshape(-1, 3).astype(np.float64)
        # float64 products are exact here: 65,536 × 255² ≈ 4.3e9 < 2⁵³.
        self.outer += np.rint(x.T @ x).astype(np.int64)
        self.sum += image.reshape(-1, 3).sum(axis=0, dtype=np.int64)
        self.pixel_sum += image
        self.images += 1

    def merge(self, other: "StatSums") -> "StatSums":
        """Add `other`'s sums to these (in place); returns self."""
        if other.size != self.size:
            raise ValueError("cannot merge sums of different image sizes")
        self.images += other.images
        self.sum += other.sum
        self.outer += other.outer
        self.pixel_sum += other.pixel_sum
        return self

    def to_json(self) -> dict:
        """The scalar sums, exactly (Python ints); `pixel_sum` is saved separately as .npy."""
        return {"images": int(self.images), "sum": self.sum.tolist(), "outer": self.outer.tolist()}

    @classmethod
    def from_json(cls, d: dict, pixel_sum: np.ndarray, size: int = IMAGE_SIZE) -> "StatSums":
        """The inverse of `to_json`, with the per-pixel sums read from their .npy."""
        return cls(
            size=size,
            images=int(d["images"]),
            sum=np.array(d["sum"], np.int64),
            outer=np.array(d["outer"], np.int64),
            pixel_sum=np.asarray(pixel_sum, np.int64).copy(),
        )

    def derive(self):
        """(stats dict for values in [0,1], float32 mean image in [0,1])."""
        if self.images == 0:
            raise ValueError("no training images: statistics are undefined")
        n = float(self.pixels)
        mu = self.sum / n  # 0–255 units
        cov = (self.outer / n - np.outer(mu, mu)) / 255.0**2
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval, eigvec = eigval[order], eigvec[:, order]
        # eigh's signs are arbitrary: fix them so each column's components sum to >= 0
        # (the first one is then the positive "brightness" direction).
        eigvec = eigvec * np.where(eigvec.sum(axis=0) < 0, -1.0, 1.0)
        mean_image = (self.pixel_sum / (self.images * 255.0)).astype(np.float32)
        stats = {
            "pixels": int(self.pixels),
            "images": int(self.images),
            "mean": (mu / 255.0).tolist(),
            "std": np.sqrt(np.diag(cov)).tolist(),
            "cov": cov.tolist(),
            "eigval": eigval.tolist(),
            "eigvec": eigvec.tolist(),  # row-major; COLUMNS are the eigenvectors
        }
        return stats, mean_image
