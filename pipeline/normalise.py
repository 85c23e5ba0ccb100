"""The manifest's statistics in the units the loaders use (`Normalisation`).

The manifest keeps them in [0,1] units (shards/stats.py); both loaders work on 0–255 pixel
values, so the mean image and the channel mean and std are scaled here, once. The
eigenvectors and eigenvalues stay in [0,1] units: `lighting_offset` is linear in them, and the
offset is scaled by 255 where it meets the pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.draws import lighting_offset
from shards import Manifest, ManifestError
from shards.errors import Damage
from shards.store import open_store, read_array


@dataclass
class Normalisation:
    """The manifest's statistics in the units the loaders use."""

    mean_image: Optional[np.ndarray]  # float32 256×256×3, 0–255 units (255 × mean_image.npy); mean="image" only
    channel_mean: np.ndarray  # (3,) 0–255 units
    channel_std: np.ndarray  # (3,) 0–255 units
    eigval: np.ndarray  # (3,) [0,1] units
    eigvec: np.ndarray  # (3, 3) columns are eigenvectors, [0,1] units

    def offset(self, alpha: np.ndarray) -> np.ndarray:
        """Per-image lighting offsets (Section 4.1) in [0,1] units."""
        return lighting_offset(alpha, self.eigval, self.eigvec)

    def offsets255(self, alpha: np.ndarray) -> np.ndarray:
        """Per-image lighting offsets in 0–255 units."""
        return 255.0 * self.offset(alpha)


def load_normalisation(out, manifest: Manifest, mean: str) -> Normalisation:
    """The statistics of a shard directory's manifest (and its mean image for mean="image")."""
    s = manifest.stats
    if s is None:
        raise ManifestError(f"{out}: the manifest has no stats (they come from a train split); "
                            "mean subtraction and lighting need them")
    return Normalisation(
        mean_image=load_mean_image(out, manifest) if mean == "image" else None,
        channel_mean=255.0 * np.asarray(s.mean, np.float64),
        channel_std=255.0 * np.asarray(s.std, np.float64),
        eigval=np.asarray(s.eigval, np.float64),
        eigvec=np.asarray(s.eigvec, np.float64),
    )


def load_mean_image(out, manifest: Manifest) -> np.ndarray:
    """The training set's per-pixel mean image (Section 2's "mean activity"), float32 in 0–255
    units, checked to be image_size × image_size × 3."""
    store = open_store(out)  # a folder or s3://bucket/prefix
    path = store.url(manifest.stats.mean_image)
    hint = f"the shard directory is damaged: run `alexnet verify {out}`"
    try:
        image = read_array(store, manifest.stats.mean_image)
    except (OSError, ValueError, EOFError) as e:  # a file the manifest names: damage, exit 1
        raise Damage(f"{path}: cannot read the mean image ({e}); {hint}") from None
    size = manifest.image_size
    if image.shape != (size, size, 3):
        raise Damage(f"{path}: mean image has shape {image.shape}, expected ({size}, {size}, 3); {hint}")
    return (image.astype(np.float64) * 255.0).astype(np.float32)
