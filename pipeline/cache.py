"""A local cache of an s3:// shard directory for the DALI loader (docs/DESIGN.md, "Shard cache").

DALI's S3 reader makes two ranged GETs per sample, one after another; the cache instead
downloads whole tars and indexes, several at once (boto3's transfer manager), checks each tar's
sha256 against the manifest and each index against its verified tar (as `alexnet verify` does),
and only then renames them to their final names: a file under its final name is verified, so a
restart reuses it. The loader hands DALI the local copies of the tars that overlap this rank's
slice of an epoch (`EpochSlice`), with trimmed indexes where the slice cuts a shard.

Eviction (`cache_limit`): files held by a pipeline (`make_room`/`release`), this process's or any
other live process's on the same directory, are counted (at their full size before they arrive)
and never removed; of the rest, the one this rank reads again latest (or never, within the next
epochs) goes first. Locking: one fcntl lock per file (`.locks/NAME`), so two processes on one
cache directory download a file once (the second waits and then reads the finished copy), and
one lock per directory (`.locks/.holds`) under which a process publishes what it holds
(`.holds/TOKEN.list`) and an evictor reads every live process's list before it removes anything.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from shards.errors import Damage, UserError

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
WRITING = re.compile(r"\.part-(\d+)(\.[0-9A-Za-z]{8})?$|\.tmp$")  # .part-PID (+ s3transfer's .XXXXXXXX), .tmp
TRIMMED = re.compile(r"\.\d+-\d+\.idx$")  # a trimmed index's name: <stem>.<sha>.<a>-<b>.idx
HORIZON = 4  # epochs ahead looked at to decide which file this rank reads again soonest


def parse_size(size) -> Optional[int]:
    """Bytes of `size`: an int, or a string such as "40G", "512M", "1000" (None stays None)."""
    if size is None or isinstance(size, int):
        return size
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(size), re.IGNORECASE)
    if found is None:
        raise ValueError(f"cache_limit={size!r}: expected a size such as 40G, 512M or a number of bytes")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2).upper()])


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/alexnet`, else `~/.cache/alexnet`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alexnet")


@dataclass
class EpochSlice:
    """What one rank's reader is given for one epoch: the shards overlapping its slice, in the
    epoch's order, and how many samples to skip in the first and keep in the last."""

    shards: list  # ShardInfo, in the epoch's order
    skip: int  # samples of shards[0] before the slice
    keep: int  # samples of shards[-1] inside the slice

    def ranges(self):
        """[(shard, first sample, end sample)] of each shard's part of the slice."""
        out = []
        for i, s in enumerate(self.shards):
            a = self.skip if i == 0 else 0
            b = self.keep if i == len(self.shards) - 1 else s.samples
            out.append((s, a, b))
        return out


def epoch_slice(shards_in_order: Sequence, start: int, stop: int) -> EpochSlice:
    """The shards of `shards_in_order` (ShardInfo, with `.samples`) that hold samples [start, stop)."""
    picked, skip, keep, pos = [], 0, 0, 0
    for s in shards_in_order:
        a, b = pos, pos + s.samples
        pos = b
        if b <= start or a >= stop:
            continue
        if not picked:
            skip = start - a
        picked.append(s)
        keep = min(stop, b) - a
    return EpochSlice(picked, skip, keep)


def open_cache(spec) -> Optional["ShardCache"]:
    """The shard cache of a loader's spec (pipeline.plan.LoaderSpec): None unless its shards are
    on s3://; UserError (exit 2) when the cache folder cannot be written, before any request."""
    from shards.store import is_s3_url

    return ShardCache(spec.out, spec.cache_dir, spec.cache_limit) if is_s3_url(spec.out) else None


class Cancelled(Exception):
    """A fetch stopped by `ShardCache.cancel` (a loader being closed)."""


