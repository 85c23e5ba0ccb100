"""`alexnet train`, `alexnet eval` and `alexnet figures`. Heavy imports live inside the commands."""
import json
import os

import click

from shards.errors import UserError
from train.config import INITS, INPUT_NORMS, input_norm_for


def _devices(value):
    if not value:
        return None
    devs = tuple(d.strip() for d in value.split(",") if d.strip())
    if len(devs) not in (1, 2):
        raise click.BadParameter("give one or two devices, e.g. cuda:0,cuda:1", param_hint="--devices")
    return devs


def _resolve_device(device):
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible (use --device cpu)")
    return device


def _loader(*args, **kwargs):
    """build_loader with its user-facing errors (bad sizes, a missing DALI) as one line, exit 2."""
    from pipeline import build_loader

    try:
        return build_loader(*args, **kwargs)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None


# the train command's parameters that are not named as their TrainConfig field
_PARAM_OF_FIELD = {"compile": "compile_", "num_threads": "threads"}


def _saved_settings(last, settings):
    """The run's own values of the settings not given on this command line."""
    from click.core import ParameterSource

    from train.checkpoint import load_checkpoint

    try:
        was = load_checkpoint(last, mmap=True).get("train_config", {})
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    ctx = click.get_current_context()
    return {k: (tuple(was[k]) if isinstance(was[k], list) else was[k]) for k in settings
            if k in was and ctx.get_parameter_source(_PARAM_OF_FIELD.get(k, k)) == ParameterSource.DEFAULT}


def _check_classes(checkpoint, state, shards, manifest):
    """One line when CHECKPOINT was trained on other classes than SHARDS holds: their count, or
    the first wnid that differs."""
    wnids = [c.wnid for c in manifest.classes]
    trained = state.get("classes", wnids)
    n = state["model_config"]["num_classes"]
    if n != manifest.num_classes:
        raise UserError(f"{checkpoint} was trained on {n} classes, {shards} has "
                        f"{manifest.num_classes}")
    if trained != wnids:
        i = next(i for i, (a, b) in enumerate(zip(trained, wnids)) if a != b)
        raise UserError(f"{checkpoint} was trained on other classes than {shards}: class {i} is {trained[i]} "
                        f"there and {wnids[i]} here")


def _check_shards(shards, split=None):
    from shards import Manifest, ManifestError

    try:
        m = Manifest.load(shards)
        if split:
            m.split(split)
        return m
    except ManifestError as e:
        raise UserError(str(e)) from None


@click.command()
@click.argument("shards", type=click.Path(file_okay=False))
@click.option("--out", default="runs/alexnet", show_default=True, help="Run directory.")
@click.option("--epochs", type=click.IntRange(1), default=90, show_default=True, help="Section 5: ~90 epochs.")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many steps in all (across resumes).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Per model replica.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--devices", default=None, help="Column placement, e.g. cuda:0,cuda:1 (one column per GPU).")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Channel multiplier; 1.0 is the paper's net.")
@click.option("--init", type=click.Choice(INITS), default="caffe", show_default=True,
              help="'caffe': Section 5 with biases 0.1 (learns at full size); 'paper': Section 5 literally "
                   "(biases 1; more dead fc7 units, docs/PERFORMANCE.md); 'kaiming': the small-run recipe.")
