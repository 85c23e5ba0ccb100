"""`alexnet merge`: combine the outputs of `alexnet preprocess --part i/N` into one shard folder.

Each part holds the shards n with n % N == i of the same global plan, its exact integer sums
(manifest `stats.sums` + `pixel_sum.npy`) and its errors. The merged manifest lists every shard
in order, with the parts' sha256s, and derives the statistics from the summed integers, so it
equals the manifest of a single run. Shard files are hard-linked (copied where a link is not
possible, e.g. across file systems) unless `mode` says "copy" or "move"; the merged folder is
finished like any other (shards.finish).
"""
import errno
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from preprocess import outdir
from preprocess.plan import Part
from shards.errors import Damage, UserError, one_line
from shards.files import LOCK, atomic_write, naming
from shards.finish import finish_shard_dir, read_errors, used
from shards.format import ERRORS_NAME, MANIFEST_NAME, MEAN_IMAGE_NAME, PIXEL_SUM_NAME, SPLITS
from shards.manifest import Manifest
from shards.stats import StatSums
from shards.verify import shard_files_problem
from shards.writer import shard_number

MODES = ("link", "copy", "move")


class MergeError(UserError, ValueError):
    """The parts cannot be merged; the message names the part and the reason (exit code 2)."""


class DamagedPart(MergeError, Damage):
    """A part's manifest names a file that is missing or does not fit (a shard file, its
    pixel_sum.npy): damage found, exit code 1. Nothing was placed."""


@dataclass
class MergeSummary:
    """What a merge did; `line()` is the one line `alexnet merge` prints."""

    out: str
    parts: int
    shards: int
    samples: int
    errors: int

    def line(self) -> str:
        return (f"merge: {self.parts} parts -> {self.shards} shards, {self.samples:,} samples, "
                f"{self.errors:,} errors -> {self.out}")


def _load_parts(parts: List[str]) -> List[Manifest]:
    """Each part's manifest (ManifestError, exit 2, or DamagedManifest, exit 1, naming it)."""
    return [Manifest.load(p) for p in parts]


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
        strays = [f for f in os.listdir(out) if f not in names | {LOCK} and not f.endswith(".tmp")]
        if strays:
            raise MergeError(f"{out} is not empty (holds {strays[0]}); choose a new or empty folder")
    elif os.path.exists(out):
        raise MergeError(f"{out} exists and is not a folder")


def _part_sums(parts: List[str], manifests: List[Manifest]) -> Optional[StatSums]:
    """The parts' exact training sums added up, every pixel_sum.npy read and checked against its
    manifest first (before any file is placed)."""
    total = None
    for p, m in zip(parts, manifests):
        if m.stats is None:
            continue
        path = os.path.join(p, m.stats.pixel_sum)
        if m.stats.sums is None:
            raise DamagedPart(f"{os.path.join(p, MANIFEST_NAME)}: its statistics have no exact sums, so parts "
                             "cannot be merged; write the part again with alexnet preprocess --part")
        try:
            pixel_sum = np.load(path)
        except FileNotFoundError:
            raise DamagedPart(f"{path}: missing (a part's training statistics); write the part again with alexnet "
                             "preprocess --part") from None
        except (OSError, ValueError, EOFError) as e:
            raise DamagedPart(f"{path}: unreadable ({e}); write the part again with alexnet preprocess --part") from None
        shape = (m.image_size, m.image_size, 3)
        if pixel_sum.shape != shape or pixel_sum.dtype != np.int64 or \
                pixel_sum.sum(axis=(0, 1)).tolist() != list(m.stats.sums["sum"]):
            raise DamagedPart(f"{path}: does not match its part's manifest (expected int64 {shape} summing to "
                             "stats.sums.sum); write the part again with alexnet preprocess --part")
        sums = StatSums.from_json(m.stats.sums, pixel_sum, m.image_size)
        total = sums if total is None else total.merge(sums)
    return total


