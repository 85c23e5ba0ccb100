"""`alexnet train`, `eval`, `profile` and `figures`: parse options, call the library, print.

Heavy imports (torch, DALI) live inside the commands, so `alexnet --help` stays fast."""
import contextlib
import json
import math
import os
from dataclasses import MISSING, fields

import click

from shards.errors import UserError
from train.config import COLUMNS, COMPILE_MODES, CONVS, HANDOFFS, INITS, INPUT_NORMS, POOLS, SCHEDULES, TrainConfig
from shards.format import TRAIN, VAL
from train.launch import DEVICE_CHOICES

# TrainConfig is the only source of defaults: every option of a TrainConfig field takes it from here
DEFAULT = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
# the train command's parameters that are not named as their TrainConfig field
PARAM_OF_FIELD = {"compile": "compile_", "num_threads": "threads"}


def _devices(ctx, param, value):
    from train.launch import parse_devices

    try:
        return parse_devices(value)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("--devices: ")) from None


def _epochs_list(ctx, param, value):
    try:
        steps = tuple(int(v) for v in value.split(",")) if isinstance(value, str) else tuple(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give epochs separated by commas, e.g. 30,60,80") from None
    if any(b <= a for a, b in zip(steps, steps[1:])) or any(v < 1 for v in steps):
        raise click.BadParameter(f"{value!r}: epochs must be positive and increasing")
    return steps


def _placement(device):
    """(column devices or None, input device) for a single-process command, as one-line errors."""
    from train.launch import resolve_devices

    try:
        return resolve_devices(device)
    except ValueError as e:
        raise UserError(str(e)) from None


def _library_errors(call, *args, **kwargs):
    """A library call whose bad-input errors (a missing DALI, bad sizes, a checkpoint that does not
    fit, a run directory in use or not writable) are one line and exit 2."""
    try:
        return call(*args, **kwargs)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    except OSError as e:  # FileNotFoundError, PermissionError, shards.files.Busy, ...
        raise UserError(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None


def _saved_settings(last, settings):
    """The run's own values of the settings not given on this command line."""
    from click.core import ParameterSource

    from train.checkpoint import load_checkpoint

    was = _library_errors(load_checkpoint, last, mmap=True).get("train_config", {})
    ctx = click.get_current_context()
    return {k: (tuple(was[k]) if isinstance(was[k], list) else was[k]) for k in settings
            if k in was and ctx.get_parameter_source(PARAM_OF_FIELD.get(k, k)) == ParameterSource.DEFAULT}


def _probe(folder) -> str:
    """"" when a file can be created in `folder`, else why not. The file is created and removed:
    os.access says yes to root even on /proc or a read-only mount."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".alexnet-probe-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.remove(probe)
    return ""


def _output_dir(path, option):
    """One line before any work when `option`'s folder cannot be created or written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: exists and is not a folder; choose another {option}")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    why = _probe(parent) if os.path.isdir(parent) else "not a folder"
    if why:
        raise UserError(f"{option} {path}: cannot be written ({parent}: {why}); choose another {option}")


def _output_file(path, option, suffix=None):
    """The path a file for `option` will be written to (with `suffix` for a name without one:
    matplotlib adds ".png"), after one line before any work when it cannot be written there."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        example = os.path.join(path, "out" + (suffix or ""))
        raise UserError(f"{option} {path}: is a folder; give a file name, e.g. {example}")
    why = _probe(parent) if os.path.isdir(parent) else "no such folder"
    if why:
        raise UserError(f"{option} {path}: cannot be written ({parent}: {why}); choose another {option}")
    return path if os.path.splitext(path)[1] or not suffix else path + suffix


def _check_shards(shards, split=None):
    """The manifest of SHARDS, holding `split`; else shards.ManifestError, one line: exit 2 for
    no directory or no manifest, exit 1 (DamagedManifest) for a damaged one."""
    from shards import Manifest

    m = Manifest.load(shards)
    if split:
        m.split(split)
    return m


def _opt(*decls, field, **kwargs):
    """A click option of TrainConfig.<field>, with the field's default (a tuple as "a,b,c")."""
    default = DEFAULT[field]
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return click.option(*decls, default=default, show_default=default is not None, **kwargs)


def _size(value):
    """--cache-limit SIZE, checked (pipeline.cache.parse_size)."""
    from pipeline.cache import parse_size

    try:
        parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e).removeprefix("cache_limit=")) from None
    return value


