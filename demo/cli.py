"""`alexnet demo`: the whole job on the built-in sample data, from nothing.

sample-data -> preprocess -> verify -> train (reduced width, Kaiming init) -> eval (centre and
ten-crop) -> figures -> profile, each step through the same command a user would type. Running it
again on the same --out reuses what is complete (preprocessing resumes, training continues).
"""
import json
import os
import time

import click

from shards.errors import UserError

# The small-run recipe of `alexnet train --help` and nothing else: quarter width, Kaiming init on
# unit-scale input, batch 32, 8 epochs; lr, schedule and lighting at the trainer's defaults
# (Section 5's). Measured in docs/PERFORMANCE.md (scripts/bench_learning.py).
DEMO = dict(classes=10, train_per_class=100, val_per_class=20, width=0.25, init="kaiming", batch_size=32, epochs=8)


def _step(title):
    click.secho(f"\n== {title}", bold=True, err=True)
    return time.perf_counter()


def _done(t0, what=""):
    click.echo(f"   ({time.perf_counter() - t0:.1f} s{'; ' + what if what else ''})", err=True)


@click.command("sample-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", type=click.IntRange(1), default=10, show_default=True, help="Number of classes.")
@click.option("--train-per-class", type=click.IntRange(0), default=100, show_default=True,
              help="Training images per class (the odd files included).")
@click.option("--val-per-class", type=click.IntRange(0), default=20, show_default=True,
              help="Validation images per class (flat val/ + LOC_val_solution.csv).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator.")
