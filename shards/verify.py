"""`alexnet verify`: check a shard directory against its manifest, sample by sample.

Per shard: file present, sha256, sample count, three members per sample, the JPEG decodes to
256×256 RGB, `cls` agrees with `json`, and every `.idx` entry points at the right bytes.
"""
import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from shards.manifest import Manifest, ManifestError, ShardInfo
from shards.writer import MEMBER_EXTS, read_index


@dataclass
class Problem:
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


def _check_image(data, size):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.format != "JPEG" or im.mode != "RGB" or im.size != (size, size):
            return f"image is {im.format} {im.mode} {im.size[0]}x{im.size[1]}, expected JPEG RGB {size}x{size}"
    return None


def verify_shard(directory, shard: ShardInfo, image_size: int, num_classes: int):
    """All problems of one shard (an empty list when it is sound)."""
    tar_path = os.path.join(directory, shard.tar)
    idx_path = os.path.join(directory, shard.index)
    name = shard.tar
    for p in (tar_path, idx_path):
        if not os.path.exists(p):
            return [Problem(os.path.basename(p), "", "missing")]
    problems = []
    with open(tar_path, "rb") as f:
        raw = f.read()  # one read serves the hash and the members (a shard is ~25 MB)
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
        if meta.get("label") != label:
            problems.append(Problem(name, key, f"cls says {label}, json says {meta.get('label')}"))
        if not 0 <= label < num_classes:
            problems.append(Problem(name, key, f"label {label} outside 0..{num_classes - 1}"))

    problems += _check_index(idx_path, members)
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


def verify(directory, workers=None, progress=None):
    """(problems, summary counts). Raises ManifestError when the manifest itself is unusable."""
    directory = str(directory)
    manifest = Manifest.load(directory)
    jobs = [
        (directory, shard, manifest.image_size, manifest.num_classes)
        for split in manifest.splits.values()
        for shard in split.shards
    ]
    problems = []
    if manifest.stats is not None:
        problems += _check_mean_image(directory, manifest)
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
    summary = {
        "shards": len(jobs),
        "samples": sum(s.samples for s in manifest.splits.values()),
        "splits": {k: v.samples for k, v in manifest.splits.items()},
    }
    return problems, summary


def _check_mean_image(directory, manifest):
    path = os.path.join(directory, manifest.stats.mean_image)
    name = manifest.stats.mean_image
    if not os.path.exists(path):
        return [Problem(name, "", "missing")]
    try:
        img = np.load(path)
    except (OSError, ValueError) as e:
        return [Problem(name, "", f"unreadable ({e})")]
    s = manifest.image_size
    if img.shape != (s, s, 3):
        return [Problem(name, "", f"shape {img.shape}, expected ({s}, {s}, 3)")]
    return []


__all__ = ["Problem", "verify", "verify_shard", "ManifestError"]