def _cache_options(command):
    """--cache-dir and --cache-limit (s3:// shards: pipeline.cache), for every command that reads shards."""
    command = _opt("--cache-limit", field="cache_limit", metavar="SIZE", callback=lambda ctx, p, v: _size(v),
                   help="s3:// SHARDS: most bytes the shard cache may hold, e.g. 40G (default: no limit; at least "
                        "one epoch's slice and the next one's per rank of this node).")(command)
    return _opt("--cache-dir", field="cache_dir", type=click.Path(file_okay=False),
                help="s3:// SHARDS: where whole shards are downloaded and verified before they are read (default: "
                     "$XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet; one folder per bucket and prefix).")(command)


class FiniteRange(click.FloatRange):
    """click's FloatRange that also refuses nan and infinities (nan passes every comparison of
    click's own range check): an option value, one line naming the option and its range."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number in the range {self._describe_range()}", param, ctx)
        return rv


POSITIVE = FiniteRange(min=0, min_open=True)
# Ranges of the float settings: wide enough for any experiment, narrow enough that no value
# overflows the arithmetic (lr 1e300) or asks for an absurd net (width 1000; a width inside
# the range that cannot fit the device is refused by train.capacity before allocating)
LR = FiniteRange(0, 10, min_open=True)
WIDTH = FiniteRange(0, 16, min_open=True)
MOMENTUM = FiniteRange(0, 1, max_open=True)
WEIGHT_DECAY = FiniteRange(0, 1)
LIGHTING = FiniteRange(0, 10)


@click.command()
@click.argument("shards", type=click.Path(file_okay=False))
@_opt("--out", field="out", help="Run directory.")
@_opt("--epochs", field="epochs", type=click.IntRange(1), help="Section 5: ~90 epochs.")
@_opt("--max-steps", field="max_steps", type=click.IntRange(1), help="Stop after this many steps in all (across resumes).")
@_opt("--batch-size", field="batch_size", type=click.IntRange(1), help="Per model replica (Section 5: 128).")
@_opt("--lr", field="lr", type=LR, help="Initial learning rate (Section 5).")
@_opt("--momentum", field="momentum", type=MOMENTUM, help="Section 5.")
@_opt("--weight-decay", field="weight_decay", type=WEIGHT_DECAY, help="Section 5 (weights only, not biases).")
@_opt("--schedule", field="schedule", type=click.Choice(SCHEDULES),
      help="'plateau': lr/10 when the validation error stops improving (Section 5); 'step': at --lr-steps.")
@_opt("--lr-drops", field="lr_drops", type=click.IntRange(0), help="Plateau: at most this many drops (Section 5: 3).")
@_opt("--patience", field="patience", type=click.IntRange(1), help="Plateau: validations without a new best before a drop.")
@_opt("--lr-steps", field="lr_steps", type=str, callback=_epochs_list,
      help="Step schedule: epochs at which lr /= 10, e.g. 30,60,80.")
@_opt("--device", field="device", type=click.Choice(DEVICE_CHOICES))
@click.option("--devices", default=None, callback=_devices,
              help="Column placement, e.g. cuda:0,cuda:1 (one column per GPU).")
@_opt("--width", field="width", type=WIDTH, help="Channel multiplier; 1.0 is the paper's net.")
@_opt("--init", field="init", type=click.Choice(INITS),
      help="'caffe': Section 5 with biases 0.1 (learns at full size); 'paper': Section 5 literally "
           "(biases 1; more dead fc7 units, docs/PERFORMANCE.md); 'kaiming': the small-run recipe.")
@_opt("--input-norm", field="input_norm", type=click.Choice(INPUT_NORMS),
      help="Model input: 'image' (0-255 minus the mean image, the paper's) or 'channel' "
           "((x/255-mean)/std). Default: 'channel' for --init kaiming, else 'image'.")
@_opt("--columns", field="columns", type=click.IntRange(min(COLUMNS), max(COLUMNS)),
      help="2: Figure 2's two-column net; 1: Section 3.2's one-GPU net (its ablation).")
@_opt("--lrn/--no-lrn", field="lrn", help="Section 3.3's local response normalisation (--no-lrn: its ablation).")
@_opt("--pool", field="pool", type=click.Choice(POOLS),
      help="Section 3.4: 'overlapping' (z=3, s=2) or 'traditional' (z=s=2, its ablation).")
@_opt("--amp/--no-amp", field="amp", help="bf16 autocast on CUDA.")
@_opt("--channels-last/--no-channels-last", field="channels_last", help="channels-last tensors on CUDA.")
@_opt("--compile/--no-compile", "compile_", field="compile", help="torch.compile the model.")
@_opt("--compile-mode", field="compile_mode", type=click.Choice(COMPILE_MODES),
      help="With --compile: torch.compile's mode ('reduce-overhead' replays CUDA graphs).")
@_opt("--conv", field="conv", type=click.Choice(CONVS),
      help="'grouped': each layer of both columns as one grouped op when they share a GPU (same maths).")
@_opt("--handoff", field="handoff", type=click.Choice(HANDOFFS),
      help="What DALI hands to torch: 'float' (normalised in DALI) or 'uint8' (crops, normalised on the "
           "device by one fused op); the same numbers to float rounding.")
@_opt("--cpu-decode", field="cpu_decode", type=FiniteRange(0, 1),
      help="Share of each batch decoded by libjpeg-turbo on the CPU cores instead of nvJPEG (GPU runs).")
@_opt("--step-stream/--no-step-stream", field="step_stream",
      help="Run the training step on a high-priority CUDA stream, ahead of the loader's kernels.")
@_opt("--seed", field="seed", type=int)
@_opt("--lighting", field="lighting", type=LIGHTING, help="PCA lighting sigma (Section 4.1).")
@_opt("--val-every", field="val_every", type=click.IntRange(1), help="Epochs between validations.")
@_opt("--log-every", field="log_every", type=click.IntRange(1), help="Steps between metrics rows.")
@_opt("--checkpoint-every", field="checkpoint_every", type=click.IntRange(0),
      help="Steps between extra checkpoints (0: at epoch ends only).")
@_opt("--keep-checkpoints", field="keep_checkpoints", type=click.IntRange(0),
      help="Newest OUT/checkpoint-<step>.pt files kept besides last.pt and best.pt (455 MB each at full "
           "size; 0: keep every one).")
@_opt("--threads", field="num_threads", type=click.IntRange(1),
      help="DALI worker threads (default: this process's share of the CPU cores).")
@_cache_options
@_opt("--verify-shards/--no-verify-shards", field="verify_shards",
      help="Check every shard's sha256 against the manifest before training (one core hashes 1-1.4 GB/s; "
           "in parallel; remembered in OUT/shard-hashes.json, so a resume does not hash again).")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--apply-changes", is_flag=True,
              help="With --resume: apply the settings given that differ from the run's (else refused); "
                   "recorded in OUT/resumes.jsonl.")
def train(shards, out, resume, apply_changes, compile_, threads, **settings):
    """Train the two-column AlexNet on SHARDS (Sections 3-5 of the paper).

    Writes OUT/config.json, OUT/metrics.jsonl, OUT/checkpoint-<step>.pt, OUT/last.pt and
    OUT/best.pt. Many machines: start it with torchrun, one process per model replica (GPUs 2r
    and 2r+1).

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
    _check_shards(shards, TRAIN)
    _output_dir(out, "--out")
    last = os.path.join(out, "last.pt")
    if resume and not os.path.exists(last):
        raise UserError(f"--resume: {last} does not exist (start without --resume)")
    if not resume and os.path.exists(last):
        raise UserError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
    settings.update(compile=compile_, num_threads=threads)
    if resume:  # options left out continue as the run was trained; those given are checked by the trainer
        settings.update(_saved_settings(last, settings))
    cfg = TrainConfig(shards=shards, out=out, resume=resume, apply_changes=apply_changes, **settings)
    with _no_empty_run(out):  # a run refused or failed before it wrote anything leaves no folder
        trainer = _run_trainer(cfg)
    if trainer.main:
        click.echo(f"train: done at step {trainer.step} (epoch {trainer.epoch}); last checkpoint {out}/last.pt")


