"""The training loop of Section 5, one model replica per process (docs/DESIGN.md, "Trainer").

One process trains one two-column AlexNet (model parallel over two GPUs, or one GPU, or the CPU);
`torchrun` starts one process per replica and DistributedDataParallel averages the gradients.
Outputs go to the run directory: config.json, metrics.jsonl, checkpoint-<step>.pt, last.pt,
best.pt. `Trainer.fit` is the loop, top to bottom: epochs, batches, step, log, validate,
checkpoint; the counters (step, epoch, batch_in_epoch) change only there.
"""
import contextlib
import math
import os
import time

import torch

from shards.files import exclusive
from shards.format import TRAIN, VAL
from shards.store import is_s3_url
from train.capacity import check_fits
from train.checkpoint import point, prune_checkpoints, save_checkpoint, shards_fingerprint
from train.config import TrainConfig
from train.evaluate import evaluate, from_counts
from train.launch import Launch, resolve_devices
from train.metrics import MetricsLog
from train.resume import checkpoint_state, resume
from train.schedule import make_schedule
from train.step import (StepStream, build_model, build_optimizer, compiled, input_dtype_for, memory_format_for,
                        train_step, uses_cuda_graphs)
from train.timing import StepTimes


SHARD_HASHES = "shard-hashes.json"  # in the run directory: the shards hashed, by path, size and mtime


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
        check_fits(self.manifest.num_classes, cfg.width, cfg.columns, self.devices)  # before any allocation
        if cfg.verify_shards and self.main:  # before the first pipeline: DALI may crash on damaged bytes
            self._check_hashes()
        self.shards_fingerprint = shards_fingerprint(self.manifest)  # stored in every checkpoint
        self.train_loader, self.val_loader = self._loaders()
        if not cfg.resume:  # s3://: the first slice downloads while the model is built
            self.train_loader.download_ahead(0)
        self.model = build_model(cfg, self.manifest.num_classes, self.devices, self.rank)
        self.optimizer = build_optimizer(self.model, cfg)
        chance = 1.0 - 1.0 / self.manifest.num_classes
        self.schedule = make_schedule(cfg.schedule, cfg.lr, cfg.lr_drops, cfg.patience, cfg.lr_steps,
                                      started_below=0.9 * chance)
        self.net = self._wrap(self.model)
        self.step_stream = StepStream(self.device, cfg.step_stream)
        self.step = 0  # optimiser steps in all, across resumes
        self.epoch = 0  # the epoch being trained
        self.batch_in_epoch = 0  # batches of `epoch` already trained (for mid-epoch resume)
        self.best_error = float("inf")  # the lowest validation top-1 error so far (best.pt)
        self.wall_s = 0.0  # seconds of fit() before this process's (from the checkpoint)
        self._fit_start = time.perf_counter()
        self._bar = None  # the epoch's progress bar (main rank)
        self.metrics = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), enabled=self.main)
        if cfg.resume:
            resume(self)  # checked, then every counter and RNG state restored (train.resume)
            self.train_loader.download_ahead(self.epoch)  # s3://: the slice this run starts in
        else:  # a fresh start: rows left by a run killed before its first checkpoint go
            self.metrics.truncate_after(0)
            if self.main:
                cfg.save(cfg.out)

    def _check_hashes(self):
        """Every shard's sha256 against the manifest (shards.checksum), with a progress bar in
        bytes; RUN/shard-hashes.json remembers what was hashed, so a resume reads nothing again.
        The sizes first (pipeline.plan.check_split_files): a missing or truncated file is named as such."""
        from pipeline.plan import check_split_files
        from shards.checksum import check_shard_hashes

        for split in self.manifest.splits.values():
            check_split_files(self.cfg.shards, split)

        bar = None
        if self.progress:
            from tqdm import tqdm

            local = not is_s3_url(self.cfg.shards)
            total = sum(os.path.getsize(os.path.join(self.cfg.shards, s.tar)) for split in self.manifest.splits.values()
                        for s in split.shards if local and os.path.exists(os.path.join(self.cfg.shards, s.tar)))
            bar = tqdm(total=total or None, desc="sha256 of the shards", unit="B", unit_scale=True, leave=False,
                       disable=None)  # none when stderr is not a terminal
        try:
            check_shard_hashes(self.cfg.shards, self.manifest, cache=os.path.join(self.cfg.out, SHARD_HASHES),
                               progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def _loaders(self):
        from pipeline import build_loader  # the only seam to the data: train never opens a tar

        cfg = self.cfg
        common = dict(device=str(self.device) if self.cuda else "cpu", rank=self.rank, world_size=self.world,
                      seed=cfg.seed, num_threads=cfg.num_threads or self.launch.threads(),
                      memory_format=memory_format_for(cfg, self.device), mean=cfg.input_norm,
                      handoff=cfg.handoff, cpu_decode=cfg.cpu_decode if self.cuda else 0.0,
                      dtype=input_dtype_for(cfg, self.device), cache_dir=cfg.cache_dir,
                      cache_limit=cfg.cache_limit)
        train = build_loader(cfg.shards, TRAIN, cfg.batch_size, lighting=cfg.lighting, **common)
        train.end_epoch = cfg.epochs  # the last epoch neither builds nor downloads one ahead
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
        self._fit_first_step = self.step  # for the run's ETA (`_eta`)
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
        with self.step_stream():
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
        cache = getattr(loader, "cache", None)  # s3:// shards: the first batch waits for its slice's download
        if bar is not None and cache is not None and self.batch_in_epoch == 0:
            bar.set_postfix_str(f"downloading {cache.missing_bytes(loader.epoch_slice(self.epoch)) / 1e6:.0f} MB "
                                f"of shards into {cache.root}")
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

        return tqdm(total=total, initial=self.batch_in_epoch, desc=f"epoch {self.epoch} of {self.cfg.epochs}",
                    unit="batch", dynamic_ncols=True, leave=False)

    def _eta(self) -> str:
        """The rest of the run (every epoch, or up to --max-steps) at this process's pace so far,
        validation included, as h:mm:ss."""
        done = self.step - getattr(self, "_fit_first_step", 0)
        total = self.cfg.epochs * len(self.train_loader)
        if self.cfg.max_steps is not None:
            total = min(total, self.cfg.max_steps)
        if done <= 0:
            return "?"
        s = int((time.perf_counter() - self._fit_start) / done * max(0, total - self.step))
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def _log(self, losses, times):
        """One metrics row for the window: mean loss (one sync), img/s, data and compute time."""
        loss = self._check_finite(losses)
        t = times.window()
        row = {"step": self.step, "epoch": self.epoch, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_s": t["images"] * self.world / t["elapsed_s"],
               "data_wait": t["data_s"] / t["elapsed_s"],
               "data_ms": 1e3 * t["data_s"] / t["steps"], "compute_ms": 1e3 * t["compute_s"] / t["steps"],
               "wall_s": self.elapsed()}
        cache = getattr(self.train_loader, "cache", None)  # s3:// shards: pipeline.cache.ShardCache
        if cache is not None:
            row.update(cache_mb_per_s=cache.rate() / 1e6, cache_bytes=cache.used())
        self.metrics.write(row)
        if self._bar is not None:
            extra = {"cache": cache.progress().removeprefix("cache ")} if cache is not None else {}
            self._bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{row['images_per_s']:.0f}",
                                  wait=f"{100 * row['data_wait']:.0f}%", run_eta=self._eta(), **extra)

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

    # --- checkpoints (what one holds, and how a resume continues: train.resume) ------------
    def save(self):
        """Write a checkpoint (every rank takes part under DDP); its path on the main rank."""
        state = checkpoint_state(self)
        if not self.main:
            return None
        path = save_checkpoint(self.cfg.out, state)
        prune_checkpoints(self.cfg.out, self.cfg.keep_checkpoints)  # the disk stays bounded over 90 epochs
        return path
