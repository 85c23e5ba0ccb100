"""Every shard's sha256 against the manifest, before a trainer reads them (docs/FAULTS.md).

A tar whose bytes were overwritten with its size intact passes the size checks made before DALI
is handed the paths (pipeline.plan.check_split_files), and DALI 2.4's decoder then sometimes
crashes the process (a segmentation fault, no exception to turn into one line). So `alexnet
train` hashes every local shard first, in parallel threads (hashlib and file reads release the
GIL), and stops with one line naming the shard (exit 1). What it hashed is remembered in a
cache file keyed by path, size and modification time, so a resume does not hash again.

Shards under `s3://` are not downloaded to be hashed: the sha256 that `alexnet upload` stored with
each object (after checking the bytes against the manifest) is compared with the manifest, one
HEAD request per object; the bytes themselves are protected in transit by S3's own checksums.
`alexnet verify s3://...` hashes them.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional

from shards.errors import Damage
from shards.files import atomic_write_json
from shards.store import is_s3_url, open_store
from shards.writer import file_sha256

HASH_THREADS = 16  # at most; more than the cores gains nothing once the hashing is CPU-bound


def _shards(manifest):
    return [shard for split in manifest.splits.values() for shard in split.shards]


def _read_cache(path) -> Dict[str, list]:
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def check_shard_hashes(directory, manifest, cache: Optional[str] = None, threads: Optional[int] = None,
                       progress: Optional[Callable[[int], None]] = None) -> int:
    """Damage naming the first shard (in manifest order) whose sha256 is not the manifest's.

    cache: a JSON file {tar path: [size, mtime_ns, sha256]} of shards already hashed; a shard
    whose size and mtime match its entry is not read again, and the file is rewritten with
    this check's results. progress(bytes) is called after each shard hashed. Returns the bytes
    hashed (0 for s3://, whose stored hashes are compared instead)."""
    directory = os.fspath(directory)
    shards = _shards(manifest)
    if is_s3_url(directory):
        _check_stored(directory, shards, threads)
        return 0
    known = _read_cache(cache) if cache else {}
    threads = max(1, min(threads or os.cpu_count() or 1, HASH_THREADS))

    def digest(shard):
        path = os.path.abspath(os.path.join(directory, shard.tar))
        st = os.stat(path)
        entry = known.get(path)
        if isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return path, st, entry[2], 0
        h = file_sha256(path)
        if progress:
            progress(st.st_size)
        return path, st, h, st.st_size

    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="sha256") as pool:
            results = list(pool.map(digest, shards))
    except FileNotFoundError as e:  # pipeline.plan.check_split_files says this better, but be safe
        raise Damage(f"{e.filename}: missing; run `alexnet verify {directory}`") from None
    hashed = 0
    for shard, (path, st, h, n) in zip(shards, results):
        hashed += n
        if h != shard.sha256:
            raise Damage(f"{path}: sha256 differs from the manifest (damaged or changed since it was written); "
                         f"run `alexnet verify {directory}`, or train with --no-verify-shards at your own risk")
    if cache:
        atomic_write_json(cache, {path: [st.st_size, st.st_mtime_ns, h] for path, st, h, _ in results})
    return hashed


def _check_stored(directory: str, shards, threads: Optional[int]) -> None:
    """The sha256 stored with each object (by `alexnet upload`) against the manifest; objects
    stored without one (copied by other tools) cannot be checked without downloading them."""
    store = open_store(directory)
    with ThreadPoolExecutor(min(HASH_THREADS, max(1, len(shards)))) as pool:
        stored = list(pool.map(lambda s: store.stored_sha256(s.tar), shards))
    for shard, h in zip(shards, stored):
        if h is not None and h != shard.sha256:
            raise Damage(f"{store.url(shard.tar)}: its stored sha256 differs from the manifest (replaced or "
                         f"damaged); run `alexnet verify {directory}`")