# what a fresh run writes before it has trained anything (RUN/.lock goes when the trainer closes)
_NOTHING_YET = {"config.json", "metrics.jsonl", "shard-hashes.json"}


@contextlib.contextmanager
def _no_empty_run(out):
    """Remove `out` when the block fails and `out` did not exist before and holds only what a
    run writes at its start (config.json, an empty metrics.jsonl, the shards' hashes): a refused
    or failed `train` writes nothing. A run that logged a step or wrote a checkpoint is kept."""
    fresh = not os.path.exists(out)
    try:
        yield
    except BaseException:
        if fresh and os.path.isdir(out):
            names = set(os.listdir(out))
            metrics = os.path.join(out, "metrics.jsonl")
            if names <= _NOTHING_YET and not (os.path.exists(metrics) and os.path.getsize(metrics)):
                for name in names:
                    os.remove(os.path.join(out, name))
                os.rmdir(out)
        raise


def _run_trainer(cfg):
    """Build the Trainer (bad settings, shards or devices: one line, exit 2), say what it
    trains, fit (a NaN loss or a refused checkpoint: one line, exit 1), close; the Trainer."""
    from train.checkpoint import CheckpointNotWritten
    from train.trainer import Trainer, TrainingDiverged

    trainer = _library_errors(Trainer, cfg)  # settings, shards, a missing DALI
    if trainer.main:
        from train.model import count_parameters

        where = ", ".join(trainer.devices) if trainer.devices else "cpu"
        net = "" if (cfg.columns, cfg.lrn, cfg.pool) == (2, True, "overlapping") else \
            f" ({cfg.columns} column(s), {'LRN' if cfg.lrn else 'no LRN'}, {cfg.pool} pooling)"
        click.echo(f"train: AlexNet{net} of {count_parameters(trainer.model):,} parameters, width {cfg.width}, "
                   f"init {cfg.init}, input {cfg.input_norm}, batch {cfg.batch_size} x {trainer.world} replica(s) "
                   f"on {where}; {len(trainer.train_loader)} batches/epoch; run dir {cfg.out}", err=True)
    if cfg.compile and not trainer.cuda and trainer.main:  # tests/test_compile.py: an xfail until torch fixes it
        click.echo("train: warning: torch 2.13's CPU compiler gave wrong conv gradients for this net at some batch "
                   "sizes (tests/test_compile.py); leave out --compile on the CPU", err=True)
    try:
        trainer.fit()
    except (TrainingDiverged, CheckpointNotWritten) as e:  # exit 1: what ran is kept
        raise click.ClickException(str(e)) from None
    finally:
        trainer.close()
    return trainer


