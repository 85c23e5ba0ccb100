"""The random draws of paper Section 4.1, per image per epoch, the PCA lighting offset, and the
ten fixed views of ten-crop testing.

Every random number of an epoch comes from here, drawn on the host with numpy from
`SeedSequence([seed, rank, epoch])`, and is handed to the DALI graph through an external
source (and to the reference loader directly). So epoch e's draws are a function of
(seed, rank, e) alone, are exactly reproducible, and both loaders apply the same numbers:

  x0, y0   the crop's top-left corner, uniform over the 32×32 integer offsets 0..31 of the
           256×256 image (224 + 32 = 256; with the mirror this is the paper's factor 2048);
  mirror   horizontal flip with probability ½;
  alpha    the PCA lighting weights, α ~ N(0, σ) for each of the 3 components.

Draw i belongs to the i-th image this rank delivers in the epoch (its position in the stream,
not its identity: the reader's shuffle decides which image sits at position i). Crops and
lighting use two independent child streams, so turning augmentation on or off does not change
α, and row i does not depend on how many rows are drawn (tested), nor on the batch size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards import IMAGE_SIZE

CROP = 224  # side of the network's input, in pixels (Section 4.1)
STRIDE = IMAGE_SIZE - CROP  # 32: crop offsets per axis of the 256×256 image
CENTRE = STRIDE // 2  # 16: the centre crop's offset


@dataclass
class Draws:
    """Per-position draws of one epoch; row i is for the i-th image of the rank's stream."""

    x0: np.ndarray  # (n,) int32, 0..31
    y0: np.ndarray  # (n,) int32, 0..31
    mirror: np.ndarray  # (n,) int32, 0 or 1
    alpha: np.ndarray  # (n, 3) float64, N(0, σ); zeros when σ = 0

    def __len__(self) -> int:
        return len(self.x0)

    def rows(self, start: int, stop: int) -> "Draws":
        """Rows [start, stop): the draws of those stream positions."""
        return Draws(self.x0[start:stop], self.y0[start:stop], self.mirror[start:stop], self.alpha[start:stop])


def epoch_draws(seed: int, rank: int, epoch: int, n: int, augment: bool, sigma: float) -> Draws:
    """The draws for the first `n` images of (seed, rank, epoch).

    augment=False gives the centre crop (offset 16, no mirror); sigma=0 gives α = 0.
    """
    crop_seq, light_seq = np.random.SeedSequence([seed, rank, epoch]).spawn(2)
    x0, y0, mirror = _crops(crop_seq, n) if augment else _centre(n)
    if sigma > 0:
        alpha = np.random.default_rng(light_seq).normal(0.0, sigma, size=(n, 3))
    else:
        alpha = np.zeros((n, 3))
    return Draws(x0, y0, mirror, alpha)


def _crops(seq: np.random.SeedSequence, n: int):
    """Random corners and flips (Section 4.1): one call, row by row, so row i takes the same
    stream values whatever n is."""
    xym = np.random.default_rng(seq).integers(0, [STRIDE, STRIDE, 2], size=(n, 3), dtype=np.int32)
    return xym[:, 0].copy(), xym[:, 1].copy(), xym[:, 2].copy()


def _centre(n: int):
    """The centre crop, unmirrored, for every row."""
    return np.full(n, CENTRE, np.int32), np.full(n, CENTRE, np.int32), np.zeros(n, np.int32)


def lighting_offset(alpha: np.ndarray, eigval, eigvec) -> np.ndarray:
    """The RGB offset `eigvec @ (α ⊙ eigval)` for each row of α, in the statistics' [0,1] units
    (Section 4.1's PCA lighting).

    `eigvec` is 3×3 with the eigenvectors as COLUMNS (the manifest's convention), so for rows
    of α this is (α ⊙ eigval) @ eigvecᵀ. Multiply by 255 for 0–255 pixel values.
    """
    eigval = np.asarray(eigval, np.float64)
    eigvec = np.asarray(eigvec, np.float64)
    return (np.asarray(alpha, np.float64) * eigval) @ eigvec.T


# Views of ten-crop testing (Section 4.1), in torchvision's TenCrop order: the four corners
# and the centre of the image, then the same five of the mirrored image. Each is
# (x0, y0, mirror) with mirroring applied after cropping, so the mirrored image's top-left
# corner is the mirror of the original's top-right crop (x0 = 32).
TEN_CROP_VIEWS = (
    (0, 0, 0), (STRIDE, 0, 0), (0, STRIDE, 0), (STRIDE, STRIDE, 0), (CENTRE, CENTRE, 0),
    (STRIDE, 0, 1), (0, 0, 1), (STRIDE, STRIDE, 1), (0, STRIDE, 1), (CENTRE, CENTRE, 1),
)
