"""Checkpoints: written atomically, each carrying the model's settings, plus `last.pt`, the newest,
and `best.pt`, the one of the lowest validation top-1 error so far.

A checkpoint holds everything `--resume` needs to continue exactly (model, optimiser, schedule,
step, position in the epoch, RNG states) and everything `eval` and `figures` need to rebuild the
model (`model_config`: num_classes, width, init, input_norm), so those commands take no other arguments.
"""
import hashlib
import json
import os
import random
import re
import shutil

import numpy as np
import torch

from shards.files import atomic_write


class CheckpointNotWritten(OSError):
    """A checkpoint could not be written (a full disk, a folder gone read-only); `last.pt` still
    points at the previous one."""


def save_checkpoint(run_dir, state: dict) -> str:
    """Write `checkpoint-<step>.pt` atomically and point `last.pt` at it; returns the path.
    CheckpointNotWritten (one line) when the file system refuses it."""
    path = os.path.join(run_dir, f"checkpoint-{state['step']:08d}.pt")
    try:
        atomic_write(path, lambda f: torch.save(state, f))
        point(run_dir, path, "last.pt")
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as "unexpected pos ..."
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        try:
            free = shutil.disk_usage(run_dir).free
        except OSError:
            free = None
        if free is not None and free < 64 << 20:
            reason = f"the disk is full ({free >> 20} MiB free)"
        last = os.path.join(run_dir, "last.pt")
        if os.path.exists(last):
            kept = f"{last} still holds the previous checkpoint (free space, then add --resume to continue from it)"
        else:  # nothing to resume from: the same command starts the run again
            kept = "no checkpoint was kept (free space, then run the same command again, without --resume)"
        raise CheckpointNotWritten(f"{path}: not written: {reason}; {kept}") from None
    return path


def prune_checkpoints(run_dir, keep: int) -> list:
    """Delete the oldest `checkpoint-<step>.pt` files of `run_dir` beyond the `keep` newest (0:
    keep all); returns the names deleted. Only the trainer's own names are touched, and never
    `last.pt` or `best.pt`: they are links of their own (point), so the checkpoint a resume needs
    and the best one stay whatever their checkpoint-<step>.pt name becomes."""
    if keep <= 0:
        return []
    names = sorted(n for n in os.listdir(run_dir) if re.fullmatch(r"checkpoint-\d{8}\.pt", n))
    old = names[:-keep]
    for name in old:
        os.remove(os.path.join(run_dir, name))
    return old


def point(run_dir, path, name) -> None:
    """Make `run_dir/name` (last.pt, best.pt) the checkpoint `path`, atomically: a hard link (the
    same bytes, no second write), or a copy on file systems without hard links."""
    final, tmp = os.path.join(run_dir, name), os.path.join(run_dir, name + ".tmp")
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, final)


def load_checkpoint(path, map_location="cpu", mmap=False) -> dict:
    """Load a checkpoint file (or the `last.pt` of a run directory). `mmap=True` maps the tensors
    instead of reading them: for callers that only want the settings (a full-size checkpoint is
    455 MB)."""
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    give = "give a checkpoint written by `alexnet train` (RUN/best.pt, RUN/last.pt or RUN/checkpoint-<step>.pt)"
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception:  # torch raises several types, with advice about torch.save that does not apply here
        raise ValueError(f"{path}: not a readable checkpoint: {_what_file(path)}; {give}") from None
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise ValueError(f"{path}: a PyTorch file, but not a checkpoint written by `alexnet train` (no model or "
                         f"model_config in it); {give}")
    return state


def _what_file(path) -> str:
    """What a file that torch cannot load is, from its first bytes."""
    with open(path, "rb") as f:
        head = f.read(512)
    kinds = ((b"PK\x03\x04", "a PyTorch (zip) file that is damaged or cut short"),
             (b"\x93NUMPY", "a numpy array file"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
             (b"\x80", "a Python pickle, not a PyTorch file"), (b"{", "a JSON file"))
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar file (a shard?)"
    if not head:
        return "an empty file"
    return next((what for magic, what in kinds if head.startswith(magic)), "not a PyTorch file")


def model_settings(model_config: dict) -> dict:
    """AlexNet's keyword arguments from a checkpoint's `model_config`, with the values that older
    checkpoints (before a setting was recorded) were all trained with."""
    old = {"input_norm": "image", "columns": 2, "lrn": True, "pool": "overlapping"}
    return {"num_classes": int(model_config["num_classes"]), "width": float(model_config["width"]),
            "init": model_config["init"], **{k: model_config.get(k, v) for k, v in old.items()}}


def model_from_checkpoint(path, devices=None):
    """(AlexNet with the checkpoint's weights, in eval mode, the checkpoint dict). ValueError, one
    line, when its settings or weights are not those of an AlexNet this code builds (an edited
    or foreign file)."""
    from train.model import AlexNet

    state = load_checkpoint(path)
    cfg = state["model_config"]
    try:
        model = AlexNet(devices=devices, **model_settings(cfg))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: its weights do not fit its model settings {cfg} ({detail[:200]})") from None
    return model.eval(), state


def shards_fingerprint(manifest) -> str:
    """sha256 over the classes and every shard's name and sha256: what a run was trained on,
    wherever the shard directory now lies."""
    h = hashlib.sha256()
    h.update(json.dumps([c.wnid for c in manifest.classes]).encode())
    for name, split in sorted(manifest.splits.items()):
        for shard in split.shards:
            h.update(f"{name}\t{shard.tar}\t{shard.sha256}\n".encode())
    return h.hexdigest()


def _cuda_devices(devices):
    return [torch.device(d) for d in (devices or ()) if torch.device(d).type == "cuda"]


def rng_state(devices) -> dict:
    """This process's RNG states: CPU, numpy, python, and the GPUs its columns use (by column)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": [torch.cuda.get_rng_state(d) for d in _cuda_devices(devices)]}


def set_rng_state(state: dict, devices) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for d, s in zip(_cuda_devices(devices), state.get("cuda", [])):
        torch.cuda.set_rng_state(s, d)


def check_classes(path, state: dict, shards, manifest) -> None:
    """ValueError, one line, when the checkpoint at `path` was trained on other classes than the
    shard directory `shards` holds: their count, or the first wnid that differs."""
    wnids = [c.wnid for c in manifest.classes]
    trained = state.get("classes", wnids)
    n = state["model_config"]["num_classes"]
    if n != manifest.num_classes:
        raise ValueError(f"{path} was trained on {n} classes, {shards} has {manifest.num_classes}")
    if trained != wnids:
        i = next(i for i, (a, b) in enumerate(zip(trained, wnids)) if a != b)
        raise ValueError(f"{path} was trained on other classes than {shards}: class {i} is {trained[i]} "
                         f"there and {wnids[i]} here")
