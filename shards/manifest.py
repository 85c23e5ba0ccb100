"""`manifest.json`: the typed description of a shard directory (docs/DESIGN.md, "Shard directory").

Load, validate and save in one place; every reader of a shard directory goes through here.
`Manifest.load` raises only `ManifestError`, one line naming the file: exit 2 when there is no
manifest to read (no directory, no manifest, an unreadable file), and its subclass
`DamagedManifest`, exit 1, when the manifest is there but damaged: not JSON, not an object,
fields missing or of the wrong type, totals that disagree with its shards, or statistics that are
not numbers a trainer can use (NaN, negative eigenvalues, eigenvectors that are not orthonormal,
a std <= 0, a mean outside [0,1]).
"""
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from shards.errors import Damage, UserError, describe
from shards.files import atomic_write_json, parse_json
from shards.format import MANIFEST_NAME, MEAN_IMAGE_NAME, PIXEL_SUM_NAME, SPLITS, TRAIN
from shards.store import open_store

MANIFEST_VERSION = 1


class ManifestError(UserError, ValueError):
    """No usable manifest (no such directory, no manifest, an unreadable file); the message names
    the file (exit code 2). `problem` is the message without what to do about it."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(f"{problem}; {hint}" if hint else problem)
        self.problem = problem


class DamagedManifest(ManifestError, Damage):
    """A manifest that is there but damaged or inconsistent; the message names the file and the
    field (exit code 1)."""


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


class _Bad(ValueError):
    """A field of the JSON that is missing or of the wrong type (the message says which)."""


def _kind(v) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(v), type(v).__name__)


def _expect(v, where: str, types, what: str):
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise _Bad(f"{where}: expected {what}, found {_kind(v)}")
    return v


def _count(v, where: str) -> int:
    if _expect(v, where, (int,), "an integer") < 0:
        raise _Bad(f"{where}: {v} is negative")
    return v


def _text(v, where: str) -> str:
    return _expect(v, where, (str,), "a string")


def _number(v, where: str):
    return _expect(v, where, (int, float), "a number")


def _vector(v, where: str, item=_number, n: int = 3) -> list:
    if len(_expect(v, where, (list,), "a list")) != n:
        raise _Bad(f"{where}: expected {n} values, found {len(v)}")
    return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]


def _matrix(v, where: str, item=_number) -> list:
    return _vector(v, where, lambda row, w: _vector(row, w, item))


def _object(v, where: str, required=(), optional=()) -> dict:
    _expect(v, where, (dict,), "an object")
    missing = [k for k in required if k not in v]
    if missing:
        raise _Bad(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(set(v) - set(required) - set(optional))
    if unknown:
        raise _Bad(f"{where}: unknown field {unknown[0]!r}")
    return v


def _parse_stats(raw) -> Optional[Stats]:
    if raw is None:
        return None
    _object(raw, "stats", ("pixels", "images", "mean", "std", "cov", "eigval", "eigvec"),
            ("mean_image", "sums", "pixel_sum"))
    sums = raw.get("sums")
    if sums is not None:
        _object(sums, "stats.sums", ("images", "sum", "outer"))
        sums = {"images": _count(sums["images"], "stats.sums.images"),
                "sum": _vector(sums["sum"], "stats.sums.sum", _count),
                "outer": _matrix(sums["outer"], "stats.sums.outer", _count)}
    return Stats(pixels=_count(raw["pixels"], "stats.pixels"), images=_count(raw["images"], "stats.images"),
                 mean=_vector(raw["mean"], "stats.mean"), std=_vector(raw["std"], "stats.std"),
                 cov=_matrix(raw["cov"], "stats.cov"), eigval=_vector(raw["eigval"], "stats.eigval"),
                 eigvec=_matrix(raw["eigvec"], "stats.eigvec"),
                 mean_image=_text(raw.get("mean_image", MEAN_IMAGE_NAME), "stats.mean_image"), sums=sums,
                 pixel_sum=_text(raw.get("pixel_sum", PIXEL_SUM_NAME), "stats.pixel_sum"))


def _parse_split(raw, where: str) -> SplitInfo:
    _object(raw, where, ("samples", "shards"))
    shards = []
    for i, s in enumerate(_expect(raw["shards"], f"{where}.shards", (list,), "a list")):
        w = f"{where}.shards[{i}]"
        _object(s, w, ("tar", "index", "samples", "sha256"))
        shards.append(ShardInfo(tar=_text(s["tar"], f"{w}.tar"), index=_text(s["index"], f"{w}.index"),
                                samples=_count(s["samples"], f"{w}.samples"), sha256=_text(s["sha256"], f"{w}.sha256")))
    return SplitInfo(samples=_count(raw["samples"], f"{where}.samples"), shards=shards)


def stats_problems(stats: Stats, image_size: int) -> List[str]:
    """What makes `stats` unusable by a trainer (empty when nothing): values that are not finite,
    a mean outside [0,1], a std <= 0, an asymmetric covariance, eigenvalues that are negative or
    not descending, eigenvectors that are not orthonormal, counts that disagree."""
    problems = []
    values = [*stats.mean, *stats.std, *stats.eigval, *(x for r in stats.cov for x in r),
              *(x for r in stats.eigvec for x in r)]
    if not all(math.isfinite(x) for x in values):
        return ["stats: a value is not a finite number (NaN or infinity)"]
    if stats.images < 1 or stats.pixels != stats.images * image_size * image_size:
        problems.append(f"stats.pixels {stats.pixels} != stats.images {stats.images} x {image_size}x{image_size}")
    if stats.sums is not None and stats.sums["images"] != stats.images:
        problems.append(f"stats.sums.images {stats.sums['images']} != stats.images {stats.images}")
    if not all(0.0 <= m <= 1.0 for m in stats.mean):
        problems.append(f"stats.mean {stats.mean} is outside [0,1]")
    if not all(0.0 < s <= 1.0 for s in stats.std):
        problems.append(f"stats.std {stats.std}: each must be in (0, 1] (a channel without variation cannot be "
                        "normalised)")
    tol = 1e-6
    cov, vec, val = stats.cov, stats.eigvec, stats.eigval
    if any(abs(cov[i][j] - cov[j][i]) > tol for i in range(3) for j in range(3)):
        problems.append("stats.cov is not symmetric")
    if any(v < -1e-9 for v in val) or any(val[i] < val[i + 1] - 1e-9 for i in range(2)):
        problems.append(f"stats.eigval {val}: must be >= 0 and descending")
    gram = [[sum(vec[k][i] * vec[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    if any(abs(gram[i][j] - (i == j)) > tol for i in range(3) for j in range(3)):
        problems.append("stats.eigvec: its columns are not orthonormal")
    return problems


def _plain_name(name: str) -> bool:
    """A file name inside the shard directory: no folder part, not '.' or '..'."""
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name


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
        """Read and validate `directory`'s manifest; ManifestError (exit 2) or DamagedManifest
        (exit 1) otherwise, one line naming the file."""
        store = open_store(directory)  # a folder, or s3://bucket/prefix (shards.store)
        directory = str(store)
        path = store.url(MANIFEST_NAME)
        if not store.is_dir():  # S3: the bucket (a missing one, wrong credentials: one line, exit 2)
            raise ManifestError(f"{directory}: no such shard directory")
        if not store.exists(MANIFEST_NAME):
            if not store.remote and _is_imagenet_source(directory):
                raise ManifestError(f"{directory}: is an ImageNet source folder (train/, val/), not a shard directory; "
                                    f"make shards from it with `alexnet preprocess {directory} SHARDS`, then give SHARDS")
            make = (f"upload a shard directory there with `alexnet upload OUT {directory}`" if store.remote
                    else f"run `alexnet preprocess SRC {directory}` first")
            raise ManifestError(f"{path}: no manifest; {make}")
        hint = "the shard directory is damaged; write it again (alexnet preprocess or merge)"
        try:
            raw = parse_json(store.read_bytes(MANIFEST_NAME))
        except OSError as e:
            raise ManifestError(describe(e, path)) from None
        except ValueError as e:  # UnicodeDecodeError, json.JSONDecodeError
            raise DamagedManifest(describe(e, path), hint) from None
        try:
            m = cls.from_dict(raw)
            m.validate(path)
        except DamagedManifest as e:
            raise DamagedManifest(e.problem, hint) from None
        except ValueError as e:
            raise DamagedManifest(f"{path}: {e}", hint) from None
        return m

    @classmethod
    def from_dict(cls, raw) -> "Manifest":
        """The Manifest of a parsed manifest.json; ValueError naming the first field that is
        missing or of the wrong type."""
        _object(raw, "top level", ("version", "image_size", "classes", "params"), ("splits", "stats", "errors"))
        version = raw["version"]
        if version != MANIFEST_VERSION:
            raise _Bad(f"manifest version {version!r}, this tool reads version {MANIFEST_VERSION}")
        classes = []
        for i, c in enumerate(_expect(raw["classes"], "classes", (list,), "a list")):
            _object(c, f"classes[{i}]", ("index", "wnid", "name"))
            classes.append(ClassInfo(index=_count(c["index"], f"classes[{i}].index"),
                                     wnid=_text(c["wnid"], f"classes[{i}].wnid"),
                                     name=_text(c["name"], f"classes[{i}].name")))
        splits = {name: _parse_split(s, f"splits.{name}")
                  for name, s in _expect(raw.get("splits", {}), "splits", (dict,), "an object").items()}
        image_size = _count(raw["image_size"], "image_size")
        if image_size < 1:
            raise _Bad("image_size: must be at least 1")
        return cls(version=version, image_size=image_size, classes=classes,
                   params=_expect(raw["params"], "params", (dict,), "an object"), splits=splits,
                   stats=_parse_stats(raw.get("stats")), errors=_count(raw.get("errors", 0), "errors"))

    def validate(self, where="manifest") -> None:
        """DamagedManifest (naming `where`) unless the parts agree: classes 0..N-1 sorted by
        wnid, known splits whose totals are their shards' sums, plain file names, statistics a
        trainer can use (`stats_problems`)."""
        def fail(msg):
            raise DamagedManifest(f"{where}: {msg}")

        if [c.index for c in self.classes] != list(range(len(self.classes))):
            fail("class indices must be 0..N-1 in order")
        wnids = [c.wnid for c in self.classes]
        if wnids != sorted(wnids) or len(set(wnids)) != len(wnids):
            fail("classes must be sorted by wnid and unique")
        for name, split in self.splits.items():
            if name not in SPLITS:
                fail(f"unknown split {name!r}")
            if split.samples != sum(s.samples for s in split.shards):
                fail(f"split {name}: samples {split.samples} != {sum(s.samples for s in split.shards)}, the sum over "
                     "its shards")
            for s in split.shards:
                if not (_plain_name(s.tar) and _plain_name(s.index)):
                    fail(f"split {name}: shard file names must be plain names in the directory ({s.tar!r}, "
                         f"{s.index!r})")
        if TRAIN in self.splits and self.stats is None:
            fail("a train split needs stats")
        if self.stats is not None:
            if len(self.stats.eigval) != 3 or len(self.stats.eigvec) != 3 or any(len(r) != 3 for r in self.stats.eigvec):
                fail("stats.eigval must have 3 values and stats.eigvec 3×3")
            if not (_plain_name(self.stats.mean_image) and _plain_name(self.stats.pixel_sum)):
                fail("stats.mean_image and stats.pixel_sum must be plain file names in the directory")
            problems = stats_problems(self.stats, self.image_size)
            if problems:
                fail("; ".join(problems))

    # --- writing -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {"version": d.pop("version"), **d}

    def save(self, directory) -> str:
        """Validate, then write atomically (shards.files); returns the path."""
        path = os.path.join(os.fspath(directory), MANIFEST_NAME)
        self.validate(path)
        return atomic_write_json(path, self.to_dict(), indent=1)

    # --- conveniences for readers --------------------------------------------------------
    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise ManifestError(f"split {name!r} is not in this shard directory (it has: {have})")
        return self.splits[name]

    def shard_paths(self, directory, name: str):
        """[(tar path, idx path)] of a split, in order: `s3://` URLs for a directory on S3."""
        store = open_store(directory)
        return [(store.url(s.tar), store.url(s.index)) for s in self.split(name).shards]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _is_imagenet_source(directory) -> bool:
    """Whether `directory` looks like what `alexnet preprocess` reads (SRC): train/ or val/
    folders, or the Kaggle LOC files."""
    import os

    return (any(os.path.isdir(os.path.join(directory, d)) for d in SPLITS)
            or any(os.path.isfile(os.path.join(directory, f)) for f in ("LOC_val_solution.csv", "LOC_synset_mapping.txt")))
