"""`alexnet preprocess`: an ImageNet folder -> shards, statistics and an error report, in one pass.

Workers decode, resize, encode and sum chunks of files; the main process consumes the results
in plan order, writes each shard (tar + DALI index) and its record, and in the end sums the
records' exact integers and finishes OUT (shards.finish: the statistics files, errors.jsonl and,
last, manifest.json).
Memory stays bounded on 1.28 M images: at most `4 × workers` chunks are in flight, the main
process holds one shard's samples at a time, and per-shard sums live on disk, not in memory.
With --workers 1 everything runs in the main process (no pool, no pickling).
"""
import os
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from preprocess import outdir, worker
from preprocess.plan import Settings, ShardTask, make_plan
from preprocess.progress import Progress
from preprocess.source import ScanError, Source, scan
from preprocess.transform import CHROMA_SUBSAMPLING
from shards.errors import Damage, one_line
from shards.finish import NothingUsable, finish_shard_dir, kept, note, read_errors, used, write_errors
from shards.format import ERRORS_NAME, TRAIN, VAL
from shards.manifest import ClassInfo, Manifest
from shards.stats import StatSums
from shards.writer import ShardWriter, sample_key

__all__ = ["preprocess", "Summary", "TooManyErrors", "NothingUsable"]


@dataclass
class Summary:
    """What a preprocess run did; `line()` is the one line `alexnet preprocess` prints."""

    out: str
    written: int  # images encoded by this run
    reused: int  # shards kept from an earlier run
    shards: int  # shards of the requested splits in OUT
    samples: int  # samples in those shards
    errors: int  # files of the requested splits not used (reused shards and skipped entries included)
    seconds: float
    kept: int = 0  # files used despite libjpeg's warnings (listed in errors.jsonl too)
    notes: int = 0  # files used with a note in errors.jsonl (animated, tiny)

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        reused = f", {self.reused} reused" if self.reused else ""
        kept = f", {self.kept:,} kept with warnings" if self.kept else ""
        kept += f", {self.notes:,} noted" if self.notes else ""
        return (f"preprocess: {self.samples:,} images in {self.shards} shards{reused}, {self.errors:,} errors{kept}, "
                f"{self.seconds:.1f} s, {rate:,.1f} img/s -> {self.out}")


class TooManyErrors(Damage):
    """More files failed than `Settings.max_errors`: errors.jsonl lists them, the finished shards
    are kept for a rerun, and no manifest is written (a failed preprocess must not look
    complete); the run's Summary in `.summary` (exit code 1)."""

    def __init__(self, summary: Summary, limit: int):
        super().__init__(f"{summary.errors:,} files failed, more than --max-errors {limit}; no manifest was written "
                         f"(see {os.path.join(summary.out, ERRORS_NAME)}; the finished shards are kept: run again "
                         "with a higher --max-errors to finish OUT from them)")
        self.summary = summary


def preprocess(settings: Settings, show_progress: bool = True) -> Summary:
    """Run the job: SRC -> shards, statistics, errors.jsonl and manifest.json in OUT.

    Raises ScanError/OutError (UserError, exit 2) for bad input or an unusable OUT,
    NothingUsable (Damage, exit 1) when every image of a split failed, and TooManyErrors
    (Damage, exit 1) when more files failed than `settings.max_errors` (errors.jsonl written,
    shards kept, no manifest).
    Anything else that goes wrong with a file (a full disk, an unreadable input) is one line
    naming it (shards.errors.one_line): exit 1 when the disk refused data, else 2. OUT gets its
    manifest only once complete; a failed run leaves OUT as a rerun resumes it.
    """
    t0 = time.perf_counter()
    out = settings.out
    with one_line(settings.src):
        source = scan(settings.src, settings.splits)
    if settings.split == VAL and VAL not in source.splits:
        raise ScanError(f"{settings.src}: no validation images (val/ is missing or empty)")
    plan = make_plan(source, settings)
    params = settings.params(":".join(CHROMA_SUBSAMPLING))
    params["files"] = {s: {"count": len(v), "sha256": source.fingerprint(v)} for s, v in plan.files.items()}
    resume = "the finished shards are kept: run the same command again to go on from them"
    with one_line(out, resume), outdir.locked(out):
        existing, params = outdir.prepare(out, params, source.wnids)

        owned = {split: plan.owned(split, settings.part) for split in plan.shards}
        records: Dict[str, outdir.ShardRecord] = {}
        pool = _pool(settings) if settings.workers > 1 else None
        try:
            _reuse(out, [t for tasks in owned.values() for t in tasks], records, pool)
            todo = [t for tasks in owned.values() for t in tasks if t.stem not in records]
            written = _run(settings, todo, records, pool, show_progress)
        except BrokenProcessPool:
            raise Damage(f"{out}: a worker process died (killed by the system? out of memory?); {resume}") from None
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        skipped = _scanned_rows(source, owned, settings)
        errors, kept, notes = _finish(out, owned, records, existing, params, source, skipped, settings.max_errors)
        outdir.remove_leftovers(out)
        tasks = [t for ts in owned.values() for t in ts]
        summary = Summary(
            out=out, written=written, reused=len(tasks) - len(todo),
            shards=sum(1 for t in tasks if records[t.stem].shard), errors=errors,
            samples=sum(records[t.stem].shard.samples for t in tasks if records[t.stem].shard),
            seconds=time.perf_counter() - t0, kept=kept, notes=notes,
        )
    if settings.max_errors is not None and errors > settings.max_errors:
        raise TooManyErrors(summary, settings.max_errors)
    return summary