@click.option("--input-norm", type=click.Choice(INPUT_NORMS), default=None,
              help="Model input: 'image' (0-255 minus the mean image, the paper's) or 'channel' "
                   "((x/255-mean)/std). Default: 'channel' for --init kaiming, else 'image'.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="bf16 autocast on CUDA.")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True, help="torch.compile the model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--schedule", type=click.Choice(["plateau", "step"]), default="plateau", show_default=True)
@click.option("--lighting", type=click.FloatRange(min=0), default=0.1, show_default=True, help="PCA lighting sigma.")
@click.option("--val-every", type=click.IntRange(1), default=1, show_default=True, help="Epochs between validations.")
@click.option("--log-every", type=click.IntRange(1), default=20, show_default=True, help="Steps between metrics rows.")
@click.option("--checkpoint-every", type=click.IntRange(0), default=0, show_default=True,
              help="Steps between extra checkpoints (0: at epoch ends only).")
@click.option("--threads", type=click.IntRange(1), default=None, help="DALI worker threads.")
@click.option("--apply-changes", is_flag=True,
              help="With --resume: apply the settings given that differ from the run's (else refused); "
                   "recorded in OUT/resumes.jsonl.")
def train(shards, out, epochs, max_steps, batch_size, lr, device, devices, width, init, input_norm, amp, compile_, seed,
          resume, schedule, lighting, val_every, log_every, checkpoint_every, threads, apply_changes):
    """Train the two-column AlexNet on SHARDS (Sections 3-5 of the paper).

    Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoint-<step>.pt and OUT/last.pt.
    Many machines: start it with torchrun, one process per model replica (GPUs 2r and 2r+1).

    Two recipes. Full size: the defaults (Section 5's SGD, batch 128, lr 0.01, --init caffe).
    Small runs (reduced width, a CPU): --width 0.25 --init kaiming --batch-size 32, with lr,
    schedule and lighting at their defaults; the input is then unit-scale ('channel').

    \b
    Examples:
      alexnet train /data/shards --out runs/paper                      # full-size recipe
      alexnet train /data/shards --out runs/paper --devices cuda:0,cuda:1
      alexnet train /data/shards --out runs/literal --init paper       # Section 5 literally
      alexnet train shards --device cpu --width 0.25 --init kaiming --batch-size 32 --epochs 8
      torchrun --nproc-per-node 4 -m alexnet_cli train /data/shards --out runs/dp
    """
    _check_shards(shards, "train")
    if resume and not os.path.exists(os.path.join(out, "last.pt")):
        raise UserError(f"--resume: {os.path.join(out, 'last.pt')} does not exist (start without --resume)")
    if not resume and os.path.exists(os.path.join(out, "last.pt")):
        raise UserError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
    from train.config import TrainConfig
    from train.trainer import Trainer, TrainingDiverged

    settings = dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device,
                    devices=_devices(devices), width=width, init=init, input_norm=input_norm, amp=amp,
                    compile=compile_, seed=seed, schedule=schedule, lighting=lighting, val_every=val_every,
                    log_every=log_every, checkpoint_every=checkpoint_every, num_threads=threads)
    if resume:  # options left out continue as the run was trained; those given are checked by the trainer
        settings.update(_saved_settings(os.path.join(out, "last.pt"), settings))
    cfg = TrainConfig(shards=shards, out=out, resume=resume, apply_changes=apply_changes, **settings)
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError, ImportError) as e:  # settings, shards, a missing DALI
        raise UserError(str(e)) from None
    if trainer.main:
        where = ", ".join(trainer.devices) if trainer.devices else "cpu"
        click.echo(f"train: width {cfg.width}, init {cfg.init}, input {cfg.input_norm}, batch {cfg.batch_size} x "
                   f"{trainer.world} replica(s) on "
                   f"{where}; {len(trainer.train_loader)} batches/epoch; run dir {out}", err=True)
    try:
        trainer.fit()
    except TrainingDiverged as e:
        raise click.ClickException(str(e)) from None
    finally:
        trainer.close()
    if trainer.main:
        click.echo(f"train: done at step {trainer.step} (epoch {trainer.epoch}); last checkpoint {out}/last.pt")


