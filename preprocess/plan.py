"""The settings of a preprocessing job and its global shard plan.

The plan is a pure function of the file list and the settings: the training files, sorted by
path, are permuted by `numpy.random.default_rng(seed)`; validation stays sorted. Item p of a
split (its global position) goes to shard p // shard_size and, if it decodes, is written under
the key `sample_key(split, p)`. A failed file leaves a gap in the keys but moves nothing else,
so every shard depends only on its own files: any worker count, a resume, or `--part i/N`
(the shards n with n % N == i) produce the same bytes for the same shard.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from preprocess.source import Item, Source
from shards.format import IMAGE_SIZE, SPLITS, TRAIN
from shards.writer import shard_stem

DEFAULT_SHARD_SIZE = 1000  # images per shard: ~25 MB tars at q90, 1,282 training shards for ImageNet
DEFAULT_QUALITY = 90
CHUNK = 128  # images per worker task; several per shard keep all workers busy and memory bounded


@dataclass(frozen=True)
class Part:
    """`--part i/N`: this machine writes the shards n with n % N == i."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, env=None) -> "Part":
        """`i/N`, or `auto`: this task's place in a Slurm job array (`from_slurm`, from `env`,
        default os.environ)."""
        if text == "auto":
            return cls.from_slurm(os.environ if env is None else env)
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--part must look like i/N (e.g. 0/4), got {text!r}") from None
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"--part {text}: need 0 <= i < N")
        return cls(i, n)

    @classmethod
    def from_slurm(cls, env) -> "Part":
        """The part of this task of a Slurm job array (`sbatch --array=0-7`: N = 8, and task
        SLURM_ARRAY_TASK_ID is part ID - SLURM_ARRAY_TASK_MIN, so `--array=1-8` works too, and a
        step `--array=0-14:2` counts in steps); ValueError when the environment holds no array or
        its indices are not a range."""
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                 "SLURM_ARRAY_TASK_STEP")
        if not all(env.get(k) for k in names[:2]):
            raise ValueError("--part auto: not a task of a Slurm job array (SLURM_ARRAY_TASK_ID and "
                             "SLURM_ARRAY_TASK_COUNT are not set); submit with `sbatch --array=0-N-1` or give --part i/N")
        try:
            task, count, low, high, step = (int(env[k]) if env.get(k) else None for k in names)
        except ValueError:
            raise ValueError("--part auto: the SLURM_ARRAY_TASK_* variables are not integers "
                             f"({', '.join(f'{k}={env.get(k)!r}' for k in names if env.get(k))})") from None
        low = 0 if low is None else low
        step = 1 if step is None else step
        index, off_step = divmod(task - low, step) if step > 0 else (-1, 1)
        if off_step or not 0 <= index < count or (high is not None and high != low + (count - 1) * step):
            raise ValueError(f"--part auto: the job array's indices are not a range (task {task} of {count}, "
                             f"min {low}, max {high}, step {step}); use e.g. --array=0-{count - 1}, or give "
                             "--part i/N")
        return cls(index, count)

    def owns(self, number: int) -> bool:
        return number % self.count == self.index

    def __str__(self):
        return f"{self.index}/{self.count}"


@dataclass
class Settings:
    """Everything `alexnet preprocess` was asked to do (built from the click options)."""

    src: str
    out: str
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    shard_size: int = DEFAULT_SHARD_SIZE  # images
    quality: int = DEFAULT_QUALITY  # JPEG quality of the written images, 1..100
    seed: int = 0  # training order
    split: str = "all"  # a name in SPLITS, or "all"
    limit: Optional[int] = None  # first N files of each split (after ordering); None: all
    max_errors: Optional[int] = None  # exit 1 when more files fail; None: never
    part: Optional[Part] = None
    resize_filter: str = "bilinear"  # antialiased Pillow filter: bilinear | bicubic
    size: int = IMAGE_SIZE  # pixels, the side of the written images
    strict: bool = False  # skip every JPEG libjpeg warns about (default: keep those with extraneous bytes only)

    @property
    def splits(self):
        return SPLITS if self.split == "all" else (self.split,)

    def params(self, chroma: str) -> dict:
        """The settings that determine the bytes of the shards (manifest `params`). `strict` is
        recorded only when set (preprocess.outdir.SETTING_DEFAULTS), so directories written
        before it existed keep their manifests and match a run without it."""
        params = {
            "size": self.size,
            "quality": self.quality,
            "resize_filter": self.resize_filter,
            "chroma_subsampling": chroma,
            "seed": self.seed,
            "source_root": os.path.abspath(self.src),
            "shard_size": self.shard_size,
            "limit": self.limit,
            "part": str(self.part) if self.part else None,
        }
        if self.strict:
            params["strict"] = True
        return params


@dataclass
class ShardTask:
    split: str
    number: int  # global shard number within the split
    start: int  # global position of items[0]
    items: List[Item]

    @property
    def stem(self) -> str:
        return shard_stem(self.split, self.number)

    def chunks(self, size: int = CHUNK):
        """[(position, item)] slices of about `size`, in order."""
        n = len(self.items)
        k = max(1, -(-n // size))
        bounds = [round(i * n / k) for i in range(k + 1)]
        return [
            [(self.start + j, self.items[j]) for j in range(bounds[i], bounds[i + 1])] for i in range(k)
        ]


def ordered(items: List[Item], split: str, seed: int, limit: Optional[int] = None) -> List[Item]:
    """Write order: training globally shuffled by `seed`, validation sorted; then `limit`."""
    items = sorted(items, key=lambda it: it.path)
    if split == TRAIN:
        perm = np.random.default_rng(seed).permutation(len(items))
        items = [items[i] for i in perm]
    return items[:limit] if limit is not None else items


@dataclass
class Plan:
    files: Dict[str, List[Item]]  # split -> items in write order
    shards: Dict[str, List[ShardTask]]  # split -> every shard of the job (all parts)

    def owned(self, split: str, part: Optional[Part]) -> List[ShardTask]:
        return [s for s in self.shards[split] if part is None or part.owns(s.number)]


def make_plan(source: Source, settings: Settings) -> Plan:
    files, shards = {}, {}
    for split in settings.splits:
        if split not in source.splits:
            continue
        items = ordered(source.splits[split], split, settings.seed, settings.limit)
        files[split] = items
        size = settings.shard_size
        shards[split] = [
            ShardTask(split, n, n * size, items[n * size : (n + 1) * size]) for n in range(-(-len(items) // size))
        ]
    return Plan(files, shards)
