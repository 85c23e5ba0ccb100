"""The state an output folder keeps between runs: its settings and one record per finished shard.

    OUT/.parts/params.json        settings, classes and file-list fingerprints, written before
                                  the first shard; a later run must match them
    OUT/.parts/<stem>.npz         one record per finished shard: its ShardInfo (or none when all
                                  of its files failed), its errors and, for training shards, the
                                  exact integer pixel sums (StatSums)

A shard is finished when its record exists and its `.tar` and `.idx` have their final names.
The record is written (atomically) after the writer has renamed the tar: a kill between the
two leaves a tar without a record, which the next run simply writes again. Statistics of
reused shards come from their records: they are sums over the pixels before JPEG encoding and
cannot be recovered from the tar. `.parts/` may be deleted once the job is done; a later run
then rewrites the shards instead of reusing them.
"""
import glob
import json
import os
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

import numpy as np

from shards.errors import UserError
from shards.files import LOCK, Busy, atomic_write, exclusive
from shards.format import MANIFEST_NAME, SPLITS
from shards.manifest import Manifest, ManifestError, ShardInfo
from shards.stats import StatSums
from shards.writer import file_sha256

PARTS = ".parts"
PARAMS = "params.json"
# params that must agree for two runs to write into the same OUT ("files" is checked per split)
SETTING_KEYS = ("size", "quality", "resize_filter", "chroma_subsampling", "seed", "source_root", "shard_size",
                "limit", "part")


class OutError(UserError, ValueError):
    """OUT cannot be used with these settings; the message says why (exit code 2)."""


@dataclass
class ShardRecord:
    """What `.parts/<stem>.npz` keeps of a finished shard."""

    stem: str
    files: int  # source files planned for this shard
    shard: Optional[ShardInfo]  # None: every file failed, no tar was written
    tar_bytes: int
    errors: List[dict]
    sums: Optional[StatSums] = None


def differences(a: dict, b: dict) -> List[str]:
    """The settings in which params a and b differ (empty: the same job)."""
    diff = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in SETTING_KEYS if a.get(k) != b.get(k)]
    if diff:  # the file lists are in an order the settings decide (seed, limit, part): say only those
        return diff
    fa, fb = a.get("files") or {}, b.get("files") or {}
    for s in sorted(set(fa) & set(fb)):
        if fa[s] != fb[s]:
            na, nb = fa[s]["count"], fb[s]["count"]
            what = f"{na} vs {nb} files" if na != nb else f"the same {na} files in number, other names or labels"
            diff.append(f"the {s} files of SRC changed ({what})")
    return diff


def prepare(out: str, params: dict, classes: list) -> Tuple[Optional[Manifest], dict]:
    """Check that OUT is new, empty, or made by the same settings; record the settings.

    Returns (OUT's existing manifest or None, params with the file fingerprints of all splits
    OUT holds). Raises OutError, touching nothing, when OUT cannot take this job.
    """
    existing, manifest = None, None
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        try:
            manifest = Manifest.load(out)
        except ManifestError as e:
            raise OutError(f"{e}; use another OUT") from None
        existing = {"params": manifest.params, "classes": [c.wnid for c in manifest.classes]}
    elif os.path.exists(os.path.join(out, PARTS, PARAMS)):
        with open(os.path.join(out, PARTS, PARAMS)) as f:
            existing = json.load(f)
    elif os.path.isdir(out) and set(os.listdir(out)) - {LOCK}:
        raise OutError(f"{out} exists, is not empty and is not a shard folder; choose a new or empty OUT")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise OutError(f"{out} exists and is not a folder")
    if existing is not None:
        diff = differences(existing["params"], params)
        if existing["classes"] != classes:
            diff.append("the training classes differ")
        if diff:
            raise OutError(f"{out} was made with other settings ({'; '.join(diff)}); use another OUT")
        files = dict(existing["params"].get("files") or {}, **(params.get("files") or {}))
        params = dict(params, files={s: files[s] for s in SPLITS if s in files})
    os.makedirs(os.path.join(out, PARTS), exist_ok=True)
    record = {"params": params, "classes": classes}
    atomic_write(os.path.join(out, PARTS, PARAMS), lambda f: f.write(json.dumps(record, indent=1)), mode="w")
    return manifest, params


def _record_path(out: str, stem: str) -> str:
    return os.path.join(out, PARTS, stem + ".npz")


def save_record(out: str, rec: ShardRecord) -> None:
    meta = {"stem": rec.stem, "files": rec.files, "shard": asdict(rec.shard) if rec.shard else None,
            "tar_bytes": rec.tar_bytes, "errors": rec.errors}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    if rec.sums is not None:
        s = rec.sums
        arrays.update(images=np.int64(s.images), sum=s.sum, outer=s.outer,
                      pixel_sum=s.pixel_sum.astype(np.uint32))  # exact: <= 255 · shard_size
    atomic_write(_record_path(out, rec.stem), lambda f: np.savez(f, **arrays))


def load_record(out: str, stem: str, with_sums: bool = True) -> Optional[ShardRecord]:
    """The record of a finished shard, or None when the shard must be (re)written."""
    path = _record_path(out, stem)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes())
            sums = None
            if with_sums and "images" in z.files:
                sums = StatSums(size=z["pixel_sum"].shape[0], images=int(z["images"]), sum=z["sum"],
                                outer=z["outer"], pixel_sum=z["pixel_sum"].astype(np.int64))
    except (OSError, ValueError, KeyError):
        return None  # unreadable record: redo the shard
    shard = ShardInfo(**meta["shard"]) if meta["shard"] else None
    if shard is not None:
        tar = os.path.join(out, shard.tar)
        if not (os.path.exists(os.path.join(out, shard.index)) and os.path.exists(tar)
                and os.path.getsize(tar) == meta["tar_bytes"]):
            return None
    return ShardRecord(meta["stem"], meta["files"], shard, meta["tar_bytes"], meta["errors"], sums)


def sha256_matches(path: str, expected: str) -> bool:
    return file_sha256(path) == expected


@contextmanager
def locked(out: str):
    """Hold OUT's lock (shards.files.exclusive) for the whole run: a second `alexnet preprocess`
    into the same OUT stops at once with one line (OutError) instead of both writing the same
    files; a run killed with -9 leaves no stale lock, only the file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutError(f"{out} exists and is not a folder")
    with ExitStack() as held:
        try:  # only taking the lock: errors of the run itself pass through unchanged
            held.enter_context(exclusive(out, "alexnet preprocess"))
        except Busy as e:
            raise OutError(str(e)) from None
        except OSError as e:
            raise OutError(f"{out}: cannot write there ({e.strerror}); choose another OUT") from None
        yield


def remove_leftovers(out: str) -> None:
    """Temporary files of interrupted runs (never read, so harmless, but untidy)."""
    for path in glob.glob(os.path.join(out, "*.tmp")) + glob.glob(os.path.join(out, PARTS, "*.tmp")):
        os.remove(path)
