"""`alexnet demo`: the whole job on the built-in sample data, from nothing, through the stages'
library functions (docs/DESIGN.md, "Layers").

sample data -> preprocess -> verify -> train (the small-run recipe) -> eval (centre and ten-crop)
-> figures -> profile. Run again on the same `out`, it reuses what is complete (the sample data,
preprocessing resumes, training continues).
"""
import os
import time
from dataclasses import dataclass

# The small-run recipe of `alexnet train --help` and nothing else: quarter width, Kaiming init on
# unit-scale input, batch 32, 8 epochs; lr, schedule and lighting at the trainer's defaults
# (Section 5's). Measured in docs/PERFORMANCE.md (scripts/bench_learning.py).
DEMO = dict(classes=10, train_per_class=100, val_per_class=20, width=0.25, init="kaiming", batch_size=32, epochs=8)


@dataclass
class Paths:
    """Where the demo writes, under one folder."""

    out: str

    def __post_init__(self):
        j = lambda *p: os.path.join(self.out, *p)  # noqa: E731
        self.raw, self.shards, self.run = j("sample-data"), j("shards"), j("run")
        self.figures, self.profile_png = j("figures"), j("profile.png")


class Steps:
    """Numbered steps with their seconds, told through `say` (a line of text)."""

    def __init__(self, say, total=7):
        self.say, self.total, self.n = say, total, 0

    def start(self, title):
        self.n += 1
        self.say(f"\n== {self.n}/{self.total} {title}")
        return time.perf_counter()

    def done(self, t0):
        self.say(f"   ({time.perf_counter() - t0:.1f} s)")


def sample_data(paths, steps, progress=None):
    from demo.sample_data import generate

    t = steps.start(f"sample data: {DEMO['classes']} classes in the ILSVRC-2012 layout -> {paths.raw}")
    if os.path.isdir(paths.raw):
        steps.say("   already there, reused")
    else:
        generate(paths.raw, classes=DEMO["classes"], train_per_class=DEMO["train_per_class"],
                 val_per_class=DEMO["val_per_class"], seed=0, progress=progress)
    steps.done(t)


def preprocess_and_verify(paths, steps, workers):
    from preprocess.plan import Settings
    from preprocess.run import preprocess
    from shards.errors import Damage
    from shards.verify import verify_shard_dir

    t = steps.start(f"preprocess: shorter side 256, centre crop, JPEG q90, RGB statistics -> {paths.shards}")
    settings = Settings(src=paths.raw, out=paths.shards)
    if workers:
        settings.workers = workers
    steps.say("   " + preprocess(settings).line())
    steps.done(t)
    t = steps.start("verify the shards")
    report = verify_shard_dir(paths.shards)
    steps.say("   " + report.line())
    if not report.ok:
        raise Damage(f"the fresh shards in {paths.shards} failed verification: {report.problems[0]}")
    steps.done(t)


def train(paths, steps, device, epochs, seed):
    """Train the recipe, or continue or reuse the run in paths.run; the training seconds or None."""
    from shards.errors import UserError
    from train.checkpoint import load_checkpoint
    from train.config import TrainConfig
    from train.trainer import Trainer

    t = steps.start(f"train: the small-run recipe, AlexNet at width {DEMO['width']}, {DEMO['init']} init, "
                    f"batch {DEMO['batch_size']}, seed {seed} on {device}")
    last = os.path.join(paths.run, "last.pt")
    resume = os.path.exists(last)
    if resume:
        state = load_checkpoint(last, mmap=True)
        if state["train_config"].get("seed") != seed:
            raise UserError(f"{paths.run} holds a demo run with seed {state['train_config'].get('seed')}: "
                            f"use another --out for seed {seed}")
        if state["epoch"] >= epochs:
            steps.say("   already trained, reused")
            steps.done(t)
            return None
    cfg = TrainConfig(shards=paths.shards, out=paths.run, epochs=epochs, batch_size=DEMO["batch_size"],
                      device=device, width=DEMO["width"], init=DEMO["init"], seed=seed, resume=resume, log_every=5)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()
    steps.done(t)
    return time.perf_counter() - t


def best_checkpoint(run):
    """best.pt (the epoch of the lowest validation error), or last.pt in a run from before it."""
    best = os.path.join(run, "best.pt")
    return best if os.path.exists(best) else os.path.join(run, "last.pt")


def evaluate(paths, steps, devices, epochs):
    from train.checkpoint import load_checkpoint
    from train.evaluate import evaluate_checkpoint, record_evaluation

    best = best_checkpoint(paths.run)
    epoch = load_checkpoint(best, mmap=True)["epoch"]
    t = steps.start(f"evaluate the best checkpoint (epoch {epoch} of {epochs}): centre crop and ten-crop "
                    "(Section 4.1)")
    results = {}
    for ten in (False, True):
        r = results[ten] = evaluate_checkpoint(paths.shards, best, ten_crop=ten, devices=devices, batch_size=64)
        record_evaluation(best, paths.shards, r)  # for `alexnet report`
        steps.say(f"   {'ten-crop   ' if ten else 'centre crop'}: top-1 error {100 * r['top1_error']:.1f}%, "
                  f"top-5 error {100 * r['top5_error']:.1f}%")
    steps.done(t)
    return epoch, results


def figures(paths, steps, devices):
    from train.figures import make_figures

    t = steps.start(f"figures (Section 6.1) -> {paths.figures}")
    made = make_figures(paths.shards, best_checkpoint(paths.run), paths.figures, devices=devices)
    for note in made.pop("notes", []):
        steps.say(f"   note: {note}")
    steps.done(t)


def profile(paths, steps, device, devices):
    from train.config import TrainConfig
    from train.profile import plot_profile, run_profile

    t = steps.start(f"profile: input pipeline vs model vs stock loader -> {paths.profile_png}")
    cfg = TrainConfig(shards=paths.shards, width=DEMO["width"], init=DEMO["init"], batch_size=DEMO["batch_size"],
                      device=device)
    r = run_profile(cfg, devices=devices, batches=10, warmup=2, progress=lambda m: steps.say("   " + m))
    plot_profile(r, paths.profile_png)
    steps.done(t)
    return r


def run_demo(out, device="auto", epochs=DEMO["epochs"], workers=None, seed=0, say=print, progress=None):
    """Every stage on the sample data under `out`; a dict of what the summary reports."""
    from train.launch import resolve_devices

    devices, first = resolve_devices(device)
    device = first.type
    paths, steps = Paths(str(out)), Steps(say)
    os.makedirs(paths.out, exist_ok=True)
    started = time.perf_counter()
    sample_data(paths, steps, progress)
    preprocess_and_verify(paths, steps, workers)
    train_s = train(paths, steps, device, epochs, seed)
    epoch, results = evaluate(paths, steps, devices, epochs)
    figures(paths, steps, devices)
    prof = profile(paths, steps, device, devices)
    return {"paths": paths, "device": device, "epochs": epochs, "seed": seed, "train_s": train_s,
            "best_epoch": epoch, "eval": results, "profile": prof, "seconds": time.perf_counter() - started}
