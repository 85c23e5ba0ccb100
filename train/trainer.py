"""The training loop of Section 5, one model replica per process (docs/DESIGN.md, "Trainer").

One process trains one two-column AlexNet (model parallel over two GPUs, or one GPU, or the CPU);
`torchrun` starts one process per replica and DistributedDataParallel averages the gradients.
Outputs go to the run directory: config.json, metrics.jsonl, checkpoint-<step>.pt, last.pt,
best.pt. `Trainer.fit` is the loop, top to bottom: epochs, batches, step, log, validate,
checkpoint; the counters (step, epoch, batch_in_epoch) change only there.
"""
import contextlib
import json
import math
import os
import time

import torch

from shards.files import exclusive
from shards.format import TRAIN, VAL
from train.checkpoint import load_checkpoint, model_settings, point, rng_state, save_checkpoint, set_rng_state, shards_fingerprint
from train.config import RESUMABLE_CHANGES, TrainConfig
from train.evaluate import evaluate, from_counts
from train.launch import Launch, resolve_devices
from train.metrics import MetricsLog
from train.schedule import make_schedule
from train.step import build_model, build_optimizer, compiled, memory_format_for, train_step, uses_cuda_graphs
from train.timing import StepTimes


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def changed_settings(was: dict, now: TrainConfig) -> dict:
    """{field: (saved, given)} for the settings a resume may not change silently."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    return {k: (was[k], v) for k, v in vars(now).items()
            if k in was and k not in RESUMABLE_CHANGES and norm(was[k]) != norm(v)}


class Trainer:
    """One replica's run: the loaders, the model and its optimiser, the schedule, the counters."""

    def __init__(self, cfg: TrainConfig, progress=True, launch: Launch = None):
        self.cfg = cfg
        self.launch = launch or Launch.from_env()
        self.rank, self.world, self.main = self.launch.rank, self.launch.world, self.launch.main
        self.progress = progress and self.main
        self._held = contextlib.ExitStack()
        self.train_loader = self.val_loader = None
        if self.main:  # one run per run directory: a second one stops here (shards.files.Busy)
            self._held.enter_context(exclusive(cfg.out, "alexnet train"))
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        from shards import Manifest

        cfg = self.cfg
        self.devices, self.device = resolve_devices(cfg.device, cfg.devices, self.launch)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.cuda else "gloo")
        self.manifest = Manifest.load(cfg.shards)
        self.shards_fingerprint = shards_fingerprint(self.manifest)  # stored in every checkpoint
        self.train_loader, self.val_loader = self._loaders()
        self.model = build_model(cfg, self.manifest.num_classes, self.devices, self.rank)
        self.optimizer = build_optimizer(self.model, cfg)
        chance = 1.0 - 1.0 / self.manifest.num_classes
        self.schedule = make_schedule(cfg.schedule, cfg.lr, cfg.lr_drops, cfg.patience, cfg.lr_steps,
                                      started_below=0.9 * chance)
        self.net = self._wrap(self.model)
        self.step = 0  # optimiser steps in all, across resumes
        self.epoch = 0  # the epoch being trained
        self.batch_in_epoch = 0  # batches of `epoch` already trained (for mid-epoch resume)
        self.best_error = float("inf")  # the lowest validation top-1 error so far (best.pt)
        self.wall_s = 0.0  # seconds of fit() before this process's (from the checkpoint)
        self._fit_start = time.perf_counter()
        self._bar = None  # the epoch's progress bar (main rank)
        self.metrics = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), enabled=self.main)
        if cfg.resume:
            self._resume()
        else:  # a fresh start: rows left by a run killed before its first checkpoint go
            self.metrics.truncate_after(0)
            if self.main:
                cfg.save(cfg.out)

    def _loaders(self):
        from pipeline import build_loader  # the only seam to the data: train never opens a tar

        cfg = self.cfg
        common = dict(device=str(self.device) if self.cuda else "cpu", rank=self.rank, world_size=self.world,
                      seed=cfg.seed, num_threads=cfg.num_threads or self.launch.threads(),
                      memory_format=memory_format_for(cfg, self.device), mean=cfg.input_norm)
        train = build_loader(cfg.shards, TRAIN, cfg.batch_size, lighting=cfg.lighting, **common)
        val = build_loader(cfg.shards, VAL, cfg.batch_size, **common) if VAL in self.manifest.splits else None
        return train, val

    def _wrap(self, model):
        net = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model)  # device_ids=None: a multi-device module
        return compiled(net, self.cfg)

    # --- the loop ------------------------------------------------------------------------
    def fit(self):
        """Train until cfg.epochs are done or cfg.max_steps is reached; returns self."""
        cfg = self.cfg
        self._fit_start = time.perf_counter()
        while self.epoch < cfg.epochs and not self.done():
            self._set_lr(self.schedule.on_epoch(self.epoch))
            losses, times = [], StepTimes(self.device)
            rest = self._epoch_batches() if self.batch_in_epoch < len(self.train_loader) else ()
            for images, labels, waited in rest:
                times.begin(waited, images.shape[0])
                losses.append(self.train_step(images, labels).detach())
                times.end()
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0 or self.done():
                    self._log(losses, times)
                    losses = []
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                if self.done():
                    break
            self._check_finite(losses)  # the tail of the epoch, not logged
            if self.batch_in_epoch < len(self.train_loader):  # stopped mid-epoch by --max-steps
                self.save()
                break
            self.epoch += 1
            self.batch_in_epoch = 0
            self._end_of_epoch(finished=self.epoch - 1)
        return self

    def train_step(self, images, labels):
        return train_step(self.net, self.optimizer, images, labels, self.device, self.cfg.amp,
                          uses_cuda_graphs(self.cfg))

    def elapsed(self) -> float:
        """Seconds of training in all, across resumes (validation and checkpoints included)."""
        return self.wall_s + time.perf_counter() - self._fit_start

    def done(self):
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _epoch_batches(self):
        """(images, labels, seconds the host waited for them) for the rest of the epoch. A resume
        mid-epoch skips the batches already trained: the draws of epoch e are a function of
        (seed, rank, e), so the same batches follow."""
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        it = iter(loader)
        for _ in range(self.batch_in_epoch):
            next(it)
        bar = self._bar = self._progress_bar(len(loader))
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    images, labels = next(it)
                except StopIteration:
                    return
                yield images, labels, time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self._bar = None

    def _progress_bar(self, total):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.batch_in_epoch, desc=f"epoch {self.epoch}", unit="batch",
                    dynamic_ncols=True, leave=False)

    def _log(self, losses, times):
        """One metrics row for the window: mean loss (one sync), img/s, data and compute time."""
        loss = self._check_finite(losses)
        t = times.window()
        row = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_s": t["images"] * self.world / t["elapsed_s"],
               "data_wait": t["data_s"] / t["elapsed_s"],
               "data_ms": 1e3 * t["data_s"] / t["steps"], "compute_ms": 1e3 * t["compute_s"] / t["steps"],
               "wall_s": self.elapsed()}
        self.metrics.write(row)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{row['images_per_s']:.0f}",
                                  wait=f"{100 * row['data_wait']:.0f}%")

    def _check_finite(self, losses):
        """The mean of `losses` (None when empty); TrainingDiverged when it is NaN or infinite."""
        if not losses:
            return None
        mean = torch.stack(losses).float().mean().item()
        if not math.isfinite(mean):
            last = os.path.join(self.cfg.out, "last.pt")
            kept = (f"the last good checkpoint is {last}" if os.path.exists(last)
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(f"loss is {mean} at step {self.step}; stopped, {kept} (try a lower --lr)")
        return mean

    def _end_of_epoch(self, finished):
        """Validate when due (the schedule reads the error), write the row, checkpoint, best.pt."""
        improved = False
        if self.val_loader is not None and (finished + 1) % self.cfg.val_every == 0:
            result = self.validate()
            self._set_lr(self.schedule.on_validation(result["top1_error"]))
            self.metrics.write({"step": self.step, "epoch": finished, **result,
                                "lr": self.optimizer.param_groups[0]["lr"], "wall_s": self.elapsed()})
            improved = result["top1_error"] < self.best_error
            self.best_error = min(self.best_error, result["top1_error"])  # saved in the checkpoint
        path = self.save()
        if improved and self.main:
            point(self.cfg.out, path, "best.pt")

    def _set_lr(self, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def validate(self):
        """Centre-crop top-1/top-5 error and loss on the validation split, summed over ranks."""
        r = evaluate(self.net, self.val_loader, self.device, amp=self.cfg.amp)
        if self.world > 1:
            counts = torch.tensor(r["counts"], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(counts)
            r = from_counts(*counts.tolist())
        r.pop("counts", None)
        return r

    def close(self):
        """Release the loaders' prepared pipelines, leave the process group (torchrun) and
        release the run directory."""
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                loader.close()
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self._held.close()

    # --- checkpoints ---------------------------------------------------------------------
    def _state(self):
        rng = rng_state(self.devices)
        if self.world > 1:  # every rank's own states, restored by rank on resume
            everyone = [None] * self.world
            torch.distributed.all_gather_object(everyone, rng)
            rng = everyone
        else:
            rng = [rng]
        return {
            "model": self.model.state_dict(),
            "model_config": dict(self.model.config),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_top1_error": self.best_error,
            "wall_s": self.elapsed(),
            "rng": rng,  # one entry per rank
            "world_size": self.world,
            "train_config": dict(vars(self.cfg)),
            "classes": [c.wnid for c in self.manifest.classes],
            "shards_fingerprint": self.shards_fingerprint,
        }

    def save(self):
        """Write a checkpoint (every rank takes part under DDP); its path on the main rank."""
        state = self._state()
        return save_checkpoint(self.cfg.out, state) if self.main else None

    def _resume(self):
        path = os.path.join(self.cfg.out, "last.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume: {path} does not exist (start without --resume)")
        state = load_checkpoint(path)
        changed = self._check_resumable(path, state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if changed:  # --apply-changes: from here on the run uses the new settings, and says so
            self._apply_changes(state["step"], changed)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_error = state.get("best_top1_error", float("inf"))
        self.wall_s = state.get("wall_s", 0.0)
        rng = state["rng"]
        set_rng_state(rng[self.rank] if isinstance(rng, list) else rng, self.devices)
        self.metrics.truncate_after(self.step)  # rows past the checkpoint are redone
        if self.main:
            self.cfg.save(self.cfg.out)  # config.json says what runs from here on

    def _check_resumable(self, path, state) -> dict:
        """ValueError when `state` cannot continue as this run; the changes --apply-changes allows."""
        cfg, wnids = self.cfg, [c.wnid for c in self.manifest.classes]
        mc = model_settings(state["model_config"])
        if mc != model_settings(self.model.config):
            raise ValueError(f"--resume: {path} was trained with other model settings {mc}")
        was = state.get("train_config", {})
        if was.get("batch_size", cfg.batch_size) != cfg.batch_size or state.get("world_size", 1) != self.world:
            raise ValueError(f"--resume: {path} was trained with batch size {was.get('batch_size')} on "
                             f"{state.get('world_size', 1)} replica(s); resume with the same settings")
        if state.get("classes", wnids) != wnids:
            raise ValueError(f"--resume: {path} was trained on other classes than {cfg.shards}")
        if state.get("shards_fingerprint", self.shards_fingerprint) != self.shards_fingerprint:
            raise ValueError(f"--resume: {cfg.shards} holds other shards than {path} was trained on "
                             "(their sha256 differ); resume on the same shard directory")
        changed = changed_settings(was, cfg)
        if changed and not cfg.apply_changes:
            said = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"--resume: {path} was trained with other settings ({said}); leave them out to "
                             "continue as it ran, or add --apply-changes")
        return changed

    def _apply_changes(self, step, changed):
        if "lr" in changed:  # the schedule continues from the new rate
            self.schedule.lr = self.cfg.lr
            if hasattr(self.schedule, "base"):
                self.schedule.base = self.cfg.lr
        if self.main:
            with open(os.path.join(self.cfg.out, "resumes.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "changed": {k: list(v) for k, v in changed.items()}},
                                   default=str) + "\n")
