"""`alexnet preprocess`: an ImageNet folder -> shards, statistics and an error report, in one pass.

Workers decode, resize, encode and sum chunks of files; the main process consumes the results
in plan order, writes each shard (tar + DALI index) and its record, and in the end derives the
statistics from the records' integer sums and writes errors.jsonl and manifest.json (last).
Memory stays bounded on 1.28 M images: at most `4 × workers` chunks are in flight, the main
process holds one shard's samples at a time, and per-shard sums live on disk, not in memory.
With --workers 1 everything runs in the main process (no pool, no pickling).
"""
import json
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from preprocess import outdir, worker
from preprocess.plan import Plan, Settings, ShardTask, make_plan
from preprocess.progress import Progress
from preprocess.scan import ScanError, scan
from preprocess.transform import CHROMA_SUBSAMPLING
from shards.manifest import ClassInfo, Manifest, SplitInfo, Stats
from shards.stats import StatSums
from shards.writer import ShardWriter, sample_key

SPLIT_ORDER = ("train", "val")


@dataclass
class Summary:
    out: str
    written: int  # images encoded by this run
    reused: int  # shards kept from an earlier run
    shards: int  # shards of the requested splits in OUT
    samples: int  # samples in those shards
    errors: int  # failed files of the requested splits (reused shards included)
    seconds: float

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        reused = f", {self.reused} reused" if self.reused else ""
        return (f"preprocess: {self.samples:,} images in {self.shards} shards{reused}, {self.errors:,} errors, "
                f"{self.seconds:.1f} s, {rate:,.1f} img/s -> {self.out}")


class TooManyErrors(RuntimeError):
    def __init__(self, summary: Summary, limit: int):
        super().__init__(f"{summary.errors:,} files failed, more than --max-errors {limit}; "
                         f"see {os.path.join(summary.out, 'errors.jsonl')}")
        self.summary = summary


class NothingUsable(RuntimeError):
    """Every source image of a split failed: errors.jsonl lists them, and no manifest is written."""


def preprocess(settings: Settings, show_progress: bool = True) -> Summary:
    """Run the job; raises ScanError/OutError for bad input, TooManyErrors after finishing."""
    t0 = time.perf_counter()
    out = settings.out
    source = scan(settings.src, settings.splits)
    if settings.split == "val" and "val" not in source.splits:
        raise ScanError(f"{settings.src}: no validation images (val/ is missing or empty)")
    plan = make_plan(source, settings)
    params = settings.params(":".join(CHROMA_SUBSAMPLING))
    params["files"] = {s: {"count": len(v), "sha256": source.fingerprint(v)} for s, v in plan.files.items()}
    with outdir.locked(out):
        existing, params = outdir.prepare(out, params, source.wnids)

        owned = {split: plan.owned(split, settings.part) for split in plan.shards}
        records: Dict[str, outdir.ShardRecord] = {}
        pool = _pool(settings) if settings.workers > 1 else None
        try:
            _reuse(out, [t for tasks in owned.values() for t in tasks], records, pool)
            todo = [t for tasks in owned.values() for t in tasks if t.stem not in records]
            written = _run(settings, todo, records, pool, show_progress)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        errors = _finish(out, plan, owned, records, existing, params, source)
        outdir.remove_leftovers(out)
        tasks = [t for ts in owned.values() for t in ts]
        summary = Summary(
            out=out, written=written, reused=len(tasks) - len(todo),
            shards=sum(1 for t in tasks if records[t.stem].shard), errors=errors,
            samples=sum(records[t.stem].shard.samples for t in tasks if records[t.stem].shard),
            seconds=time.perf_counter() - t0,
        )
    if settings.max_errors is not None and errors > settings.max_errors:
        raise TooManyErrors(summary, settings.max_errors)
    return summary


def _pool(settings: Settings):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return ProcessPoolExecutor(settings.workers, ctx, initializer=worker.init_pool_worker,
                               initargs=(os.getpid(), *_worker_args(settings)))


def _worker_args(settings: Settings):
    return (os.path.abspath(settings.src), settings.size, settings.quality, settings.resize_filter)


def _reuse(out: str, tasks: List[ShardTask], records: dict, pool) -> None:
    """Keep the finished shards whose tar still has the recorded sha256."""
    found = [(t, outdir.load_record(out, t.stem, with_sums=False)) for t in tasks]
    found = [(t, r) for t, r in found if r is not None and r.files == len(t.items)]
    checks = [(os.path.join(out, r.shard.tar), r.shard.sha256) for _, r in found if r.shard]
    if pool is not None:
        ok = list(pool.map(outdir.sha256_matches, *zip(*checks))) if checks else []
    else:
        ok = [outdir.sha256_matches(*c) for c in checks]
    ok = iter(ok)
    for task, rec in found:
        if rec.shard is None or next(ok):
            records[task.stem] = rec


def _results(settings: Settings, todo: List[ShardTask], pool):
    """(task, ChunkResult) for every chunk of `todo`, in order, with a bounded number in flight."""
    jobs = ((t, chunk) for t in todo for chunk in t.chunks())
    if pool is None:
        worker.init(*_worker_args(settings))
        for task, chunk in jobs:
            yield task, worker.process_chunk(task.split, chunk)
        return
    window = deque()
    for task, chunk in jobs:
        window.append((task, pool.submit(worker.process_chunk, task.split, chunk)))
        if len(window) >= 4 * settings.workers:
            task, future = window.popleft()
            yield task, future.result()
    while window:
        task, future = window.popleft()
        yield task, future.result()


