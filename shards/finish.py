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

from shards.errors import Damage
from shards.files import atomic_write
from shards.format import ERRORS_NAME, IMAGE_SIZE, MEAN_IMAGE_NAME, PIXEL_SUM_NAME, SPLITS
from shards.manifest import ClassInfo, Manifest, ShardInfo, SplitInfo, Stats
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
    errors: one dict per failed source file, with at least "split" and "position" (its place in
      the split's write order); written sorted, with a summary line, to errors.jsonl.
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
    _write_errors(out, rows)
    failed = [s for s in SPLITS if s in splits and not splits[s]]
    if failed:
        raise NothingUsable(f"every image of the {' and '.join(failed)} split failed; no manifest was "
                            f"written (see {os.path.join(out, ERRORS_NAME)})")
    listed = {s: SplitInfo(samples=sum(sh.samples for sh in splits[s]), shards=list(splits[s]))
              for s in SPLITS if s in splits}
    manifest = Manifest(image_size=image_size, classes=list(classes), params=params, splits=listed, stats=stats,
                        errors=len(rows))
    manifest.save(out)
    return manifest


def _write_stats(out: str, sums: StatSums) -> Stats:
    """mean_image.npy and pixel_sum.npy, and the manifest's Stats, from exact sums."""
    derived, mean_image = sums.derive()
    atomic_write(os.path.join(out, MEAN_IMAGE_NAME), lambda f: np.save(f, mean_image))
    atomic_write(os.path.join(out, PIXEL_SUM_NAME), lambda f: np.save(f, sums.pixel_sum))
    return Stats(**derived, sums=sums.to_json())


def _write_errors(out: str, rows: List[dict]) -> None:
    """errors.jsonl: one line per failed file in split, then write order; then one summary line."""
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["position"]))
    by_split = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    lines = [json.dumps(r) for r in rows]
    lines.append(json.dumps({"summary": {"errors": len(rows), "by_split": by_split}}))
    atomic_write(os.path.join(out, ERRORS_NAME), lambda f: f.write(("\n".join(lines) + "\n").encode()))


def read_errors(directory) -> List[dict]:
    """The failed-file rows of `directory`'s errors.jsonl (without its summary line); [] when
    there is none."""
    path = os.path.join(os.fspath(directory), ERRORS_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "summary" not in r]
