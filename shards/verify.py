"""`alexnet verify`: check a shard directory against its manifest, sample by sample.

Per shard: file present, sha256, sample count, three members per sample, the JPEG decodes to
256×256 RGB, `cls` agrees with `json`, and every `.idx` entry points at the right bytes. And the
statistics files the manifest names: `mean_image.npy` and `pixel_sum.npy` present, of the image
size, and agreeing with each other and with the manifest's exact sums.
"""
import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from shards.manifest import Manifest, ManifestError, ShardInfo
from shards.store import open_store, read_array, store_of
from shards.writer import MEMBER_EXTS, parse_index, read_index


@dataclass
class Problem:
    """One thing wrong in a shard directory: the file, the sample key ("" for the whole file), what."""

    file: str
    sample: str  # "" when the problem is with the whole file
    message: str

    def __str__(self):
        where = f"{self.file}:{self.sample}" if self.sample else self.file
        return f"{where}: {self.message}"


def _read_members(raw: bytes):
    """[(name, data offset, size, bytes)] of the regular files of a tar, in tar order."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for m in tf:
            if m.isfile():
                members.append((m.name, m.offset_data, m.size, tf.extractfile(m).read()))
    return members


def member_table(raw: bytes):
    """[(name, data offset, size)] of the regular files of a tar, in tar order: what `tarfile`
    reads, from the 512-byte ustar headers directly (10x faster: the shard cache checks each
    downloaded index with it). Anything but plain ustar file headers (pax or GNU long names, links,
    base-256 sizes, a bad header checksum) is left to `tarfile`."""
    members, pos, end = [], 0, len(raw)
    while pos + 512 <= end:
        block = raw[pos:pos + 512]
        if block == bytes(512):
            return members
        size_field = block[124:136]
        stored = block[148:156].split(b"\0", 1)[0].strip()
        if (block[156:157] not in (b"0", b"\0") or size_field[0] & 0x80 or block[257:262] != b"ustar"
                or not stored or int(stored, 8) != sum(block[:148]) + 256 + sum(block[156:])):
            break
        name = block[:100].split(b"\0", 1)[0].decode()
        prefix = block[345:500].split(b"\0", 1)[0].decode()
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        members.append((f"{prefix}/{name}" if prefix else name, pos + 512, size))
        pos += 512 + (size + 511) // 512 * 512
    else:
        return members
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        return [(m.name, m.offset_data, m.size) for m in tf if m.isfile()]


def _check_image(data, size):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format != "JPEG" or im.mode != "RGB" or im.size != (size, size):
            return f"image is {im.format} {im.mode} {im.size[0]}x{im.size[1]}, expected JPEG RGB {size}x{size}"
    return None


def verify_shard(directory, shard: ShardInfo, image_size: int, num_classes: int):
    """All problems of one shard (an empty list when it is sound); `directory` is a folder or an
    `s3://` URL (shards.store)."""
    store = open_store(directory)
    name = shard.tar
    for p in (shard.tar, shard.index):
        if not store.exists(p):
            return [Problem(p, "", "missing")]
    problems = []
    try:
        raw = store.read_bytes(shard.tar)  # one read serves the hash and the members (a shard is ~25 MB)
    except OSError as e:
        return [Problem(name, "", f"unreadable ({e.strerror or e})")]
    if hashlib.sha256(raw).hexdigest() != shard.sha256:
        problems.append(Problem(name, "", "sha256 differs from the manifest (file changed or damaged)"))
    try:
        members = _read_members(raw)
    except (tarfile.TarError, OSError, EOFError) as e:
        return problems + [Problem(name, "", f"unreadable tar ({e})")]

    samples = {}
    for mname, offset, size, data in members:
        key, _, ext = mname.partition(".")
        samples.setdefault(key, {})[ext] = (mname, offset, size, data)
    if len(samples) != shard.samples:
        problems.append(Problem(name, "", f"holds {len(samples)} samples, manifest says {shard.samples}"))

    for key, parts in samples.items():
        missing = [e for e in MEMBER_EXTS if e not in parts]
        if missing:
            problems.append(Problem(name, key, f"missing member(s) {', '.join(missing)}"))
            continue
        try:
            msg = _check_image(parts["jpg"][3], image_size)
        except Exception as e:  # PIL raises many types for damaged data
            msg = f"JPEG does not decode ({e})"
        if msg:
            problems.append(Problem(name, key, msg))
        try:
            label = int(parts["cls"][3].decode())
            meta = json.loads(parts["json"][3])
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(Problem(name, key, f"unreadable cls/json ({e})"))
            continue
        if not isinstance(meta, dict):
            problems.append(Problem(name, key, f"json is not an object ({parts['json'][3][:40]!r})"))
            continue
        if meta.get("label") != label:
            problems.append(Problem(name, key, f"cls says {label}, json says {meta.get('label')}"))
        if not 0 <= label < num_classes:
            problems.append(Problem(name, key, f"label {label} outside 0..{num_classes - 1}"))

    problems += _check_index(store.url(shard.index), members)
    return problems


def _check_index(idx_path, members):
    name = os.path.basename(idx_path)
    try:
        index = read_index(idx_path)
    except (ValueError, OSError) as e:
        return [Problem(name, "", str(e))]
    expected = {m[0]: (m[1], m[2]) for m in members}
    problems = []
    n_entries = sum(len(s) for s in index)
    if n_entries != len(members):
        problems.append(Problem(name, "", f"indexes {n_entries} members, the tar holds {len(members)} (stale index?)"))
    for sample in index:
        for ext, offset, size, member in sample:
            key = member.partition(".")[0]
            if expected.get(member) != (offset, size):
                problems.append(
                    Problem(name, key, f"entry {member} at {offset}+{size} does not match the tar (stale index?)")
                )
    return problems


def _verify_job(args):
    return verify_shard(*args)


@dataclass
class VerifyReport:
    """What `verify_shard_dir` found: `problems` (empty when the directory is sound) and counts."""

    directory: str
    problems: List[Problem] = field(default_factory=list)
    shards: int = 0
    samples: int = 0
    splits: Dict[str, int] = field(default_factory=dict)  # split -> samples

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """The one-line summary `alexnet verify` prints (on stdout when ok, else on stderr)."""
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        if self.problems:
            return f"verify: {len(self.problems)} problem(s) in {self.directory} ({self.shards} shards, {splits})"
        return f"ok: {self.directory}: {self.shards} shards, {self.samples} samples ({splits}), all checks passed"


def verify_shard_dir(directory, workers: Optional[int] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> VerifyReport:
    """Check every shard and statistics file named in `directory`'s manifest; prints nothing.

    workers: processes (default: one per shard, at most one per core); progress(done, total) is
    called after each shard. Raises ManifestError when the manifest itself is unusable.
    """
    directory = str(directory)
    manifest = Manifest.load(directory)
    jobs = [
        (directory, shard, manifest.image_size, manifest.num_classes)
        for split in manifest.splits.values()
        for shard in split.shards
    ]
    problems = []
    if manifest.stats is not None:
        problems += _check_stat_files(directory, manifest)
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_verify_job, jobs)
            for i, r in enumerate(results):
                problems += r
                if progress:
                    progress(i + 1, len(jobs))
    else:
        for i, job in enumerate(jobs):
            problems += _verify_job(job)
            if progress:
                progress(i + 1, len(jobs))
    return VerifyReport(
        directory=directory,
        problems=problems,
        shards=len(jobs),
        samples=sum(s.samples for s in manifest.splits.values()),
        splits={k: v.samples for k, v in manifest.splits.items()},
    )


def _load_array(directory, name, shape, dtype):
    """(array, []) or (None, [Problem]) for the .npy `name` that must be `dtype` of `shape`."""
    store = open_store(directory)
    if not store.exists(name):
        return None, [Problem(name, "", "missing")]
    try:
        array = read_array(store, name)
    except (OSError, ValueError, EOFError) as e:  # a truncated or foreign file, a pickle
        return None, [Problem(name, "", f"unreadable ({e})")]
    if array.shape != shape or array.dtype != dtype:
        return None, [Problem(name, "", f"{array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")]
    return array, []


def _check_stat_files(directory, manifest):
    """The mean image and the per-pixel sums: present, of the image size, and consistent with each
    other and with the manifest's exact sums (both are derived from the same integers)."""
    stats, s = manifest.stats, manifest.image_size
    mean_image, problems = _load_array(directory, stats.mean_image, (s, s, 3), np.float32)
    pixel_sum, more = _load_array(directory, stats.pixel_sum, (s, s, 3), np.int64)
    problems += more
    if pixel_sum is None:
        return problems
    if stats.sums is not None and pixel_sum.sum(axis=(0, 1)).tolist() != list(stats.sums["sum"]):
        problems.append(Problem(stats.pixel_sum, "", "its total differs from the manifest's stats.sums"))
    elif mean_image is not None and stats.images and not np.allclose(
            mean_image, pixel_sum / (stats.images * 255.0), rtol=0, atol=1e-6):
        problems.append(Problem(stats.mean_image, "", f"differs from {stats.pixel_sum} / (images · 255)"))
    return problems