def _check_shard_files(splits, where, out: str) -> None:
    """Every shard file a part's manifest names is there (in its part, or in `out` where an
    interrupted merge put it) and fits its index, before anything is placed."""
    def found(part: str, name: str) -> str:
        placed = os.path.join(out, name)
        return placed if os.path.exists(placed) else os.path.join(part, name)

    for shards in splits.values():
        for s in shards:
            problem = shard_files_problem(s, found(where[s.tar], s.tar), found(where[s.tar], s.index))
            if problem is not None:
                raise DamagedPart(f"{os.path.join(where[s.tar], problem.file)}: {problem.message} (listed in "
                                 f"{os.path.join(where[s.tar], MANIFEST_NAME)}); nothing was merged")


def _place(src: str, dst: str, mode: str) -> None:
    """Put src at dst, so that dst is always complete: a rename or a hard link is atomic by
    itself, a copy goes through shards.files.atomic_write (fsynced before a move removes src)."""
    if os.path.exists(dst):
        return  # placed by an earlier, interrupted merge
    try:
        if mode == "move":
            os.replace(src, dst)
            return
        if mode == "link":
            os.link(src, dst)
            return
    except OSError as e:
        if mode == "move" and e.errno != errno.EXDEV:
            raise
        # another file system, or links not supported: copy
    with open(src, "rb") as f, naming(dst):
        atomic_write(dst, lambda g: shutil.copyfileobj(f, g, 1 << 20))
    if mode == "move":
        os.remove(src)


def merge(parts: List[str], out: str, mode: str = "link") -> MergeSummary:
    """Combine the part folders `parts` (written with `--part i/N`, each i once) into `out` (new or
    empty), putting the shard files there by `mode` ("link", "copy" or "move"). The result
    equals a single run's folder. Raises MergeError (exit code 2) when the parts do not fit,
    DamagedPart (exit code 1) when a part lacks a file its manifest names.

    Everything is checked before the first file is placed (every part's manifest, settings and
    errors.jsonl, every shard file it names and its index, every pixel_sum.npy), so a refused
    merge moves nothing. A merge that fails on the way (a full disk) is one line; the same merge
    run again finishes it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if not parts:
        raise MergeError("no parts given")
    manifests = _load_parts(parts)
    _check(parts, manifests)
    splits = {}
    for split in SPLITS:
        shards = sorted((s for m in manifests if split in m.splits for s in m.splits[split].shards),
                        key=lambda s: s.tar)
        if shards:
            splits[split] = shards
    where = {s.tar: p for p, m in zip(parts, manifests) for sp in m.splits.values() for s in sp.shards}
    names = {name for shards in splits.values() for s in shards for name in (s.tar, s.index)}
    names |= {ERRORS_NAME, MEAN_IMAGE_NAME, PIXEL_SUM_NAME}
    with one_line(out):  # an unreadable folder, one line naming it
        _check_out(out, parts, names)
        total = _part_sums(parts, manifests)
        rows = [r for p in parts for r in read_errors(p)]
        _check_shard_files(splits, where, out)
    with one_line(out, "run the same merge again to finish it"):
        with outdir.locked(out, "alexnet merge", MergeError):  # one merge into `out` at a time
            for shards in splits.values():
                for s in shards:
                    for name in (s.index, s.tar):  # the tar last: a final-named tar means a complete pair
                        _place(os.path.join(where[s.tar], name), os.path.join(out, name), mode)
            first = manifests[0]
            finish_shard_dir(out, classes=first.classes, params=dict(first.params, part=None), splits=splits,
                             errors=rows, sums=total, image_size=first.image_size)
            outdir.remove_leftovers(out)  # temporaries of an interrupted earlier merge into `out`
    return MergeSummary(out, len(parts), sum(len(s) for s in splits.values()),
                        sum(sh.samples for s in splits.values() for sh in s), sum(not used(r) for r in rows))


__all__ = ["merge", "MergeError", "DamagedPart", "MergeSummary", "MODES"]
