"""The training loop of Section 5, one model replica per process (DESIGN.md Contract 3).

One process trains one two-column AlexNet (model parallel over two GPUs, or one GPU, or the CPU);
`torchrun` starts one process per replica and DistributedDataParallel averages the gradients.
Outputs go to the run directory: config.json, metrics.jsonl, checkpoint-<step>.pt, last.pt.
"""
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from train.checkpoint import load_checkpoint, point, save_checkpoint
from train.config import RESUMABLE_CHANGES, TrainConfig
from train.evaluate import autocast_for, evaluate, from_counts
from train.model import AlexNet
from train.optim import PaperSGD, param_groups
from train.schedule import make_schedule


def shards_fingerprint(manifest) -> str:
    """sha256 over the classes and every shard's name and sha256: what a run was trained on,
    wherever the shard directory now lies."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps([c.wnid for c in manifest.classes]).encode())
    for name, split in sorted(manifest.splits.items()):
        for shard in split.shards:
            h.update(f"{name}\t{shard.tar}\t{shard.sha256}\n".encode())
    return h.hexdigest()


def changed_settings(was: dict, now: TrainConfig) -> dict:
    """{field: (saved, given)} for the settings a resume may not change silently."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    return {k: (was[k], v) for k, v in vars(now).items()
            if k in was and k not in RESUMABLE_CHANGES and norm(was[k]) != norm(v)}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_devices(cfg: TrainConfig, local_rank: int = 0, local_world: int = 1):
    """(column devices or None for CPU, the device that holds the input and the logits).

    With L processes on a machine of n GPUs: a pair of GPUs per process (2r, 2r+1; Section 3.2)
    when n >= 2L, else one GPU per process when n >= L; the choice is the same on every rank.
    """
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if (cfg.devices or torch.cuda.is_available()) else "cpu"
    if kind == "cpu" and not cfg.devices:
        return None, torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda / --devices: no CUDA GPU is visible (use --device cpu)")
    n = torch.cuda.device_count()
    if cfg.devices:
        if local_world > 1:
            raise ValueError("--devices names the GPUs of one process; under torchrun leave it out "
                             "(process r then uses GPUs 2r and 2r+1)")
        devices = tuple(str(torch.device(d)) for d in cfg.devices)
        bad = [d for d in devices if torch.device(d).type != "cuda" or (torch.device(d).index or 0) >= n]
        if bad:
            raise ValueError(f"--devices {','.join(devices)}: {', '.join(bad)} is not one of the {n} visible GPU(s)")
        return devices, torch.device(devices[0])
    if n >= 2 * local_world:
        devices = (f"cuda:{2 * local_rank}", f"cuda:{2 * local_rank + 1}")
    elif n >= local_world:
        devices = (f"cuda:{local_rank}",)
    else:
        raise ValueError(f"{local_world} processes on this machine but only {n} GPU(s) visible")
    return devices, torch.device(devices[0])


class MetricsLog:
    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled

    def write(self, row):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_after(self, step):
        """Drop rows later than `step` (written after the checkpoint a run resumes from)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                pass  # a half-written last line
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)


def _rng_state(devices):
    """This process's RNG states: CPU, numpy, python, and the GPUs its columns use (by column)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    cuda = [torch.device(d) for d in (devices or ()) if torch.device(d).type == "cuda"]
    state["cuda"] = [torch.cuda.get_rng_state(d) for d in cuda]
    return state


def _set_rng_state(state, devices):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = [torch.device(d) for d in (devices or ()) if torch.device(d).type == "cuda"]
    for d, s in zip(cuda, state.get("cuda", [])):
        torch.cuda.set_rng_state(s, d)


