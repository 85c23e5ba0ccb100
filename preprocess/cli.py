"""`alexnet preprocess` and `alexnet merge`.

Nothing heavy at module level: numpy, Pillow and simplejpeg are imported inside the commands,
and nothing here ever imports torch or DALI.
"""
import os

import click

from shards.format import SPLITS


def _single_threaded_blas():
    """This job's parallelism is processes; BLAS threads (numpy's OpenBLAS starts one per core
    at import) only cost start-up time. Only before numpy is imported (the `alexnet preprocess`
    process itself): called from the demo, where torch is already loaded, it could no longer
    help and would only rewrite the user's OMP_NUM_THREADS for the rest of the process and its
    children (torch's own thread count, set at import, stays as it was: 2 here either way)."""
    import sys

    if "numpy" in sys.modules or "torch" in sys.modules:
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _part(ctx, param, value):
    if value is None:
        return None
    from preprocess.plan import Part

    try:
        return Part.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.argument("src", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--workers", type=click.IntRange(1), default=None, help="Worker processes (default: all cores).")
@click.option("--shard-size", type=click.IntRange(1), default=1000, show_default=True,
              help="Images per shard (1000: ~25 MB tars, 1,282 training shards for ImageNet).")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality of the written 256x256 images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffled training order.")
@click.option("--split", type=click.Choice([*SPLITS, "all"]), default="all", show_default=True,
              help="Which split(s) to write; a later run may add a split to the same OUT.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Only the first N files of each split (training: of the shuffled order).")
@click.option("--max-errors", type=click.IntRange(0), default=None,
              help="Exit 1 when more files than this fail, with errors.jsonl and the finished shards but no manifest "
                   "(default: no limit; failures are always reported).")
@click.option("--part", callback=_part, default=None, metavar="i/N|auto",
              help="Write only the shards n with n % N == i (for N machines; combine with `alexnet merge`). "
                   "'auto': i and N of this task of a Slurm job array (sbatch --array=0-N-1).")
@click.option("--filter", "resize_filter", type=click.Choice(["bilinear", "bicubic"]), default="bilinear",
              show_default=True, help="Antialiased resampling filter (bicubic: ~10% slower, a little sharper).")
@click.option("--strict", is_flag=True,
              help="Skip every JPEG libjpeg warns about (default: keep those whose only warning is extraneous "
                   "bytes, listed in OUT/errors.jsonl).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def preprocess(src, out, workers, shard_size, quality, seed, split, limit, max_errors, part, resize_filter, strict,
               quiet):
    """Turn the ImageNet folder SRC into WebDataset shards in OUT.

    Each image is decoded by content (JPEG, CMYK, grayscale, PNG named .JPEG, palette, RGBA,
    16-bit), rescaled so its shorter side is 256 (antialiased filter) and centre-cropped to
    256x256, then stored as a baseline JPEG with its class (`KEY.jpg`, `KEY.cls`, `KEY.json`).
    Training samples are written in one seeded, shuffled order; validation in sorted order. The
    RGB statistics (mean, std, eigenvalues/vectors, mean image) of the training pixels are
    computed in the same pass.

    SRC: SRC/train/<wnid>/*, and SRC/val/<wnid>/* or flat SRC/val/* with
    SRC/LOC_val_solution.csv; SRC/LOC_synset_mapping.txt names the classes.

    Files that cannot be decoded (truncated, empty, not an image, a JPEG libjpeg finds corrupt)
    are skipped and listed in OUT/errors.jsonl, as is every entry of the class folders that is
    not used (other extensions, subfolders, broken links, names that are not UTF-8). A JPEG
    whose only warning is extraneous bytes is kept and listed ("kept": true); --strict skips it.
    Run the same command again after an interruption: finished shards are
    kept, the rest is redone, and the result is byte-identical to an uninterrupted run, for any
    --workers. OUT/.parts/ holds what a resume needs (per-shard integer sums and errors, ~0.8 MB
    per training shard); it may be deleted once the job is done.

    \b
    Example:
      alexnet preprocess /data/ILSVRC2012 /data/shards --workers 32
      alexnet preprocess /data/ILSVRC2012 /data/shards --split val     # add val later
      alexnet preprocess /data/ILSVRC2012 /scratch/p0 --part 0/4       # machine 0 of 4
      alexnet preprocess /data/ILSVRC2012 /scratch/p$SLURM_ARRAY_TASK_ID --part auto   # in sbatch --array
    """
    _single_threaded_blas()
    from preprocess.plan import Settings
    from preprocess.run import TooManyErrors, preprocess as run

    settings = Settings(src=src, out=out, shard_size=shard_size, quality=quality, seed=seed, split=split,
                        limit=limit, max_errors=max_errors, part=part, resize_filter=resize_filter, strict=strict)
    if workers:
        settings.workers = workers
    # bad input (ScanError, OutError: exit 2) and damage (NothingUsable, TooManyErrors: exit 1) are
    # shards.errors exceptions, which click shows as one line
    try:
        summary = run(settings, show_progress=not quiet)
    except TooManyErrors as e:  # OUT is finished: its summary, then the error
        click.echo(e.summary.line())
        raise
    click.echo(summary.line())


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The merged shard folder (new or empty).")
@click.option("--mode", type=click.Choice(["link", "copy", "move"]), default="link", show_default=True,
              help="How shard files get into OUT: hard links (copies across file systems), copies, or moves.")
def merge(parts, out, mode):
    """Combine the outputs of `alexnet preprocess --part i/N` into one shard folder.

    PARTS are the N folders written with --part 0/N ... N-1/N (same settings, each once). The
    merged manifest lists every shard with its sha256 and statistics summed from the parts'
    exact integer sums, so it equals the manifest of a single run.

    \b
    Example:
      alexnet merge /scratch/p0 /scratch/p1 /scratch/p2 /scratch/p3 --out /data/shards
      alexnet verify /data/shards
    """
    _single_threaded_blas()
    from preprocess.combine import merge as run_merge

    click.echo(run_merge(list(parts), out, mode).line())  # MergeError: one line, exit 2
