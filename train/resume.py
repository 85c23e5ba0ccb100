"""What a checkpoint holds of a run, and how `--resume` continues it exactly (docs/DESIGN.md,
"Trainer"): the checks that refuse a resume that would not continue the same run, the settings
`--apply-changes` may change (recorded in RUN/resumes.jsonl), and the restore of every counter
and RNG state. The trainer (train.trainer) keeps the loop; it calls `checkpoint_state` to save
and `resume` to start again.
"""
import json
import os

import torch

from train.checkpoint import load_checkpoint, model_settings, rng_state, set_rng_state
from train.config import RESUMABLE_CHANGES, TrainConfig


def changed_settings(was: dict, now: TrainConfig) -> dict:
    """{field: (saved, given)} for the settings a resume may not change silently."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    return {k: (was[k], v) for k, v in vars(now).items()
            if k in was and k not in RESUMABLE_CHANGES and norm(was[k]) != norm(v)}


def checkpoint_state(t) -> dict:
    """Everything `resume` needs to continue the Trainer `t` exactly, and eval to rebuild its
    net (every rank takes part under DDP: each rank's RNG states are gathered)."""
    rng = rng_state(t.devices)
    if t.world > 1:  # every rank's own states, restored by rank on resume
        everyone = [None] * t.world
        torch.distributed.all_gather_object(everyone, rng)
        rng = everyone
    else:
        rng = [rng]
    return {
        "model": t.model.state_dict(),
        "model_config": dict(t.model.config),
        "optimizer": t.optimizer.state_dict(),
        "schedule": t.schedule.state_dict(),
        "step": t.step,
        "epoch": t.epoch,
        "batch_in_epoch": t.batch_in_epoch,
        "best_top1_error": t.best_error,
        "wall_s": t.elapsed(),
        "rng": rng,  # one entry per rank
        "world_size": t.world,
        "train_config": dict(vars(t.cfg)),
        "classes": [c.wnid for c in t.manifest.classes],
        "shards_fingerprint": t.shards_fingerprint,
    }


def resume(t) -> None:
    """Continue the Trainer `t` from RUN/last.pt: checked (`check_resumable`), then the weights,
    optimiser, schedule, counters and RNG states restored, and the metrics past it dropped."""
    path = os.path.join(t.cfg.out, "last.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: {path} does not exist (start without --resume)")
    state = load_checkpoint(path)
    changed = check_resumable(t, path, state)
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.schedule.load_state_dict(state["schedule"])
    if changed:  # --apply-changes: from here on the run uses the new settings, and says so
        apply_changes(t, state["step"], changed)
    t.step, t.epoch, t.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    t.best_error = state.get("best_top1_error", float("inf"))
    t.wall_s = state.get("wall_s", 0.0)
    rng = state["rng"]
    set_rng_state(rng[t.rank] if isinstance(rng, list) else rng, t.devices)
    t.metrics.truncate_after(t.step)  # rows past the checkpoint are redone
    if t.main:
        t.cfg.save(t.cfg.out)  # config.json says what runs from here on


def check_resumable(t, path, state) -> dict:
    """ValueError when `state` cannot continue as the Trainer `t`'s run; the changes
    --apply-changes allows."""
    cfg, wnids = t.cfg, [c.wnid for c in t.manifest.classes]
    mc = model_settings(state["model_config"])
    if mc != model_settings(t.model.config):
        raise ValueError(f"--resume: {path} was trained with other model settings {mc}")
    was = state.get("train_config", {})
    if was.get("batch_size", cfg.batch_size) != cfg.batch_size or state.get("world_size", 1) != t.world:
        raise ValueError(f"--resume: {path} was trained with batch size {was.get('batch_size')} on "
                         f"{state.get('world_size', 1)} replica(s); resume with the same settings")
    if state.get("classes", wnids) != wnids:
        raise ValueError(f"--resume: {path} was trained on other classes than {cfg.shards}")
    if state.get("shards_fingerprint", t.shards_fingerprint) != t.shards_fingerprint:
        raise ValueError(f"--resume: {cfg.shards} holds other shards than {path} was trained on "
                         "(their sha256 differ); resume on the same shard directory")
    changed = changed_settings(was, cfg)
    if changed and not cfg.apply_changes:
        said = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume: {path} was trained with other settings ({said}); leave them out to "
                         "continue as it ran, or add --apply-changes")
    return changed


def apply_changes(t, step, changed) -> None:
    """Let the new settings take effect (a new lr continues the schedule from it) and record
    them in RUN/resumes.jsonl."""
    if "lr" in changed:  # the schedule continues from the new rate
        t.schedule.lr = t.cfg.lr
        if hasattr(t.schedule, "base"):
            t.schedule.base = t.cfg.lr
    if t.main:
        with open(os.path.join(t.cfg.out, "resumes.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "changed": {k: list(v) for k, v in changed.items()}},
                               default=str) + "\n")
