"""Finishing a shard directory (docs/DESIGN.md, "Shard directory"): once its shards are in place,
write the statistics files, errors.jsonl and, last, manifest.json.

One finisher for every writer of shard directories (`alexnet preprocess`, `alexnet merge`,
tests/shardkit.py), so each of them writes every file the manifest names, with the same bytes.
The manifest comes last: a directory with a manifest is complete, one without is not.
"""
import json
import os
from typing import Dict, Iterable, List, Optional

import numpy as np

from shards.errors import Damage, one_line
from shards.files import atomic_write, read_text
from shards.format import ERRORS_NAME, IMAGE_SIZE, MEAN_IMAGE_NAME, PIXEL_SUM_NAME, SPLITS
from shards.manifest import ClassInfo, DamagedManifest, Manifest, ShardInfo, SplitInfo, Stats
from shards.stats import StatSums


class NothingUsable(Damage):
    """A split to be written has no shards because every one of its source images failed:
    errors.jsonl lists them and no manifest is written (a directory with 0 images of a split
    must not look complete). Exit code 1."""


def finish_shard_dir(
    out,
    *,
    classes: List[ClassInfo],
    params: dict,
    splits: Dict[str, List[ShardInfo]],
    errors: Iterable[dict] = (),
    sums: Optional[StatSums] = None,
    stats: Optional[Stats] = None,
    image_size: int = IMAGE_SIZE,
) -> Manifest:
    """Complete the shard directory `out`, whose shards (tar + idx) are already there.

    splits: split -> its shards in order (listed in the manifest in `SPLITS` order); an empty
      list means every image of that split failed: errors.jsonl is written, then NothingUsable
      is raised and there is no manifest.
    errors: one dict per source file not used or used despite a warning, with "split", "path"
      and "reason", and "position" (its place in the split's write order) when it was planned
      (a file skipped while scanning SRC has none), "kept": true when it was used anyway,
      "note": true when it was used as documented but is worth knowing (an animated image);
      written sorted, with a summary line, to errors.jsonl. The manifest's `errors` counts the
      files not used.
    sums: the exact training-pixel sums: mean_image.npy and pixel_sum.npy are written and the
      manifest's statistics derived from them (none when they cover no image). Or
    stats: statistics whose files are already in `out` (a run that adds a split to a directory),
      kept as they are.
    Every file is written atomically (shards.files). Returns the saved Manifest.
    """
    if sums is not None and stats is not None:
        raise ValueError("pass the sums to derive the statistics from, or statistics already written, not both")
    out = os.fspath(out)
    if sums is not None:
        stats = _write_stats(out, sums) if sums.images else None
    rows = list(errors)
    write_errors(out, rows)
    failed = [s for s in SPLITS if s in splits and not splits[s]]
    if failed:
        raise NothingUsable(f"every image of the {' and '.join(failed)} split failed; no manifest was "
                            f"written (see {os.path.join(out, ERRORS_NAME)})")
    listed = {s: SplitInfo(samples=sum(sh.samples for sh in splits[s]), shards=list(splits[s]))
              for s in SPLITS if s in splits}
    manifest = Manifest(image_size=image_size, classes=list(classes), params=params, splits=listed, stats=stats,
                        errors=sum(not used(r) for r in rows))
    try:
        manifest.save(out)
    except DamagedManifest as e:  # e.g. training pixels without variation in a channel: unusable statistics
        raise Damage(f"{e.problem}; no manifest was written") from None
    return manifest


def _write_stats(out: str, sums: StatSums) -> Stats:
    """mean_image.npy and pixel_sum.npy, and the manifest's Stats, from exact sums."""
    derived, mean_image = sums.derive()
    atomic_write(os.path.join(out, MEAN_IMAGE_NAME), lambda f: np.save(f, mean_image))
    atomic_write(os.path.join(out, PIXEL_SUM_NAME), lambda f: np.save(f, sums.pixel_sum))
    return Stats(**derived, sums=sums.to_json())


def kept(row: dict) -> bool:
    """Whether an errors.jsonl row is a file used despite a warning (not one that failed)."""
    return row.get("kept") is True


def note(row: dict) -> bool:
    """Whether an errors.jsonl row is a note on a file used as documented (an animated image's
    first frame, a tiny image upscaled: preprocess.transform.notes_for), not a failure."""
    return row.get("note") is True


def used(row: dict) -> bool:
    """Whether the file of an errors.jsonl row is in the shards (kept or noted), not skipped."""
    return kept(row) or note(row)


def _order(row: dict):
    """Split, then files skipped while scanning (by path), then write order."""
    return SPLITS.index(row["split"]), row.get("position", -1), row.get("path", "")


def write_errors(out, rows: List[dict]) -> None:
    """errors.jsonl: one line per listed file in split, then write order; then one summary line
    (`errors`: files not used, in all and by split; `kept`: files used despite a warning;
    `notes`: files used with a note)."""
    rows = sorted(rows, key=_order)
    failed = [r for r in rows if not used(r)]
    by_split = {s: sum(1 for r in failed if r["split"] == s) for s in SPLITS}
    lines = [json.dumps(r) for r in rows]
    summary = {"errors": len(failed), "by_split": by_split, "kept": sum(map(kept, rows))}
    if any(map(note, rows)):  # absent when there is none, so that older directories stay byte-identical
        summary["notes"] = sum(map(note, rows))
    lines.append(json.dumps({"summary": summary}))
    atomic_write(os.path.join(os.fspath(out), ERRORS_NAME), lambda f: f.write(("\n".join(lines) + "\n").encode()))


def read_errors(directory) -> List[dict]:
    """The file rows of `directory`'s errors.jsonl (without its summary line); [] when there is
    none. A file that is not such rows is Damage (exit 1), one line naming it and the line."""
    path = os.path.join(os.fspath(directory), ERRORS_NAME)
    if not os.path.exists(path):
        return []
    with one_line(path):
        text = read_text(path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row = e.msg
        if isinstance(row, dict) and "summary" in row:
            continue
        if not (isinstance(row, dict) and row.get("split") in SPLITS and isinstance(row.get("path"), str)
                and isinstance(row.get("position", 0), int)):
            raise Damage(f"{path}: line {n} is not a row of failed files ({str(row)[:60]}); the folder is damaged")
        rows.append(row)
    return rows