def sample_data(out, classes, train_per_class, val_per_class, seed):
    """Write a small synthetic dataset in the ImageNet ILSVRC-2012 layout to OUT.

    Each class is a shape-and-colour combination on a textured background. The training split
    holds the odd files real ImageNet has (CMYK and grayscale JPEGs, PNGs named .JPEG, a
    truncated JPEG, palette, RGBA, 16-bit), so `alexnet preprocess` meets all of them.

    \b
    Example:
      alexnet sample-data /tmp/mini --classes 4 --train-per-class 20 --val-per-class 5
      alexnet preprocess /tmp/mini /tmp/mini-shards
    """
    from preprocess.progress import Progress
    from demo.sample_data import generate

    bar = Progress(classes * (train_per_class + val_per_class), label="sample-data", show_errors=False)
    try:
        info = generate(out, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                        seed=seed, progress=lambda done, total: bar.update(done, 0))
    except FileExistsError as e:
        raise UserError(f"{e}; choose a new or empty folder") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    odd = ", ".join(info.get("odd_files", {})) or "none"
    click.echo(f"sample-data: {info['train']:,} train + {info['val']:,} val images, {classes} classes "
               f"(odd files: {odd}) -> {info['root']}")


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=DEMO["epochs"], show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="Preprocessing workers (default: all cores).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds training (initial weights, shuffle, augmentation); the sample data stay the same.")
@click.pass_context
def demo(ctx, out, device, epochs, workers, seed):
    """Run the whole job on the built-in sample data and summarise it.

    \b
    Example:
      alexnet demo --out demo-out
    """
    import torch

    from preprocess.cli import preprocess
    from shards.cli import verify
    from train.checkpoint import load_checkpoint
    from train.cli import evaluate, figures, profile, train

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    raw, shards, run = (os.path.join(out, d) for d in ("sample-data", "shards", "run"))
    fig_dir, prof_png = os.path.join(out, "figures"), os.path.join(out, "profile.png")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()

    t = _step(f"1/7 sample data: {DEMO['classes']} classes in the ILSVRC-2012 layout -> {raw}")
    if os.path.isdir(raw):
        click.echo("   already there, reused", err=True)
    else:
        ctx.invoke(sample_data, out=raw, classes=DEMO["classes"], train_per_class=DEMO["train_per_class"],
                   val_per_class=DEMO["val_per_class"], seed=0)
    _done(t)

    t = _step(f"2/7 preprocess: shorter side 256, centre crop, JPEG q90, RGB statistics -> {shards}")
    ctx.invoke(preprocess, src=raw, out=shards, workers=workers)
    _done(t)

    t = _step("3/7 verify the shards")
    try:
        ctx.invoke(verify, out=shards)
    except SystemExit as e:
        if e.code:
            raise click.ClickException("the fresh shards failed verification (see above)") from None
    _done(t)

    t = _step(f"4/7 train: the small-run recipe, AlexNet at width {DEMO['width']}, {DEMO['init']} init, "
              f"batch {DEMO['batch_size']}, seed {seed} on {device}")
    last = os.path.join(run, "last.pt")
    resume = os.path.exists(last)
    if resume:
        state = load_checkpoint(last, mmap=True)
        was = state.get("train_config", {}).get("seed")
        if was != seed:
            raise click.UsageError(f"{run} holds a demo run with seed {was}: use another --out for seed {seed}")
    if resume and state["epoch"] >= epochs:
        click.echo("   already trained, reused", err=True)
        train_s = None
    else:
        ctx.invoke(train, shards=shards, out=run, epochs=epochs, batch_size=DEMO["batch_size"], device=device,
                   width=DEMO["width"], init=DEMO["init"], seed=seed, resume=resume, log_every=5)
        train_s = time.perf_counter() - t
    _done(t)

    best = os.path.join(run, "best.pt")  # the epoch of the lowest validation error (last.pt: the newest)
    if not os.path.exists(best):  # a run directory from before best.pt was kept
        best = last
    best_state = load_checkpoint(best, mmap=True)
    t = _step(f"5/7 evaluate the best checkpoint (epoch {best_state['epoch']} of {epochs}): centre crop and "
              "ten-crop (Section 4.1)")
    results = {}
    for ten in (False, True):
        results[ten] = _capture_json(ctx, evaluate, shards=shards, checkpoint=best, ten_crop=ten, device=device,
                                     batch_size=64)
        mode = "ten-crop   " if ten else "centre crop"
        click.echo(f"   {mode}: top-1 error {100 * results[ten]['top1_error']:.1f}%, "
                   f"top-5 error {100 * results[ten]['top5_error']:.1f}%", err=True)
    _done(t)

    t = _step(f"6/7 figures (Section 6.1) -> {fig_dir}")
    ctx.invoke(figures, shards=shards, checkpoint=best, out=fig_dir, device=device)
    _done(t)

    t = _step(f"7/7 profile: input pipeline vs model vs stock loader -> {prof_png}")
    prof = _capture_json(ctx, profile, shards=shards, device=device, width=DEMO["width"], init=DEMO["init"],
                         batch_size=DEMO["batch_size"], batches=10, warmup=2, plot=prof_png)
    _done(t)

    chance = 1 - 1 / DEMO["classes"]
    click.secho("\n== summary", bold=True)
    click.echo(f"validation top-1 error (best checkpoint, epoch {best_state['epoch']}): "
               f"{100 * results[False]['top1_error']:.1f}% centre crop, "
               f"{100 * results[True]['top1_error']:.1f}% ten-crop (chance: {100 * chance:.0f}%)")
    trained = f"{train_s:.0f} s" if train_s is not None else "reused"
    click.echo(f"training: {epochs} epochs at batch {DEMO['batch_size']}, seed {seed}, {trained} on {device} "
               f"({torch.get_num_threads()} torch threads)")
    click.echo(f"throughput on {device}: pipeline {prof['pipeline']['img_s']:.0f} img/s, "
               f"model {prof['model']['img_s']:.0f} img/s, together {prof['end_to_end']['img_s']:.0f} img/s "
               f"(data wait {100 * prof['data_wait']:.0f}%), reference loader {prof['peer']['img_s']:.0f} img/s")
    click.echo(f"outputs: shards {shards} | run {run} (metrics.jsonl, best.pt, last.pt) | figures {fig_dir} | profile {prof_png}")
    click.echo(f"demo finished in {time.perf_counter() - started:.0f} s")


def _capture_json(ctx, command, **kwargs):
    """Invoke a command with --json and return what it printed as a dict."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ctx.invoke(command, as_json=True, **kwargs)
    return json.loads(buf.getvalue().strip().splitlines()[-1])