def shard_files_problem(shard: ShardInfo, tar: str, idx: str) -> Optional[Problem]:
    """What is wrong with a shard's two files (its tar and index at these paths or `s3://` URLs)
    that shows without reading the tar (None: they fit): either missing, an index that does not
    parse, holds another number of samples than the manifest or reaches past the end of the tar.
    Sizes, not hashes: the cheap check before files are moved or handed to a reader;
    `verify_shard` checks everything."""
    (tar_store, tar_name), (idx_store, idx_name) = store_of(tar), store_of(idx)
    for store, name in ((tar_store, tar_name), (idx_store, idx_name)):
        if not _is_file(store, name):
            return Problem(name, "", "missing")
    return _fit_problem(shard, tar_store.size(tar_name), next(idx_store.read_many([idx_name])), idx)


def split_files_problems(directory, shards, store=None) -> List[Problem]:
    """`shard_files_problem` of each of `shards` in `directory` (a folder or `s3://` URL), at
    most one per shard: one listing for the sizes and the indexes read concurrently, so that a
    split of ImageNet's 1,282 shards on S3 costs a few requests' time, not thousands in a row."""
    store = store or open_store(directory)
    sizes = store.listing()
    present = [s for s in shards if s.tar in sizes and s.index in sizes]
    indexes = dict(zip((s.index for s in present), store.read_many(s.index for s in present)))
    problems = []
    for s in shards:
        if s.tar not in sizes or s.index not in sizes:
            problems.append(Problem(s.tar if s.tar not in sizes else s.index, "", "missing"))
            continue
        problem = _fit_problem(s, sizes[s.tar], indexes[s.index], store.url(s.index))
        if problem is not None:
            problems.append(problem)
    return problems


def _is_file(store, name) -> bool:
    return store.exists(name) if store.remote else os.path.isfile(store.url(name))


def _fit_problem(shard: ShardInfo, tar_size: int, index, idx_path) -> Optional[Problem]:
    """The problem of a shard whose tar has `tar_size` bytes and whose index is `index` (its
    bytes, or the OSError reading them gave), or None."""
    try:
        if isinstance(index, OSError):
            raise index
        index = parse_index(index.decode(), idx_path)
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        return Problem(shard.index, "", f"not a readable DALI index ({e})")
    if len(index) != shard.samples:
        return Problem(shard.index, "", f"indexes {len(index)} samples, the manifest says {shard.samples}")
    end = max((offset + size for sample in index for _, offset, size, _ in sample), default=0)
    if end > tar_size:
        return Problem(shard.tar, "", f"truncated ({tar_size} bytes; its index reaches byte {end})")
    return None


__all__ = ["Problem", "VerifyReport", "verify_shard_dir", "verify_shard", "shard_files_problem", "split_files_problems",
           "ManifestError"]
