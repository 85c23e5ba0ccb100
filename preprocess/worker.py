"""The work of one process: a chunk of files -> encoded samples, errors and pixel sums.

Runs in the worker processes (or in the main one with --workers 1). Pure: the same chunk gives
the same result in any process, which is what makes the shards independent of --workers.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

from preprocess.sums import PixelSums
from preprocess.transform import BadImage, decode, encode
from shards.format import TRAIN
from shards.stats import StatSums

_config = {}


def init(root: str, size: int, quality: int, resize_filter: str, strict: bool = False) -> None:
    """Per-process settings (ProcessPoolExecutor initializer)."""
    cv2.setNumThreads(1)  # one worker, one core: no OpenCV thread pool competing with the other workers
    _config.update(root=root, size=size, quality=quality, resize_filter=resize_filter, strict=strict)


def init_pool_worker(parent: int, *args) -> None:
    """Initializer of a pool worker: `init`, and the worker ends when `parent` (the main
    preprocess process) dies, even by kill -9 or SIGTERM, instead of sleeping on as an orphan."""
    _die_with_parent(parent)
    init(*args)


def _die_with_parent(parent: int) -> None:
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


@dataclass
class ChunkResult:
    split: str
    samples: List[Tuple[int, bytes, int, dict]] = field(default_factory=list)  # position, jpeg, label, meta
    errors: List[dict] = field(default_factory=list)  # files not used: {"split", "position", "path", "reason"}
    kept: List[dict] = field(default_factory=list)  # files used despite libjpeg's warnings: the same, "kept": True
    notes: List[dict] = field(default_factory=list)  # files used as documented (transform.notes_for): "note": True
    sums: Optional[StatSums] = None  # training chunks only; pixel_sum as uint32 to halve the transfer


def _reason(e: Exception) -> str:
    """Why a file could not be used, in one line."""
    if isinstance(e, BadImage):
        return str(e)
    if isinstance(e, OSError):  # gone or unreadable since the scan, a symlink loop, an I/O error
        return f"unreadable ({e.strerror or e})"
    return f"{type(e).__name__}: {e}"


def process_chunk(split: str, chunk) -> ChunkResult:
    """chunk: [(position, source.Item)] -> ChunkResult (statistics only for the training split)."""
    root, size, quality, resize_filter, strict = (_config[k] for k in ("root", "size", "quality", "resize_filter",
                                                                        "strict"))
    result = ChunkResult(split)
    sums = PixelSums(size) if split == TRAIN else None
    for position, item in chunk:
        row = {"split": split, "position": position, "path": item.path}
        try:
            if item.problem:
                raise BadImage(item.problem)
            with open(os.path.join(root, item.path), "rb") as f:
                data = f.read()
            decoded = decode(data, size, resize_filter, strict)
            pixels, (w, h) = decoded.pixels, decoded.size
            jpeg = encode(pixels, quality)
        except Exception as e:  # one bad file must not stop 1.28 M others; it is reported
            result.errors.append(dict(row, reason=_reason(e)))
            continue
        if decoded.warnings:
            result.kept.append(dict(row, reason="; ".join(decoded.warnings), kept=True))
        if decoded.notes:
            result.notes.append(dict(row, reason="; ".join(decoded.notes), note=True))
        if sums is not None:
            sums.add(pixels)
        result.samples.append((position, jpeg, item.label, {"src": item.path, "wnid": item.wnid, "size": [w, h]}))
    if sums is not None:
        result.sums = sums.stat_sums()
        result.sums.pixel_sum = result.sums.pixel_sum.astype(np.uint32)  # exact: <= 255 · len(chunk)
    return result