@click.command("eval")
@click.argument("shards", type=click.Path(file_okay=False))
@click.argument("checkpoint", type=click.Path())
@click.option("--ten-crop", is_flag=True, help="Average the softmax over ten patches (Section 4.1).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
def evaluate(shards, checkpoint, ten_crop, device, batch_size, as_json):
    """Top-1 and top-5 error of CHECKPOINT on the validation split of SHARDS.

    \b
    Examples:
      alexnet eval /data/shards runs/paper/last.pt
      alexnet eval /data/shards runs/paper/last.pt --ten-crop --json
    """
    from train.checkpoint import model_from_checkpoint
    from train.evaluate import evaluate as run_eval

    m = _check_shards(shards, "val")
    device = _resolve_device(device)
    try:
        model, state = model_from_checkpoint(checkpoint, devices=None if device == "cpu" else (device,))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    _check_classes(checkpoint, state, shards, m)
    loader = _loader(shards, "val", batch_size, device=device, ten_crop=ten_crop, mean=model.config["input_norm"])
    r = run_eval(model, loader, device)
    r.pop("counts", None)
    r.update(ten_crop=ten_crop, step=state.get("step"))
    if as_json:
        click.echo(json.dumps(r))
    else:
        mode = "ten-crop" if ten_crop else "centre crop"
        click.echo(f"eval ({mode}, {r['samples']} images, step {r['step']}): top-1 error {100 * r['top1_error']:.2f}%, "
                   f"top-5 error {100 * r['top5_error']:.2f}%")


@click.command()
@click.argument("shards", type=click.Path(file_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--init", type=click.Choice(INITS), default="caffe", show_default=True,
              help="The model's init, which sets its input normalisation (as in `alexnet train`).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--batches", type=click.IntRange(1), default=20, show_default=True, help="Timed batches per measurement.")
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True, help="Batches excluded before timing.")
@click.option("--peer-workers", type=click.IntRange(1), default=None, help="Reference loader workers (default: cores, at most 16).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line of stdout.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of img/s per batch for each measurement.")
def profile(shards, device, width, init, batch_size, batches, warmup, peer_workers, as_json, plot):
    """Measure input throughput against model throughput on SHARDS, and against a stock loader.

    \b
    Examples:
      alexnet profile /data/shards --device cuda --batch-size 256 --plot profile.png
      alexnet profile shards --device cpu --width 0.25 --init kaiming --batch-size 32 --batches 10 --json
    """
    from train.profile import format_table, plot_profile, run_profile

    _check_shards(shards, "train")
    device = _resolve_device(device)
    _loader(shards, "train", batch_size, device=device, mean=input_norm_for(init))  # one-line errors first
    say = (lambda m: click.echo(m, err=True))
    r = run_profile(shards, device=device, width=width, init=init, batch_size=batch_size, batches=batches, warmup=warmup,
                    peer_workers=peer_workers, progress=say)
    if plot:
        plot_profile(r, plot)
        say(f"profile: plot written to {plot}")
    if as_json:
        slim = {k: ({kk: vv for kk, vv in v.items() if kk != "per_batch_img_s"} if isinstance(v, dict) else v)
                for k, v in r.items()}
        click.echo(json.dumps(slim))
    else:
        click.echo(format_table(r))


@click.command()
@click.argument("shards", type=click.Path(file_okay=False))
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNG files.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def figures(shards, checkpoint, out, device):
    """The paper's qualitative figures (Section 6.1) for CHECKPOINT, as PNG files in OUT.

    kernels.png (Figure 3: conv1 kernels, one block per column), predictions.png (Figure 4 left:
    top-5 labels with probabilities), neighbours.png (Figure 4 right: nearest training images in
    the last hidden layer), curves.png (loss and validation error from metrics.jsonl).

    \b
    Example:
      alexnet figures /data/shards runs/paper/last.pt --out runs/paper/figures
    """
    from train.figures import make_figures

    from train.checkpoint import load_checkpoint

    m = _check_shards(shards, "val")
    device = _resolve_device(device)
    try:
        state = load_checkpoint(checkpoint, mmap=True)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    _check_classes(checkpoint, state, shards, m)  # before any PNG is written
    os.makedirs(out, exist_ok=True)
    paths = make_figures(shards, checkpoint, out, device=device)
    for note in paths.pop("notes", []):
        click.echo(f"figures: note: {note}", err=True)
    for name, path in paths.items():
        if str(path).endswith(".png"):
            click.echo(f"figures: {name}: {path}")