def _scanned_rows(source: Source, owned, settings: Settings) -> List[dict]:
    """The entries of the owned splits' folders that the scan did not use (errors.jsonl rows
    without a position); with --part i/N only part 0 lists them, so that a merge lists each once."""
    if settings.part is not None and settings.part.index != 0:
        return []
    return [row for split in owned for row in source.skipped.get(split, [])]


def _pool(settings: Settings):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return ProcessPoolExecutor(settings.workers, ctx, initializer=worker.init_pool_worker,
                               initargs=(os.getpid(), *_worker_args(settings)))


def _worker_args(settings: Settings):
    return (os.path.abspath(settings.src), settings.size, settings.quality, settings.resize_filter, settings.strict)


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
    current, samples, errors, listed, sums = None, [], [], [], None
    for task, result in _results(settings, todo, pool):
        if task is not current:
            current, samples, errors, listed = task, [], [], []
            sums = StatSums(settings.size) if task.split == TRAIN else None
        samples += result.samples
        errors += result.errors
        listed += result.kept + result.notes  # files used, listed in errors.jsonl all the same
        if result.sums is not None:
            sums.merge(result.sums)
        done += len(result.samples) + len(result.errors)
        n_errors += len(result.errors)
        written += len(result.samples)
        if done_with(task, samples, errors):
            records[task.stem] = _write_shard(settings.out, task, samples, errors + listed, sums)
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
    rec.sums = None  # 1.5 MB per shard: read back one at a time by _train_sums, not held in memory
    return rec


def _finish(out: str, owned, records, existing: Optional[Manifest], params: dict, source: Source,
            skipped: List[dict], max_errors: Optional[int] = None) -> Tuple[int, int, int]:
    """Finish OUT (shards.finish) with this run's shards, its rows of errors.jsonl (the records'
    and `skipped`, the scan's) and the splits it keeps from an earlier run. Returns this run's
    (files not used, files kept despite warnings, files noted). More files not used than
    `max_errors`: only errors.jsonl is written (the caller raises TooManyErrors), no manifest.

    A split of which this run owns shards but every image failed gets errors.jsonl and no
    manifest (NothingUsable): a shard directory with 0 images must not look complete."""
    splits = {name: split.shards for name, split in existing.splits.items()} if existing else {}
    errors = [e for e in read_errors(out) if e["split"] not in owned]
    rows = list(skipped)
    for split, tasks in owned.items():
        recs = [records[t.stem] for t in tasks]
        splits.pop(split, None)
        if tasks:  # an empty list: every image failed
            splits[split] = [r.shard for r in recs if r.shard]
        for r in recs:
            rows += r.errors
    errors += rows
    counts = sum(not used(r) for r in rows), sum(map(kept, rows)), sum(map(note, rows))
    if max_errors is not None and counts[0] > max_errors:
        write_errors(out, errors)
        return counts
    if TRAIN in owned:  # statistics from this run's training shards
        sums, stats = _train_sums(out, [t.stem for t in owned[TRAIN]]), None
    else:  # those of an earlier run's, if any
        sums, stats = None, existing.stats if existing else None
    classes = [ClassInfo(i, w, source.names.get(w, w)) for i, w in enumerate(source.wnids)]
    finish_shard_dir(out, classes=classes, params=params, splits=splits, errors=errors, sums=sums, stats=stats,
                     image_size=params["size"])
    return counts


def _train_sums(out: str, stems: List[str]) -> Optional[StatSums]:
    """Sum the training shards' records (streamed: memory stays flat on 1,282 shards)."""
    total = None
    for stem in stems:
        sums = outdir.load_record(out, stem).sums
        if sums is not None:
            total = sums if total is None else total.merge(sums)
    return total
