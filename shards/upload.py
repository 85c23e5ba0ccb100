"""`alexnet upload OUT s3://bucket/prefix`: copy a local shard directory to object storage so that
a reader never sees part of it (docs/DESIGN.md, "Shard directory").

- Every object is uploaded whole (S3 shows an object only once its upload is complete, a
  multipart one too), with the sha256 of its bytes as object metadata (`shards.store.SHA256_KEY`).
- The manifest goes last: a reader that finds it finds every object it names, complete. When the
  prefix already holds a manifest and anything else must change, that manifest is deleted first,
  so the directory is absent, never inconsistent, while it is rewritten.
- A rerun (after a kill, a lost connection) uploads only what is missing or differs: an object
  whose size and stored sha256 match the local file's is kept. The result is byte-identical to an
  uninterrupted run. Unfinished multipart uploads of these names left by a killed run are aborted.
- Nothing damaged is uploaded: a shard whose index does not fit its tar, or whose bytes do not
  hash to the manifest's sha256, stops the upload before the manifest (shards.errors.Damage).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from shards.errors import Damage, UserError
from shards.format import ERRORS_NAME, MANIFEST_NAME
from shards.s3lock import upload_lock
from shards.store import LocalStore, S3Store, is_s3_url
from shards.writer import file_sha256

UPLOAD_JOBS = 8  # objects uploaded at once


@dataclass
class UploadReport:
    """What `upload_shard_dir` did: the objects uploaded and those already there, and the bytes sent."""

    source: str
    destination: str
    uploaded: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    bytes_sent: int = 0
    aborted: int = 0  # unfinished multipart uploads of a killed run, aborted

    def line(self) -> str:
        """The one-line summary `alexnet upload` prints."""
        total = len(self.uploaded) + len(self.kept)
        return (f"upload: {self.destination}: {total} objects, {len(self.uploaded)} uploaded "
                f"({self.bytes_sent / 1e6:.1f} MB), {len(self.kept)} already there; manifest last")


def _files(src: str, manifest) -> List[Tuple[str, Optional[str]]]:
    """(name, the manifest's sha256 or None) of every file of the directory but the manifest."""
    names = []
    for split in manifest.splits.values():
        for shard in split.shards:
            names += [(shard.tar, shard.sha256), (shard.index, None)]
    if manifest.stats is not None:
        names += [(manifest.stats.mean_image, None), (manifest.stats.pixel_sum, None)]
    if os.path.isfile(os.path.join(src, ERRORS_NAME)):
        names.append((ERRORS_NAME, None))
    return names


def _check_local(src: str, manifest, files) -> None:
    """Damage unless every file is there and every shard's index fits its tar (sizes only)."""
    from shards.verify import shard_files_problem

    hint = f"run `alexnet verify {src}`; nothing was uploaded"
    for split in manifest.splits.values():
        for shard in split.shards:
            problem = shard_files_problem(shard, os.path.join(src, shard.tar), os.path.join(src, shard.index))
            if problem is not None:
                raise Damage(f"{os.path.join(src, problem.file)}: {problem.message}; {hint}")
    for name, _ in files:
        if not os.path.isfile(os.path.join(src, name)):
            raise Damage(f"{os.path.join(src, name)}: missing; {hint}")


def upload_shard_dir(src, dest: str, jobs: int = UPLOAD_JOBS,
                     progress: Optional[Callable[[int, int], None]] = None) -> UploadReport:
    """Upload the local shard directory `src` to `dest` (`s3://bucket/prefix`), the manifest last;
    prints nothing. progress(done, total) is called after each object. Raises UserError (no
    manifest, a wrong address or credentials: one line naming the URL) or Damage (a local shard
    that does not match its manifest; the manifest is then not uploaded)."""
    from shards.manifest import Manifest

    src = os.fspath(src)
    if is_s3_url(src):
        raise UserError(f"{src}: upload copies a local shard directory; give a folder as OUT")
    if not is_s3_url(dest):
        raise UserError(f"{dest}: not an s3:// URL; give the destination as s3://bucket/prefix")
    remote = S3Store(dest)  # an ambiguous URL (shards.store.check_s3_url) is refused before any work
    manifest = Manifest.load(src)
    files = _files(src, manifest)
    _check_local(src, manifest, files)
    remote.is_dir()  # the bucket, the credentials and the endpoint, before the lock is written
    with upload_lock(remote, src):  # one upload per prefix (shards.s3lock)
        return _send(src, LocalStore(src), remote, files, jobs, progress)


def _send(src: str, local: LocalStore, remote: S3Store, files, jobs: int, progress) -> UploadReport:
    """What `upload_shard_dir` does once it holds the prefix's lock."""
    report = UploadReport(src, remote.location)
    there = remote.listing()

    def needed(item) -> Optional[str]:
        """The sha256 to upload `name` with, or None when the same bytes are there already."""
        name, expected = item
        digest = expected or file_sha256(local.url(name))  # a tar's is the manifest's (checked by send)
        if there.get(name) == local.size(name) and remote.stored_sha256(name) == digest:
            return None
        return digest

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="upload") as pool:
        digests = list(pool.map(needed, files))
    todo = [(name, digest) for (name, _), digest in zip(files, digests) if digest is not None]
    report.kept = [name for (name, _), digest in zip(files, digests) if digest is None]
    manifest_bytes = local.read_bytes(MANIFEST_NAME)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    manifest_kept = not todo and MANIFEST_NAME in there and remote.stored_sha256(MANIFEST_NAME) == manifest_sha
    if MANIFEST_NAME in there and not manifest_kept:
        remote.delete(MANIFEST_NAME)  # absent, not inconsistent, while its objects change
    report.aborted = remote.abort_uploads([name for name, _ in todo] + [MANIFEST_NAME])
    total = len(files) + 1
    done = len(report.kept)

    expected_sha = dict(files)

    def send(name: str, digest: str) -> int:
        path = local.url(name)
        expected = expected_sha[name]
        with open(path, "rb") as f:
            data = f.read()  # read once: hashed and sent from the same bytes
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:  # changed since the manifest
            raise Damage(f"{path}: sha256 differs from the manifest (file changed or damaged); run "
                         f"`alexnet verify {src}`; the manifest was not uploaded")
        remote.put(name, data, sha256=digest)
        return len(data)

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="upload") as pool:
        futures = {pool.submit(send, name, digest): name for name, digest in todo}
        try:
            for future in as_completed(futures):
                report.bytes_sent += future.result()
                report.uploaded.append(futures[future])
                done += 1
                if progress:
                    progress(done, total)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    if manifest_kept:
        report.kept.append(MANIFEST_NAME)
    else:
        remote.put(MANIFEST_NAME, manifest_bytes, sha256=manifest_sha)
        report.uploaded.append(MANIFEST_NAME)
        report.bytes_sent += len(manifest_bytes)
    if progress:
        progress(total, total)
    report.uploaded.sort()
    return report