def _run(settings: Settings, todo: List[ShardTask], records: dict, pool, show_progress: bool) -> int:
    """Process the shards in `todo`, writing each as soon as its last chunk is in. Returns images."""
    total = sum(len(t.items) for t in todo)
    progress = Progress(total, enabled=show_progress)
    done = n_errors = written = 0
    current, samples, errors, sums = None, [], [], None
    for task, result in _results(settings, todo, pool):
        if task is not current:
            current, samples, errors, sums = task, [], [], (StatSums(settings.size) if task.split == "train" else None)
        samples += result.samples
        errors += result.errors
        if result.sums is not None:
            sums.merge(result.sums)
        done += len(result.samples) + len(result.errors)
        n_errors += len(result.errors)
        written += len(result.samples)
        if done_with(task, samples, errors):
            records[task.stem] = _write_shard(settings.out, task, samples, errors, sums)
        progress.update(done, n_errors)
    progress.close()
    return written


def done_with(task: ShardTask, samples: list, errors: list) -> bool:
    return len(samples) + len(errors) == len(task.items)


def _write_shard(out: str, task: ShardTask, samples, errors, sums) -> outdir.ShardRecord:
    info, tar_bytes = None, 0
    if samples:
        with ShardWriter(out, task.stem) as w:
            for position, jpeg, label, meta in samples:
                w.write(sample_key(task.split, position), jpeg, label, meta)
        info = w.info
        tar_bytes = os.path.getsize(os.path.join(out, info.tar))
    rec = outdir.ShardRecord(task.stem, len(task.items), info, tar_bytes, errors, sums)
    outdir.save_record(out, rec)
    rec.sums = None  # 1.5 MB per shard: read back one at a time in _finish, not held in memory
    return rec


def _finish(out: str, plan: Plan, owned, records, existing: Optional[Manifest], params: dict, source) -> int:
    """Write statistics, errors.jsonl and (last) manifest.json. Returns this run's error count.

    A split of which this run owns shards but every image failed gets errors.jsonl and no
    manifest (NothingUsable): a shard directory with 0 images must not look complete."""
    splits = dict(existing.splits) if existing else {}
    stats = existing.stats if existing else None
    old_errors = _read_errors(out)
    error_lines = [e for e in old_errors if e["split"] not in owned]
    run_errors = 0
    for split, tasks in owned.items():
        recs = [records[t.stem] for t in tasks]
        shards = [r.shard for r in recs if r.shard]
        splits.pop(split, None)
        if shards:
            splits[split] = SplitInfo(samples=sum(s.samples for s in shards), shards=shards)
        for r in recs:
            error_lines += r.errors
            run_errors += len(r.errors)
        if split == "train":
            stats = _write_stats(out, [t.stem for t in tasks])
    write_errors(out, error_lines)
    failed = [split for split, tasks in owned.items() if tasks and split not in splits]
    if failed:
        raise NothingUsable(f"every image of the {' and '.join(failed)} split failed; no manifest was "
                            f"written (see {os.path.join(out, 'errors.jsonl')})")
    classes = [ClassInfo(i, w, source.names.get(w, w)) for i, w in enumerate(source.wnids)]
    ordered = {s: splits[s] for s in SPLIT_ORDER if s in splits}
    Manifest(image_size=params["size"], classes=classes, params=params, splits=ordered, stats=stats,
             errors=len(error_lines)).save(out)
    return run_errors


def _write_stats(out: str, stems: List[str]) -> Optional[Stats]:
    """Sum the training shards' records (streamed: memory stays flat on 1,282 shards)."""
    total = None
    for stem in stems:
        sums = outdir.load_record(out, stem).sums
        if sums is not None:
            total = sums if total is None else total.merge(sums)
    if total is None or total.images == 0:
        return None
    return save_stats(out, total)


def save_stats(out: str, total: StatSums) -> Stats:
    """mean_image.npy and pixel_sum.npy (atomically) and the manifest's Stats, from exact sums."""
    derived, mean_image = total.derive()
    outdir.atomic_write(os.path.join(out, "mean_image.npy"), lambda f: np.save(f, mean_image))
    outdir.atomic_write(os.path.join(out, "pixel_sum.npy"), lambda f: np.save(f, total.pixel_sum))
    return Stats(**derived, sums=total.to_json())


def _read_errors(out: str) -> List[dict]:
    path = os.path.join(out, "errors.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "summary" not in r]


def write_errors(out: str, rows: List[dict]) -> None:
    """errors.jsonl: one line per failed file in plan order, then one summary line."""
    rows = sorted(rows, key=lambda r: (SPLIT_ORDER.index(r["split"]), r["position"]))
    by_split = {s: sum(1 for r in rows if r["split"] == s) for s in SPLIT_ORDER}
    lines = [json.dumps(r) for r in rows]
    lines.append(json.dumps({"summary": {"errors": len(rows), "by_split": by_split}}))
    outdir.atomic_write(os.path.join(out, "errors.jsonl"), lambda f: f.write(("\n".join(lines) + "\n").encode()))