@dataclass
class ShardCache:
    """Local verified copies of an s3:// shard directory's shards under `root`."""

    url: str  # s3://bucket/prefix
    cache_dir: str
    limit: Optional[int] = None  # bytes; None: no limit
    connections: int = 8  # files downloaded at once
    root: str = ""
    _held: Dict[object, set] = field(default_factory=dict, repr=False)
    _next_use: Dict[str, int] = field(default_factory=dict, repr=False)  # file → epoch it is read again
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    downloaded: int = 0  # bytes fetched by this process
    busy: float = 0.0  # seconds spent fetching them (the download rate's denominator)
    fetched: list = field(default_factory=list, repr=False)  # tars this process downloaded, in order
    _transfers: object = field(default=None, repr=False)  # boto3's transfer manager (s3transfer), made once
    _running: set = field(default_factory=set, repr=False)  # its futures not waited for yet
    _fetching: int = field(default=0, repr=False)  # fetches running now
    _busy_since: float = field(default=0.0, repr=False)
    over: int = 0  # the most bytes the directory held beyond the limit (processes sharing it, each
    #                holding more at once than the limit leaves them): 0 when the limit held

    def __post_init__(self):
        from shards.store import open_store

        self.store = open_store(self.url)
        folder = f"{self.store.bucket}/{self.store.prefix}".strip("/").replace("/", "__")
        self.root = os.path.join(os.path.abspath(os.path.expanduser(self.cache_dir)), folder)
        self._check_writable()
        self._sizes, self._etags = None, {}
        self._alive = None
        self._cancelled = threading.Event()
        with self._dir_lock():
            self._register()
            self._held_elsewhere()  # a killed process's list and half-written downloads go now

    def _register(self) -> None:
        """(Re)start: no cancellation pending, and this object's `.holds/TOKEN.alive`, locked while
        it lives (dropped on close or exit), made under the directory lock, so that no evictor sees
        it unlocked and takes it for dead."""
        self._cancelled.clear()
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._alive = open(os.path.join(self.root, ".holds", f"{self.token}.alive"), "wb")
        fcntl.flock(self._alive, fcntl.LOCK_EX)

    def size(self, shard) -> int:
        """Bytes of a shard's tar and index on the server (one listing, then remembered)."""
        return sum(self._sizes_of(shard))

    def _check_writable(self):
        """UserError (exit 2) when the cache folder cannot be made or written, before any work."""
        probe = os.path.join(self.root, f".probe-{os.getpid()}")
        try:
            os.makedirs(os.path.join(self.root, ".locks"), exist_ok=True)
            os.makedirs(os.path.join(self.root, ".holds"), exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise UserError(f"{self.root}: cannot write the shard cache ({e.strerror or e}); "
                            f"pass a writable --cache-dir") from None

    # --- names ------------------------------------------------------------------------------
    def tar_path(self, shard) -> str:
        return os.path.join(self.root, f"{shard.tar[:-4]}.{shard.sha256[:12]}.tar")

    def index_path(self, shard, a: int = 0, b: Optional[int] = None) -> str:
        """The shard's verified index; with (a, b) ≠ (0, samples) the index of samples [a, b) only."""
        stem = os.path.join(self.root, f"{shard.tar[:-4]}.{shard.sha256[:12]}")
        if a == 0 and (b is None or b == shard.samples):
            return stem + ".idx"
        return f"{stem}.{a}-{b}.idx"

    # --- the slice of one epoch --------------------------------------------------------------
    def fetch(self, piece: EpochSlice, key=None) -> tuple:
        """([tar paths], [index paths]) of `piece`, every file downloaded and verified; held under
        `key` (an epoch) until `release(key)`."""
        ranges = piece.ranges()
        files = self._files(piece.shards)
        # the trimmed indexes are the pipeline's too: held (at the full index's size) before they exist
        files.update({self.index_path(s, a, b): self._sizes_of(s)[1] for s, a, b in ranges})
        self.make_room(key, files)
        with self._mutex:  # `busy` counts the time any fetch runs once, however many overlap
            self._fetching += 1
            if self._fetching == 1:
                self._busy_since = time.perf_counter()
        try:
            with ThreadPoolExecutor(min(self.connections, max(1, len(piece.shards)))) as pool:
                list(pool.map(self._ensure, piece.shards))
        finally:
            with self._mutex:
                self._fetching -= 1
                if self._fetching == 0:
                    self.busy += time.perf_counter() - self._busy_since
        return [self.tar_path(s) for s, _, _ in ranges], [self._trimmed(s, a, b) for s, a, b in ranges]

    def missing_bytes(self, piece: EpochSlice) -> int:
        """Bytes of `piece` not in the cache yet: what its first batch waits for."""
        return sum(self.size(s) for s in piece.shards
                   if not (os.path.exists(self.tar_path(s)) and os.path.exists(self.index_path(s))))

    def release(self, key) -> None:
        """The pipeline of `key` is dropped: its files may be evicted."""
        if self._alive is None or self._alive.closed:
            return
        with self._dir_lock():
            with self._mutex:
                files = self._held.pop(key, None) or {}
            held = self._publish()
            # a trimmed index serves one slice: removed once nobody holds it (a later slice with the
            # same cut writes it again in milliseconds), so they do not pile up epoch after epoch
            trimmed = [p for p in files if TRIMMED.search(p) and p not in held]
            if trimmed:
                held = self._held_elsewhere()
                for path in trimmed:
                    if path not in held and os.path.exists(path):
                        os.remove(path)

    def plan_reads(self, future: Dict[int, Sequence]) -> None:
        """{epoch: shards this rank reads in it}: the order eviction keeps files by."""
        uses = {}
        for epoch in sorted(future, reverse=True):
            for s in future[epoch]:
                uses[self.tar_path(s)] = uses[self.index_path(s)] = epoch
        with self._mutex:
            self._next_use = uses

    def cancel(self) -> None:
        """Stop downloading: transfers under way are cancelled (their partial files removed) and
        no new one starts; a fetch running now raises `Cancelled`. For closing a loader that is
        downloading an epoch ahead, which would otherwise wait for the whole slice."""
        self._cancelled.set()
        with self._mutex:
            transfers, self._transfers = self._transfers, None
            running = list(self._running)
        for future in running:  # each one: s3transfer 0.19's shutdown(cancel=True) passes its arguments wrong
            future.cancel()
        if transfers is not None:
            transfers.shutdown()

    def close(self) -> None:
        """Nothing held any more: this process's list goes, and evictors may take every file (a
        later `fetch` registers again)."""
        if self._alive is None or self._alive.closed:
            return
        self.cancel()
        with self._dir_lock():
            with self._mutex:
                self._held.clear()
            self._forget(self.token)
        self._alive.close()

    def _forget(self, token: str) -> None:
        """Remove a process's hold list and liveness file (under the directory lock)."""
        for suffix in (".list", ".alive"):
            with suppress(FileNotFoundError):
                os.remove(os.path.join(self.root, ".holds", token + suffix))

    # --- space ---------------------------------------------------------------------------------
    def used(self) -> int:
        """Bytes of the cache's files (verified copies, trimmed indexes, downloads under way)."""
        return sum(self._present().values())

    def _present(self) -> Dict[str, int]:
        """{path: bytes} of the files in the cache folder now. A download renames its `.part` file
        and an evictor removes files while the folder is read: a file gone by its stat is skipped."""
        present = {}
        for entry in os.scandir(self.root):
            try:
                if entry.is_file():
                    present[entry.path] = entry.stat().st_size
            except FileNotFoundError:
                pass
        return present

    def _sizes_of(self, shard) -> tuple:
        """(tar bytes, index bytes) on the server: one listing (sizes and ETags), then remembered."""
        if self._sizes is None:  # the listing the loader's split check made through this store, else a new one
            self._sizes = getattr(self.store, "sizes", None) or self.store.listing()
            self._etags = getattr(self.store, "etags", {})
        return self._sizes.get(shard.tar, 0), self._sizes.get(shard.index, 0)

    def _files(self, shards) -> Dict[str, int]:
        """{local path: bytes once downloaded} of the tars and indexes of `shards`."""
        files = {}
        for s in shards:
            tar, idx = self._sizes_of(s)
            files[self.tar_path(s)], files[self.index_path(s)] = tar, idx
        return files

    def make_room(self, key, files: Dict[str, int]) -> None:
        """Hold `files` ({path: bytes}) under `key`, then evict files nobody holds, latest-read
        first, until everything held by any process (at full size, arrived or not) and every other
        file fit under the limit.

        Held files are published (`.holds/TOKEN.list`) and evictions made under the directory
        lock, and a process holds a file before it looks for it or downloads it: an evictor
        therefore never removes a file another process is about to read."""
        with self._dir_lock():
            if self._alive is None or self._alive.closed:  # used again after close()
                self._register()
            with self._mutex:
                self._held[key] = dict(files)
                uses = dict(self._next_use)
            held = self._publish()
            if self.limit is None:
                return
            held.update(self._held_elsewhere())
            present = self._present()
            # a file being written (a download's .part-PID, an index's .tmp) is counted at its final
            # size among the held files; it is never a victim
            writing = {p for p in present if WRITING.search(os.path.basename(p))}
            total = sum(n for p, n in present.items() if p not in writing and p not in held) + sum(held.values())
            victims = sorted((p for p in present if p not in held and p not in writing),
                             key=lambda p: (-uses.get(p, 1 << 30), p))  # never read again first; a
            #                                                          shard's tar and index side by side
            for path in victims:
                if total <= self.limit:
                    break
                with suppress(FileNotFoundError):
                    os.remove(path)
                    total -= present[path]
            if total > self.limit and total - self.limit > self.over:
                if not self.over:
                    print(f"warning: {self.root}: the processes sharing this shard cache hold "
                          f"{total} bytes at once, over --cache-limit {self.limit}: give each its own "
                          f"--cache-dir or raise the limit", file=sys.stderr)
                self.over = total - self.limit

    # --- what every process holds -----------------------------------------------------------------
    def _dir_lock(self):
        """The directory's lock: held while holds are published or read and while files are evicted."""
        return self._lock(".holds")

    def _publish(self) -> Dict[str, int]:
        """Write what this process holds to its list (under the directory lock); return it."""
        from shards.files import atomic_write

        with self._mutex:
            held = {}
            for files in self._held.values():
                held.update(files)
        lines = "".join(f"{os.path.basename(p)} {n}\n" for p, n in held.items())
        path = os.path.join(self.root, ".holds", f"{self.token}.list")
        with self._writing(path):
            atomic_write(path, lambda f: f.write(lines.encode()), fsync=False)
        return held

    def _held_elsewhere(self) -> Dict[str, int]:
        """{path: bytes} held by the other live processes on this directory (under the directory
        lock). A process whose `.alive` lock can be taken is gone: its list, its lock file and its
        downloads under way (`.part-PID`) are removed."""
        folder, held, dead = os.path.join(self.root, ".holds"), {}, []
        for name in os.listdir(folder):
            token = name[:-len(".alive")]
            if not name.endswith(".alive") or token == self.token:
                continue
            with open(os.path.join(folder, name), "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    dead.append(token)
                    continue
                except BlockingIOError:
                    pass
            try:
                with open(os.path.join(folder, f"{token}.list")) as f:
                    for line in f:
                        path, n = line.rsplit(" ", 1)
                        held[os.path.join(self.root, path)] = int(n)
            except FileNotFoundError:  # not published yet
                pass
        live_pids = {t.split("-")[0] for t in os.listdir(folder) if t.endswith(".alive") and t[:-6] not in dead}
        for token in dead:
            self._forget(token)
        gone = {t.split("-")[0] for t in dead} - live_pids  # no other cache of that pid alive: its downloads go
        if gone:
            for path in self._present():  # .part-PID and s3transfer's .part-PID.XXXXXXXX
                found = WRITING.search(os.path.basename(path))
                if found and found.group(1) in gone:
                    with suppress(FileNotFoundError):
                        os.remove(path)
        return held

    # --- one shard -------------------------------------------------------------------------------
    @contextmanager
    def _lock(self, name: str):
        """`.locks/NAME`, held while the block runs: a shard's (its tar's name), or the directory's (`.holds`)."""
        with open(os.path.join(self.root, ".locks", name), "wb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield  # closing the file drops the lock

    def _ensure(self, shard) -> None:
        """The shard's tar and index under their final names, verified (downloaded if missing)."""
        tar, idx = self.tar_path(shard), self.index_path(shard)
        sizes = self._sizes_of(shard)
        with self._lock(os.path.basename(tar)):
            if self._complete(shard):
                return  # a final name is a verified file (this process's or another's)
            if self._cancelled.is_set():
                raise Cancelled(f"{self.root}: the shard cache was closed")
            tmp_tar, tmp_idx = f"{tar}.part-{os.getpid()}", f"{idx}.part-{os.getpid()}"
            try:
                transfers = [(self.store.url(name), dest, self._download(name, dest, size))
                             for name, dest, size in zip((shard.tar, shard.index), (tmp_tar, tmp_idx), sizes)]
                errors = [self._failure(url, dest, future) for url, dest, future in transfers]  # waits for both
                if any(errors):
                    raise next(e for e in errors if e)
                self._verify(shard, tmp_tar, tmp_idx)
                os.replace(tmp_idx, idx)
                os.replace(tmp_tar, tar)
            finally:
                for p in (tmp_tar, tmp_idx):
                    if os.path.exists(p):
                        os.remove(p)
            with self._mutex:
                self.downloaded += self.size(shard)
                self.fetched.append(shard.tar)

    def _complete(self, shard) -> bool:
        """Whether the shard's tar and index are there under their final names, at the listing's
        sizes. Files are renamed only once verified; a size that differs (a copy cut short by a
        machine crash before the kernel wrote it out: not fsynced, to keep the download's pace)
        is removed, to be downloaded again."""
        tar, idx = self.tar_path(shard), self.index_path(shard)
        sizes = [os.path.getsize(p) if os.path.exists(p) else None for p in (tar, idx)]
        if sizes == list(self._sizes_of(shard)):
            return True
        for path, size in zip((tar, idx), sizes):
            if size is not None:
                os.remove(path)
        return False

    def _download(self, name: str, dest: str, size: int):
        """A future of the download of object `name` to `dest` by boto3's transfer manager (one per
        cache: its threads serve every file of a slice at once; it retries a cut stream and writes
        under a temporary name of its own). The size and ETag come from the listing, so no HEAD
        request precedes the GET: one round trip per file (s3transfer sends a HEAD unless it knows
        both)."""
        from s3transfer.subscribers import BaseSubscriber

        etag = self._etags.get(name)

        class Known(BaseSubscriber):
            def on_queued(self, future, **kwargs):
                future.meta.provide_transfer_size(size)
                if etag is not None:
                    future.meta.provide_object_etag(etag)

        with self._mutex:
            if self._transfers is None:
                from boto3.s3.transfer import TransferConfig, create_transfer_manager

                # io_chunksize: what a stream reads between checks for a cancel (boto3's default, 256 KiB,
                # held a cancelled download for seconds on a slow link)
                config = TransferConfig(max_concurrency=2 * self.connections, multipart_threshold=64 << 20,
                                        num_download_attempts=5, io_chunksize=64 << 10)
                self._transfers = create_transfer_manager(self.store.client, config)
            future = self._transfers.download(self.store.bucket, self.store.key(name), dest, subscribers=[Known()])
            self._running.add(future)
            return future

    def _failure(self, url: str, dest: str, future) -> Optional[Exception]:
        """None once the transfer `future` has succeeded, else the one-line error to raise."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            future.result()
            return None
        except Exception as e:
            if self._cancelled.is_set():
                return Cancelled(f"{self.root}: the shard cache was closed")
            if isinstance(e, OSError) and not isinstance(e, BotoCoreError):  # the local file's errors
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    return self._full(dest, url)
                return Damage(f"{url}: the download failed ({e.strerror or e}); run the command again")
            if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return Damage(f"{url}: the object changed on the server since it was listed (its ETag differs); "
                              f"run `alexnet verify {self.url}`")
            from shards.store import _raised  # botocore's errors once the transfer manager's retries are spent

            error = _raised(e, url, self.store.client)
            if isinstance(error, UserError):  # the endpoint gone, credentials refused: exit 2
                return error
            if isinstance(error, FileNotFoundError):
                return Damage(f"{url}: missing from the shard directory; run `alexnet verify {self.url}`")
            text = " ".join(str(error).split())[:200]
            return Damage(f"{url}: the download was cut short, also on retries ({text}); run the command again")
        finally:
            with self._mutex:
                self._running.discard(future)

    @staticmethod
    def _full(dest: str, url: Optional[str] = None) -> Damage:
        while_ = f" while downloading {url}" if url else ""
        return Damage(f"{dest}: the disk of the shard cache is full{while_}; free space or pass a smaller --cache-limit")

    @contextmanager
    def _writing(self, path: str, url: Optional[str] = None):
        """A file of the cache written in the block: a full disk is one line (Damage, exit 1)."""
        try:
            yield
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._full(path, url) from None
            raise

    def _verify(self, shard, tar: str, idx: str) -> None:
        """Damage naming the object unless the tar has the manifest's sha256 and the index fits it."""
        from shards.verify import _check_index, member_table

        with open(tar, "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != shard.sha256:
            raise Damage(f"{self.store.url(shard.tar)}: sha256 differs from the manifest (the object changed "
                         f"on the server or was damaged); run `alexnet verify {self.url}`")
        problems = _check_index(idx, member_table(raw))
        if problems:
            raise Damage(f"{self.store.url(shard.index)}: does not fit its verified tar ({problems[0].message}); "
                         f"run `alexnet verify {self.url}`")

    def _trimmed(self, shard, a: int, b: int) -> str:
        """The index of samples [a, b) of a cached shard (written once, atomically)."""
        from shards.files import atomic_write
        from shards.writer import INDEX_VERSION, parse_index

        path = self.index_path(shard, a, b)
        # under the shard's lock: the background download of the next slice and the pipeline's
        # build may both trim the same index (one temporary name: seen once as a lost rename)
        with self._lock(os.path.basename(self.tar_path(shard))):
            if os.path.exists(path):
                return path
            full = self.index_path(shard)
            with open(full) as f:
                samples = parse_index(f.read(), full)[a:b]
            lines = [f"{INDEX_VERSION} {len(samples)}"]
            lines += [" ".join(f"{e} {o} {n} {m}" for e, o, n, m in sample) for sample in samples]
            with self._writing(path, self.store.url(shard.index)):
                atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))
        return path

    def slice_bytes(self, shards: Sequence, slice_samples: int) -> int:
        """The most bytes one rank's slice of `slice_samples` samples holds in any epoch, whatever
        the shard order: as many shards as such a slice can overlap (one sample in each end shard,
        the smallest shards whole between them), each at the largest size, and two trimmed indexes."""
        overlap, room = 2, slice_samples - 2
        for n in sorted(s.samples for s in shards):
            if n > room:
                break
            room, overlap = room - n, overlap + 1
        sizes = sorted((self.size(s) for s in shards), reverse=True)
        return sum(sizes[:min(overlap, len(shards))]) + 2 * max(self._sizes_of(s)[1] for s in shards)

    def check_limit(self, spec, shards: Sequence) -> None:
        """UserError (exit 2, one line) when the limit cannot hold what the readers of `spec`'s
        split (`shards`) on this directory hold at once: each one epoch's slice and the next one's
        (`slice_bytes`), for each rank of this node (torchrun's LOCAL_WORLD_SIZE: the ranks of a node
        share the default cache folder)."""
        if self.limit is None:
            return
        readers = max(1, min(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), spec.world_size))
        slice_samples = -(-sum(s.samples for s in shards) // spec.world_size)
        need = readers * 2 * self.slice_bytes(shards, slice_samples)
        where = spec.out
        if need > self.limit:
            who = f"the {readers} ranks of this node hold" if readers > 1 else "the reader holds"
            raise UserError(f"--cache-limit {self.limit} bytes is below what {who} of {where} at once "
                            f"({need} bytes: one epoch's slice and the next one's); raise it")

    # --- progress --------------------------------------------------------------------------------
    def rate(self) -> float:
        """Bytes per second while this process was downloading (a fetch under way included)."""
        with self._mutex:
            busy = self.busy + (time.perf_counter() - self._busy_since if self._fetching else 0.0)
            done = self.downloaded
        return done / busy if busy > 0 else 0.0

    def progress(self) -> str:
        """The download rate and fill level, for a progress line: `cache 48.1 MB/s 1.2/40.0 GB`."""
        rate = self.rate() / 1e6
        limit = f"{self.limit / 1e9:.1f}" if self.limit is not None else "∞"
        return f"cache {rate:.1f} MB/s {self.used() / 1e9:.2f}/{limit} GB"

