"""Checkpoints: written atomically, each carrying the model's settings, plus `last.pt`, the newest,
and `best.pt`, the one of the lowest validation top-1 error so far.

A checkpoint holds everything `--resume` needs to continue exactly (model, optimiser, schedule,
step, position in the epoch, RNG states) and everything `eval` and `figures` need to rebuild the
model (`model_config`: num_classes, width, init, input_norm), so those commands take no other arguments.
"""
import os
import shutil

import torch


def save_checkpoint(run_dir, state: dict) -> str:
    """Write `checkpoint-<step>.pt` atomically and point `last.pt` at it; returns the path."""
    path = os.path.join(run_dir, f"checkpoint-{state['step']:08d}.pt")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    point(run_dir, path, "last.pt")
    return path


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
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if "model_config" not in state or "model" not in state:
        raise ValueError(f"{path}: not a checkpoint written by `alexnet train`")
    return state


def model_from_checkpoint(path, devices=None):
    """(AlexNet with the checkpoint's weights, in eval mode, the checkpoint dict)."""
    from train.model import AlexNet

    state = load_checkpoint(path)
    cfg = state["model_config"]
    # checkpoints from before input_norm was recorded were all trained on the paper's input
    model = AlexNet(num_classes=cfg["num_classes"], devices=devices, width=cfg["width"], init=cfg["init"],
                    input_norm=cfg.get("input_norm", "image"))
    model.load_state_dict(state["model"])
    return model.eval(), state
