"""Top-1 / top-5 error on the validation split, centre crop or ten-crop (paper Sections 2 and 4.1).

Ten-crop: "the network makes a prediction by extracting five 224×224 patches (the four corner
patches and the center patch) as well as their horizontal reflections ... and averaging the
predictions made by the network's softmax layer on the ten patches" (Section 4.1).
"""
import contextlib

import torch


def autocast_for(device, amp):
    if amp and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, loader, device, amp=True, limit=None):
    """{"top1_error", "top5_error", "loss", "samples"} over the loader's epoch.

    Accepts centre-crop batches (N×3×224×224) or ten-crop batches (N×10×3×224×224).
    """
    was_training = model.training
    model.eval()
    errors1 = errors5 = seen = 0
    loss_sum = 0.0
    for i, (images, labels) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        with autocast_for(device, amp):
            if images.dim() == 5:  # ten-crop: average the softmax over the ten patches
                n, v = images.shape[:2]
                logits = model(images.flatten(0, 1))
                probs = logits.float().softmax(dim=1).view(n, v, -1).mean(dim=1)
            else:
                probs = model(images).float().softmax(dim=1)
        labels = labels.to(probs.device)
        loss_sum += torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
        top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
        hit = top5 == labels[:, None]
        errors1 += (~hit[:, 0]).sum().item()
        errors5 += (~hit.any(dim=1)).sum().item()
        seen += labels.numel()
    model.train(was_training)
    if seen == 0:
        raise ValueError("the validation loader yielded no samples")
    return {
        "top1_error": errors1 / seen,
        "top5_error": errors5 / seen,
        "loss": loss_sum / seen,
        "samples": seen,
        "counts": [errors1, errors5, loss_sum, seen],  # for summing over ranks
    }


def from_counts(errors1, errors5, loss_sum, seen):
    return {"top1_error": errors1 / seen, "top5_error": errors5 / seen, "loss": loss_sum / seen, "samples": int(seen)}


def evaluate_checkpoint(shards, checkpoint, ten_crop=False, devices=None, batch_size=128) -> dict:
    """{"top1_error", "top5_error", "loss", "samples", "ten_crop", "step"} of a checkpoint on the
    validation split of `shards`, read the way its training read them (its input_norm).
    `devices`: the columns' devices (train.launch.resolve_devices), None for the CPU. ValueError
    (one line) for a checkpoint of other classes or an unreadable file; FileNotFoundError for a
    missing one."""
    from pipeline import build_loader
    from shards import Manifest
    from train.checkpoint import check_classes, model_from_checkpoint

    manifest = Manifest.load(shards)
    manifest.split("val")
    model, state = model_from_checkpoint(checkpoint, devices=devices)
    check_classes(checkpoint, state, shards, manifest)
    device = devices[0] if devices else "cpu"
    loader = build_loader(shards, "val", batch_size, device=device, ten_crop=ten_crop, mean=model.config["input_norm"])
    try:
        r = evaluate(model, loader, device)
    finally:
        loader.close()
    r.pop("counts", None)
    r.update(ten_crop=ten_crop, step=state.get("step"))
    return r
