"""`alexnet merge`: combine the outputs of `alexnet preprocess --part i/N` into one shard folder.

Each part holds the shards n with n % N == i of the same global plan, its exact integer sums
(manifest `stats.sums` + `pixel_sum.npy`) and its errors. The merged manifest lists every shard
in order, with the parts' sha256s, and derives the statistics from the summed integers, so it
equals the manifest of a single run. Shard files are hard-linked (copied where a link is not
possible, e.g. across file systems) unless `mode` says "copy" or "move".
"""
import errno
import os
import shutil
from dataclasses import dataclass
from typing import List

import numpy as np

from preprocess import outdir
from preprocess.plan import Part
from preprocess.run import SPLIT_ORDER, _read_errors, save_stats, write_errors
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError, SplitInfo
from shards.stats import StatSums
from shards.writer import shard_number

MODES = ("link", "copy", "move")


class MergeError(ValueError):
    """The parts cannot be merged; the message names the part and the reason."""


@dataclass
class MergeSummary:
    out: str
    parts: int
    shards: int
    samples: int
    errors: int

    def line(self) -> str:
        return (f"merge: {self.parts} parts -> {self.shards} shards, {self.samples:,} samples, "
                f"{self.errors:,} errors -> {self.out}")


def _load_parts(parts: List[str]) -> List[Manifest]:
    manifests = []
    for p in parts:
        try:
            manifests.append(Manifest.load(p))
        except ManifestError as e:
            raise MergeError(str(e)) from None
    return manifests


def _check(parts: List[str], manifests: List[Manifest]) -> int:
    """The part count N, after checking the parts are 0..N-1 of one job, each once."""
    seen, of = {}, []
    for path, m in zip(parts, manifests):
        if not m.params.get("part"):
            raise MergeError(f"{path} is not a part (made without --part i/N)")
        part = Part.parse(m.params["part"])
        if part.index in seen:
            raise MergeError(f"{path} and {seen[part.index]} are both part {part}")
        seen[part.index] = path
        of.append(part)
    counts = {p.count for p in of}
    if len(counts) != 1:
        raise MergeError(f"the parts were made for different N ({', '.join(sorted(str(c) for c in counts))})")
    n = counts.pop()
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise MergeError(f"missing part(s) {', '.join(missing)} of {n}")
    first = manifests[0]
    for path, m in zip(parts[1:], manifests[1:]):
        diff = outdir.differences(dict(first.params, part=None), dict(m.params, part=None))
        if set(first.params.get("files") or {}) != set(m.params.get("files") or {}):
            diff.append("different splits")
        if [c.wnid for c in m.classes] != [c.wnid for c in first.classes]:
            diff.append("different classes")
        if diff:
            raise MergeError(f"{path} was made with other settings than {parts[0]} ({'; '.join(diff)})")
    for path, m, part in zip(parts, manifests, of):
        for split in m.splits.values():
            for s in split.shards:
                if not part.owns(shard_number(s.tar)):
                    raise MergeError(f"{path}: shard {s.tar} does not belong to part {part}")
    return n


def _check_out(out: str, parts: List[str], names: set) -> None:
    real = os.path.realpath(out)
    if any(os.path.realpath(p) == real for p in parts):
        raise MergeError(f"--out {out} is one of the parts; choose a new folder")
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        raise MergeError(f"{out} already holds a manifest; choose a new or empty folder")
    if os.path.isdir(out):  # leftovers of an interrupted merge are fine, anything else is not
        strays = [f for f in os.listdir(out) if f not in names and not f.endswith(".tmp")]
        if strays:
            raise MergeError(f"{out} is not empty (holds {strays[0]}); choose a new or empty folder")
    elif os.path.exists(out):
        raise MergeError(f"{out} exists and is not a folder")


def _place(src: str, dst: str, mode: str) -> None:
    """Put src at dst (via a temporary name, so dst is always complete)."""
    if os.path.exists(dst):
        return  # placed by an earlier, interrupted merge
    if not os.path.exists(src):
        raise MergeError(f"{src}: missing (listed in its part's manifest)")
    tmp = dst + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    if mode == "move":
        try:
            os.replace(src, dst)
            return
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        os.remove(src)
        return
    if mode == "link":
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
            return
        except OSError:
            pass  # another file system, or links not supported: copy
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def merge(parts: List[str], out: str, mode: str = "link") -> MergeSummary:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if not parts:
        raise MergeError("no parts given")
    manifests = _load_parts(parts)
    _check(parts, manifests)
    splits = {}
    for split in SPLIT_ORDER:
        shards = sorted((s for m in manifests if split in m.splits for s in m.splits[split].shards),
                        key=lambda s: s.tar)
        if shards:
            splits[split] = SplitInfo(samples=sum(s.samples for s in shards), shards=shards)
    where = {s.tar: p for p, m in zip(parts, manifests) for sp in m.splits.values() for s in sp.shards}
    names = {s.tar for sp in splits.values() for s in sp.shards} | {s.index for sp in splits.values() for s in sp.shards}
    names |= {"errors.jsonl", "mean_image.npy", "pixel_sum.npy"}
    _check_out(out, parts, names)
    os.makedirs(out, exist_ok=True)

    for sp in splits.values():
        for s in sp.shards:
            for name in (s.index, s.tar):  # the tar last: a final-named tar means a complete pair
                _place(os.path.join(where[s.tar], name), os.path.join(out, name), mode)

    total = None
    for p, m in zip(parts, manifests):
        if m.stats is not None:
            sums = StatSums.from_json(m.stats.sums, np.load(os.path.join(p, m.stats.pixel_sum)), m.image_size)
            total = sums if total is None else total.merge(sums)
    stats = save_stats(out, total) if total is not None else None
    rows = [r for p in parts for r in _read_errors(p)]
    write_errors(out, rows)
    first = manifests[0]
    merged = Manifest(image_size=first.image_size, classes=first.classes, params=dict(first.params, part=None),
                      splits=splits, stats=stats, errors=len(rows))
    merged.save(out)
    return MergeSummary(out, len(parts), sum(len(s.shards) for s in splits.values()),
                        sum(s.samples for s in splits.values()), len(rows))


__all__ = ["merge", "MergeError", "MergeSummary", "MODES"]
