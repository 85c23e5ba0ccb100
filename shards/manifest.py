"""`manifest.json`: the typed description of a shard directory (docs/DESIGN.md, "Shard directory").

Load, validate and save in one place; every reader of a shard directory goes through here.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from shards.files import atomic_write_json
from shards.format import MANIFEST_NAME, MEAN_IMAGE_NAME, PIXEL_SUM_NAME, SPLITS, TRAIN

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent manifest; the message names the file."""


@dataclass
class ClassInfo:
    """One class: its index (the label), WordNet id and readable name."""

    index: int
    wnid: str
    name: str


@dataclass
class ShardInfo:
    """One shard as the manifest lists it: its tar, its DALI index, its sample count and sha256."""

    tar: str  # file name, relative to the shard directory
    index: str  # the DALI .idx beside it
    samples: int
    sha256: str


@dataclass
class SplitInfo:
    """One split: its sample count and its shards, in order."""

    samples: int = 0
    shards: List[ShardInfo] = field(default_factory=list)


@dataclass
class Stats:
    """RGB statistics of the training pixels as written, for values in [0,1]."""

    pixels: int
    images: int
    mean: List[float]
    std: List[float]
    cov: List[List[float]]
    eigval: List[float]  # descending
    eigvec: List[List[float]]  # 3×3 row-major; its COLUMNS are the eigenvectors
    mean_image: str = MEAN_IMAGE_NAME  # float32 256×256×3 in [0,1]
    sums: Optional[dict] = None  # exact integer sums (shards.StatSums.to_json)
    pixel_sum: str = PIXEL_SUM_NAME  # int64 256×256×3 per-pixel Σ, for merging parts


@dataclass
class Manifest:
    """The whole manifest: image size, classes, the settings that made the shards, the splits,
    the training statistics and the error count. `load` reads and validates, `save` writes."""

    image_size: int
    classes: List[ClassInfo]
    params: Dict
    splits: Dict[str, SplitInfo] = field(default_factory=dict)
    stats: Optional[Stats] = None
    errors: int = 0
    version: int = MANIFEST_VERSION

    # --- reading -------------------------------------------------------------------------
    @classmethod
    def load(cls, directory) -> "Manifest":
        path = os.path.join(str(directory), MANIFEST_NAME)
        if not os.path.isdir(str(directory)):
            raise ManifestError(f"{directory}: no such shard directory")
        if not os.path.exists(path):
            raise ManifestError(f"{path}: no manifest; run `alexnet preprocess SRC {directory}` first")
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: unreadable manifest ({e})") from None
        try:
            m = cls.from_dict(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e!r})") from None
        m.validate(path)
        return m

    @classmethod
    def from_dict(cls, raw: dict) -> "Manifest":
        version = raw.get("version")
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version!r}, this tool reads version {MANIFEST_VERSION}")
        splits = {
            name: SplitInfo(samples=s["samples"], shards=[ShardInfo(**sh) for sh in s["shards"]])
            for name, s in raw.get("splits", {}).items()
        }
        stats = Stats(**raw["stats"]) if raw.get("stats") else None
        return cls(
            version=version,
            image_size=raw["image_size"],
            classes=[ClassInfo(**c) for c in raw["classes"]],
            params=raw["params"],
            splits=splits,
            stats=stats,
            errors=raw.get("errors", 0),
        )

    def validate(self, where="manifest") -> None:
        def fail(msg):
            raise ManifestError(f"{where}: {msg}")

        if [c.index for c in self.classes] != list(range(len(self.classes))):
            fail("class indices must be 0..N-1 in order")
        wnids = [c.wnid for c in self.classes]
        if wnids != sorted(wnids) or len(set(wnids)) != len(wnids):
            fail("classes must be sorted by wnid and unique")
        for name, split in self.splits.items():
            if name not in SPLITS:
                fail(f"unknown split {name!r}")
            if split.samples != sum(s.samples for s in split.shards):
                fail(f"split {name}: samples {split.samples} != sum over its shards")
        if TRAIN in self.splits and self.stats is None:
            fail("a train split needs stats")
        if self.stats is not None:
            if len(self.stats.eigval) != 3 or any(len(r) != 3 for r in self.stats.eigvec):
                fail("stats.eigval must have 3 values and stats.eigvec 3×3")

    # --- writing -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {"version": d.pop("version"), **d}

    def save(self, directory) -> str:
        """Validate, then write atomically (shards.files); returns the path."""
        self.validate()
        return atomic_write_json(os.path.join(str(directory), MANIFEST_NAME), self.to_dict(), indent=1)

    # --- conveniences for readers --------------------------------------------------------
    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise ManifestError(f"split {name!r} is not in this shard directory (it has: {have})")
        return self.splits[name]

    def shard_paths(self, directory, name: str):
        """[(tar path, idx path)] of a split, in order."""
        d = str(directory)
        return [(os.path.join(d, s.tar), os.path.join(d, s.index)) for s in self.split(name).shards]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