class Trainer:
    def __init__(self, cfg: TrainConfig, progress=True):
        from pipeline import build_loader  # the only seam to the data: train never opens a tar

        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.main = self.rank == 0
        self.progress = progress and self.main
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.devices, self.device = resolve_devices(cfg, self.local_rank, local_world)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.cuda else "gloo")
        from shards import Manifest

        self.manifest = Manifest.load(cfg.shards)
        self.shards_fingerprint = shards_fingerprint(self.manifest)  # stored in every checkpoint
        self.memory_format = torch.channels_last if (self.cuda and cfg.channels_last) else torch.contiguous_format
        common = dict(device=self.device.type if not self.cuda else str(self.device), rank=self.rank,
                      world_size=self.world, seed=cfg.seed, num_threads=cfg.num_threads,
                      memory_format=self.memory_format, mean=cfg.input_norm)
        self.train_loader = build_loader(cfg.shards, "train", cfg.batch_size, lighting=cfg.lighting, **common)
        self.val_loader = (
            build_loader(cfg.shards, "val", cfg.batch_size, **common) if "val" in self.manifest.splits else None
        )

        torch.manual_seed(cfg.seed)  # identical initial weights on every replica
        self.model = AlexNet(self.manifest.num_classes, devices=self.devices, width=cfg.width, init=cfg.init,
                             input_norm=cfg.input_norm)
        torch.manual_seed(cfg.seed + 1000 * self.rank + 1)  # then dropout differs per replica
        if self.devices is None:
            self.model.to(memory_format=self.memory_format)
        elif self.cuda and cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = PaperSGD(
            param_groups(self.model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
        )
        chance = 1.0 - 1.0 / self.manifest.num_classes
        self.schedule = make_schedule(cfg.schedule, cfg.lr, cfg.lr_drops, cfg.patience, cfg.lr_steps,
                                      started_below=0.9 * chance)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model)  # device_ids=None: a multi-device module
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of `epoch` already trained (for mid-epoch resume)
        self.best_error = float("inf")  # the lowest validation top-1 error so far (best.pt)
        os.makedirs(cfg.out, exist_ok=True)
        self.metrics = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), enabled=self.main)
        if cfg.resume:
            self._resume()
        elif self.main:  # a fresh start: rows left by a run killed before its first checkpoint go
            self.metrics.truncate_after(0)
            cfg.save(cfg.out)

    # --- checkpoints ---------------------------------------------------------------------
    def _state(self):
        rng = _rng_state(self.devices)
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
            "rng": rng,  # one entry per rank
            "world_size": self.world,
            "train_config": dict(vars(self.cfg)),
            "classes": [c.wnid for c in self.manifest.classes],
            "shards_fingerprint": self.shards_fingerprint,
        }

    def save(self):
        """Write a checkpoint (every rank takes part under DDP); its path on the main rank."""
        state = self._state()
        if self.main:
            return save_checkpoint(self.cfg.out, state)
        return None

    def _resume(self):
        path = os.path.join(self.cfg.out, "last.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"--resume: {path} does not exist (start without --resume)")
        state = load_checkpoint(path)
        mc = state["model_config"]
        if ((mc["width"], mc["init"], mc.get("input_norm", "image"), mc["num_classes"])
                != (self.cfg.width, self.cfg.init, self.cfg.input_norm, self.manifest.num_classes)):
            raise ValueError(f"--resume: {path} was trained with other model settings {mc}")
        was = state.get("train_config", {})
        if was.get("batch_size", self.cfg.batch_size) != self.cfg.batch_size or state.get("world_size", 1) != self.world:
            raise ValueError(f"--resume: {path} was trained with batch size {was.get('batch_size')} on "
                             f"{state.get('world_size', 1)} replica(s); resume with the same settings")
        if state.get("classes", [c.wnid for c in self.manifest.classes]) != [c.wnid for c in self.manifest.classes]:
            raise ValueError(f"--resume: {path} was trained on other classes than {self.cfg.shards}")
        if state.get("shards_fingerprint", self.shards_fingerprint) != self.shards_fingerprint:
            raise ValueError(f"--resume: {self.cfg.shards} holds other shards than {path} was trained on "
                             "(their sha256 differ); resume on the same shard directory")
        changed = changed_settings(was, self.cfg)
        if changed and not self.cfg.apply_changes:
            said = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"--resume: {path} was trained with other settings ({said}); leave them out to "
                             "continue as it ran, or add --apply-changes")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if changed:  # --apply-changes: from here on the run uses the new settings, and says so
            if "lr" in changed:  # the schedule continues from the new rate
                self.schedule.lr = self.cfg.lr
                if hasattr(self.schedule, "base"):
                    self.schedule.base = self.cfg.lr
            if self.main:
                with open(os.path.join(self.cfg.out, "resumes.jsonl"), "a") as f:
                    f.write(json.dumps({"step": state["step"], "changed": {k: list(v) for k, v in changed.items()}},
                                       default=str) + "\n")
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_error = state.get("best_top1_error", float("inf"))
        rng = state["rng"]
        _set_rng_state(rng[self.rank] if isinstance(rng, list) else rng, self.devices)
        if self.main:
            self.metrics.truncate_after(self.step)  # rows past the checkpoint are redone
            self.cfg.save(self.cfg.out)  # config.json says what runs from here on

    # --- the loop ------------------------------------------------------------------------
    def _set_lr(self, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def train_step(self, images, labels):
        with autocast_for(self.device, self.cfg.amp):
            logits = self.net(images)
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def done(self):
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def fit(self):
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.done():
            self._set_lr(self.schedule.on_epoch(self.epoch))
            if self.batch_in_epoch < len(self.train_loader):  # else resumed at the epoch's last batch
                self.train_epoch()
            if self.batch_in_epoch < len(self.train_loader):  # stopped mid-epoch by --max-steps
                self.save()
                break
            finished_epoch = self.epoch
            self.epoch += 1
            self.batch_in_epoch = 0
            improved = False
            if self.val_loader is not None and (finished_epoch + 1) % cfg.val_every == 0:
                result = self.validate()
                self._set_lr(self.schedule.on_validation(result["top1_error"]))
                self.metrics.write({"step": self.step, "epoch": finished_epoch, **result,
                                    "lr": self.optimizer.param_groups[0]["lr"]})
                improved = result["top1_error"] < self.best_error
                self.best_error = min(self.best_error, result["top1_error"])  # saved in the checkpoint
            path = self.save()
            if improved and self.main:
                point(self.cfg.out, path, "best.pt")
        return self

    def close(self):
        """Release the loaders' prepared pipelines and leave the process group (torchrun)."""
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                loader.close()
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def validate(self):
        r = evaluate(self.net, self.val_loader, self.device, amp=self.cfg.amp)
        if self.world > 1:
            counts = torch.tensor(r["counts"], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(counts)
            r = from_counts(*counts.tolist())
        r.pop("counts", None)
        return r

    def train_epoch(self):
        cfg = self.cfg
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        skip = self.batch_in_epoch
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {self.epoch}", unit="batch",
                       dynamic_ncols=True, leave=False)
        window_images, window_wait, window_start = 0, 0.0, time.perf_counter()
        losses = []
        it = iter(loader)
        for _ in range(skip):  # resume mid-epoch: the draws of epoch e are a function of (seed, rank, e)
            next(it)
        window_start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                images, labels = next(it)
            except StopIteration:
                break
            window_wait += time.perf_counter() - t0
            loss = self.train_step(images, labels)
            self.step += 1
            self.batch_in_epoch += 1
            window_images += images.shape[0]
            losses.append(loss.detach())
            if self.step % cfg.log_every == 0 or self.done():
                mean_loss = torch.stack(losses).float().mean().item()  # one sync per window
                losses = []
                if not math.isfinite(mean_loss):
                    raise TrainingDiverged(self._diverged(mean_loss))
                elapsed = time.perf_counter() - window_start
                row = {"step": self.step, "epoch": self.epoch, "loss": mean_loss,
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "images_per_s": window_images * self.world / elapsed,
                       "data_wait": window_wait / elapsed}
                self.metrics.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{row['images_per_s']:.0f}",
                                    wait=f"{100 * row['data_wait']:.0f}%")
                window_images, window_wait, window_start = 0, 0.0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
            if self.done():
                break
        if bar is not None:
            bar.close()
        if losses:  # a check of the tail of the epoch too
            tail = torch.stack(losses).float().mean().item()
            if not math.isfinite(tail):
                raise TrainingDiverged(self._diverged(tail))

    def _diverged(self, loss):
        last = os.path.join(self.cfg.out, "last.pt")
        kept = f"the last good checkpoint is {last}" if os.path.exists(last) else "no checkpoint had been written yet"
        return f"loss is {loss} at step {self.step}; stopped, {kept} (try a lower --lr)"