@click.command("eval")
@click.argument("shards", type=click.Path(file_okay=False))
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--ten-crop", is_flag=True, help="Average the softmax over ten patches (Section 4.1).")
@_opt("--device", field="device", type=click.Choice(DEVICE_CHOICES))
@_opt("--batch-size", field="batch_size", type=click.IntRange(1))
@_cache_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
def evaluate(shards, checkpoints, ten_crop, device, batch_size, cache_dir, cache_limit, as_json):
    """Top-1 and top-5 error of CHECKPOINTS on the validation split of SHARDS.

    Several checkpoints are an ensemble: their softmax outputs are averaged (Section 6, Table
    2), over the ten views first with --ten-crop. A single checkpoint in a run directory also
    gets its result appended to RUN/evaluations.jsonl (read by `alexnet report`).

    \b
    Examples:
      alexnet eval /data/shards runs/paper/best.pt
      alexnet eval /data/shards runs/paper/last.pt --ten-crop --json
      alexnet eval /data/shards runs/seed*/best.pt --ten-crop     # an ensemble
    """
    from train.evaluate import evaluate_checkpoints, record_evaluation

    _check_shards(shards, VAL)
    devices, _ = _placement(device)
    r = _library_errors(evaluate_checkpoints, shards, checkpoints, ten_crop=ten_crop, devices=devices,
                        batch_size=batch_size, cache_dir=cache_dir, cache_limit=cache_limit)
    if len(checkpoints) == 1:
        record_evaluation(checkpoints[0], shards, r)
    if as_json:
        click.echo(json.dumps(r))
    else:
        mode = "ten-crop" if ten_crop else "centre crop"
        what = f"step {r['step']}" if len(checkpoints) == 1 else f"ensemble of {len(checkpoints)}"
        click.echo(f"eval ({mode}, {r['samples']} images, {what}): top-1 error {100 * r['top1_error']:.2f}%, "
                   f"top-5 error {100 * r['top5_error']:.2f}%")


