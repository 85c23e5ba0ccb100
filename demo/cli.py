"""`alexnet sample-data` and `alexnet demo`: the composition's commands (docs/DESIGN.md, "Layers")."""
import click

from demo.run import DEMO
from shards.errors import UserError
from train.launch import DEVICE_CHOICES


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
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=DEMO["epochs"], show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None, help="Preprocessing workers (default: all cores).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds training (initial weights, shuffle, augmentation); the sample data stay the same.")
def demo(out, device, epochs, workers, seed):
    """Run the whole job on the built-in sample data and summarise it.

    sample data -> preprocess -> verify -> train (the small-run recipe) -> eval (centre and
    ten-crop) -> figures -> profile. Run again on the same --out, it reuses what is complete.

    \b
    Example:
      alexnet demo --out demo-out
    """
    import torch

    from demo.run import run_demo

    try:
        r = run_demo(out, device=device, epochs=epochs, workers=workers, seed=seed,
                     say=lambda m: click.secho(m, err=True, bold=m.startswith("\n==")))
    except ValueError as e:  # a device that is not there
        raise UserError(str(e)) from None
    paths, prof, ev = r["paths"], r["profile"], r["eval"]
    chance = 1 - 1 / DEMO["classes"]
    click.secho("\n== summary", bold=True)
    click.echo(f"validation top-1 error (best checkpoint, epoch {r['best_epoch']}): "
               f"{100 * ev[False]['top1_error']:.1f}% centre crop, "
               f"{100 * ev[True]['top1_error']:.1f}% ten-crop (chance: {100 * chance:.0f}%)")
    trained = f"{r['train_s']:.0f} s" if r["train_s"] is not None else "reused"
    click.echo(f"training: {epochs} epochs at batch {DEMO['batch_size']}, seed {seed}, {trained} on {r['device']} "
               f"({torch.get_num_threads()} torch threads)")
    click.echo(f"throughput on {r['device']}: pipeline {prof['pipeline']['img_s']:.0f} img/s, "
               f"model {prof['model']['img_s']:.0f} img/s, together {prof['end_to_end']['img_s']:.0f} img/s "
               f"(data wait {100 * prof['data_wait']:.0f}%), reference loader {prof['peer']['img_s']:.0f} img/s")
    click.echo(f"outputs: shards {paths.shards} | run {paths.run} (metrics.jsonl, best.pt, last.pt) | "
               f"figures {paths.figures} | profile {paths.profile_png}")
    click.echo(f"demo finished in {r['seconds']:.0f} s")
