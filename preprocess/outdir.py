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

from shards.errors import UserError, describe
from shards.files import LOCK, Busy, atomic_write, exclusive, read_json
from shards.format import MANIFEST_NAME, SPLITS
from shards.manifest import Manifest, ManifestError, ShardInfo
from shards.stats import StatSums
from shards.writer import file_sha256

PARTS = ".parts"
PARAMS = "params.json"
# params that must agree for two runs to write into the same OUT ("files" is checked per split)
SETTING_KEYS = ("size", "quality", "resize_filter", "chroma_subsampling", "seed", "source_root", "shard_size",
                "limit", "part", "strict")
SETTING_DEFAULTS = {"strict": False}  # a setting params leave out when it has this value


class OutError(UserError, ValueError):
    """OUT cannot be used with these settings; the message says why, then what to do (exit code 2)."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(f"{problem}; {hint}" if hint else problem)


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
    def get(params, k):
        return params.get(k, SETTING_DEFAULTS.get(k))

    diff = [f"{k} {get(a, k)!r} vs {get(b, k)!r}" for k in SETTING_KEYS if get(a, k) != get(b, k)]
    if diff:  # the file lists are in an order the settings decide (seed, limit, part): say only those
        return diff
    fa, fb = a.get("files") or {}, b.get("files") or {}
    for s in sorted(set(fa) & set(fb)):
        if fa[s] != fb[s]:
            na, nb = fa[s]["count"], fb[s]["count"]
            what = f"{na} vs {nb} files" if na != nb else f"the same {na} files in number, other names or labels"
            diff.append(f"the {s} files of SRC changed ({what})")
    return diff


def _damaged_state(path: str, out: str, what: str) -> OutError:
    return OutError(f"{path}: {what}; it records the settings of the shards in {out}, so they cannot be checked: "
                    f"remove {out} or choose another OUT")


def _state(raw, path: str, out: str) -> dict:
    """The settings record {"params": {...}, "classes": [wnid, ...]} read from `path`, checked
    field by field (differences() of damaged fields would be a traceback): an OutError naming
    the file when it is not such a record."""
    if not (isinstance(raw, dict) and isinstance(raw.get("params"), dict)):
        raise _damaged_state(path, out, "not a record of preprocess settings (expected an object with params and "
                                        "classes)")
    if not (isinstance(raw.get("classes"), list) and all(isinstance(c, str) for c in raw["classes"])):
        raise _damaged_state(path, out, "classes: expected a list of wnids")
    files = raw["params"].get("files") or {}
    if not (isinstance(files, dict) and all(
            isinstance(f, dict) and type(f.get("count")) is int and isinstance(f.get("sha256"), str)
            for f in files.values())):
        raise _damaged_state(path, out, "params.files: expected {split: {count, sha256}}")
    return raw


def _read_state(out: str) -> dict:
    """OUT/.parts/params.json, checked (`_state`); an OSError names its file itself."""
    path = os.path.join(out, PARTS, PARAMS)
    try:
        raw = read_json(path)
    except ValueError as e:  # not UTF-8, not JSON
        raise _damaged_state(path, out, describe(e)) from None
    return _state(raw, path, out)


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
            again = os.path.exists(os.path.join(out, PARTS, PARAMS))  # the settings and the shards' records are there
            raise OutError(e.problem, "delete it and run the same command again: it is written anew from the "
                                      "finished shards" if again else "use another OUT") from None
        existing = _state({"params": manifest.params, "classes": [c.wnid for c in manifest.classes]},
                          os.path.join(out, MANIFEST_NAME), out)
    elif os.path.exists(os.path.join(out, PARTS, PARAMS)):
        existing = _read_state(out)
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
        shard = ShardInfo(**meta["shard"]) if meta["shard"] else None
        if not (isinstance(meta["files"], int) and isinstance(meta["errors"], list)):
            raise ValueError("fields of the wrong type")
    except Exception:  # noqa: BLE001 (truncated zip, other keys or types): an unreadable record, so redo the shard
        return None
    if shard is not None:
        tar = os.path.join(out, shard.tar)
        if not (os.path.exists(os.path.join(out, shard.index)) and os.path.exists(tar)
                and os.path.getsize(tar) == meta["tar_bytes"]):
            return None
    return ShardRecord(meta["stem"], meta["files"], shard, meta["tar_bytes"], meta["errors"], sums)


def sha256_matches(path: str, expected: str) -> bool:
    return file_sha256(path) == expected


@contextmanager
def locked(out: str, what: str = "alexnet preprocess", error=OutError):
    """Hold OUT's lock (shards.files.exclusive) for the whole run: a second `what` (`alexnet
    preprocess`, `alexnet merge`) into the same OUT stops at once with one line (`error`) instead
    of both writing the same files; a run killed with -9 leaves no stale lock, only the file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise error(f"{out} exists and is not a folder")
    with ExitStack() as held:
        try:  # only taking the lock: errors of the run itself pass through unchanged
            held.enter_context(exclusive(out, what))
        except Busy as e:
            raise error(str(e)) from None
        except OSError as e:
            raise error(f"{out}: cannot write there ({e.strerror}); choose another folder") from None
        yield


def remove_leftovers(out: str) -> None:
    """Temporary files of interrupted runs (never read, so harmless, but untidy)."""
    for path in glob.glob(os.path.join(out, "*.tmp")) + glob.glob(os.path.join(out, PARTS, "*.tmp")):
        os.remove(path)