@click.command()
@click.argument("shards", type=click.Path(file_okay=False))
@_opt("--device", field="device", type=click.Choice(DEVICE_CHOICES))
@_opt("--width", field="width", type=POSITIVE)
@_opt("--init", field="init", type=click.Choice(INITS),
      help="The model's init, which sets its input normalisation (as in `alexnet train`).")
@_opt("--batch-size", field="batch_size", type=click.IntRange(1))
@_opt("--compile/--no-compile", "compile_", field="compile", help="torch.compile the model (as `alexnet train --compile`).")
@_opt("--compile-mode", field="compile_mode", type=click.Choice(COMPILE_MODES),
      help="With --compile: torch.compile's mode ('reduce-overhead' replays CUDA graphs).")
@_opt("--conv", field="conv", type=click.Choice(CONVS), help="As `alexnet train --conv`.")
@_opt("--handoff", field="handoff", type=click.Choice(HANDOFFS), help="As `alexnet train --handoff`.")
@_opt("--cpu-decode", field="cpu_decode", type=FiniteRange(0, 1), help="As `alexnet train --cpu-decode`.")
@_opt("--step-stream/--no-step-stream", field="step_stream", help="As `alexnet train --step-stream`.")
@_cache_options
@click.option("--batches", type=click.IntRange(1), default=20, show_default=True, help="Timed batches per measurement.")
@click.option("--epochs", type=click.IntRange(2), default=None,
              help="Time the loader feeding the model over this many whole epochs (each apart, and the data "
                   "wait of the second and later), instead of --batches batches.")
@click.option("--warmup", type=click.IntRange(1), default=3, show_default=True, help="Batches excluded before timing.")
@click.option("--peer-workers", type=click.IntRange(1), default=None, help="Reference loader workers (default: cores, at most 16).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line of stdout.")
@click.option("--stages", is_flag=True,
              help="Also time the training graph cut after each stage: read, decode, crop, mean_image, lighting, torch.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="PNG of img/s per batch for each measurement (with --stages: of each stage's img/s and share).")
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="Chrome trace (JSON) of a few fed steps, CUDA kernels included, and a summary of the GPU time "
                   "of the model's kernels, the loader's, and their overlap.")
def profile(shards, device, width, init, batch_size, compile_, compile_mode, conv, handoff, cpu_decode, step_stream,
            cache_dir, cache_limit, batches, epochs, warmup, peer_workers, as_json, stages, plot, trace):
    """Measure input throughput against model throughput on SHARDS, and against a stock loader.

    The model runs the training step of `alexnet train` with its defaults (Section 5's SGD).

    \b
    Examples:
      alexnet profile /data/shards --device cuda --batch-size 256 --plot profile.png
      alexnet profile shards --device cpu --width 0.25 --init kaiming --batch-size 32 --batches 10 --json
      alexnet profile /data/shards --device cuda --batch-size 256 --stages --plot stages.png
      alexnet profile /data/shards --device cuda --batch-size 256 --compile --epochs 3
    """
    from train.profile import format_table, plot_profile, plot_stages, run_profile

    _check_shards(shards, TRAIN)
    if plot:
        plot = _output_file(plot, "--plot", suffix=".png")
    if trace:
        trace = _output_file(trace, "--trace")
    devices, _ = _placement(device)
    say = (lambda m: click.echo(m, err=True))
    cfg = TrainConfig(shards=shards, width=width, init=init, batch_size=batch_size, device=device, compile=compile_,
                      compile_mode=compile_mode, conv=conv, handoff=handoff, cpu_decode=cpu_decode,
                      step_stream=step_stream, cache_dir=cache_dir, cache_limit=cache_limit)
    # the loader is built first: a bad size or a missing DALI is one line before any timing
    r = _library_errors(run_profile, cfg, devices=devices, batches=batches, warmup=warmup, peer_workers=peer_workers,
                        progress=say, stages=stages, epochs=epochs, trace=trace)
    if plot:
        (plot_stages if stages else plot_profile)(r, plot)
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
@_opt("--device", field="device", type=click.Choice(DEVICE_CHOICES))
@_cache_options
def figures(shards, checkpoint, out, device, cache_dir, cache_limit):
    """The paper's qualitative figures (Section 6.1) for CHECKPOINT, as PNG files in OUT.

    kernels.png (Figure 3: conv1 kernels, one block per column), predictions.png (Figure 4 left:
    top-5 labels with probabilities), neighbours.png (Figure 4 right: nearest training images in
    the last hidden layer), curves.png (loss and validation error from metrics.jsonl).

    \b
    Example:
      alexnet figures /data/shards runs/paper/best.pt --out runs/paper/figures
    """
    from train.checkpoint import check_classes, load_checkpoint
    from train.figures import make_figures

    m = _check_shards(shards, VAL)
    _output_dir(out, "--out")
    devices, _ = _placement(device)
    state = _library_errors(load_checkpoint, checkpoint, mmap=True)
    _library_errors(check_classes, checkpoint, state, shards, m)  # before any PNG is written
    os.makedirs(out, exist_ok=True)
    paths = make_figures(shards, checkpoint, out, devices=devices, cache_dir=cache_dir, cache_limit=cache_limit)
    for note in paths.pop("notes", []):
        click.echo(f"figures: note: {note}", err=True)
    for name, path in paths.items():
        if str(path).endswith(".png"):
            click.echo(f"figures: {name}: {path}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw the runs' loss and validation error curves to this PNG.")
def report(runs, as_json, plot):
    """RUNS side by side: the settings that differ, best validation error (centre crop and, from
    `alexnet eval --ten-crop`, ten-crop), epochs, wall time and img/s, with the paper's one-CNN
    row of Table 2 beside them; a Markdown table on stdout and, with --plot, a PNG of the curves.

    \b
    Example:
      alexnet report runs/paper runs/no-lrn runs/one-column runs/traditional-pool --plot ablations.png
    """
    from train.report import format_markdown, plot_report, report as make_report, to_json

    plot = _output_file(plot, "--plot", suffix=".png") if plot else None
    rep = _library_errors(make_report, runs)
    if plot:
        plot_report(rep, plot)
        click.echo(f"report: curves written to {plot}", err=True)
    click.echo(json.dumps(to_json(rep)) if as_json else format_markdown(rep))
