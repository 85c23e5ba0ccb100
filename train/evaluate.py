"""Top-1 / top-5 error on the validation split, centre crop or ten-crop (paper Sections 2 and 4.1).

Ten-crop: "the network makes a prediction by extracting five 224×224 patches (the four corner
patches and the center patch) as well as their horizontal reflections ... and averaging the
predictions made by the network's softmax layer on the ten patches" (Section 4.1).
"""
import torch

from train.step import autocast_for


def softmax(model, images, device, amp=True):
    """The softmax of a batch: N x C, float32; ten-crop batches (N x 10 x 3 x 224 x 224) give the
    mean over their ten patches (Section 4.1)."""
    with autocast_for(device, amp):
        if images.dim() == 5:
            n, v = images.shape[:2]
            return model(images.flatten(0, 1)).float().softmax(dim=1).view(n, v, -1).mean(dim=1)
        return model(images).float().softmax(dim=1)


def error_counts(probs, labels):
    """[top-1 errors, top-5 errors, summed negative log-likelihood, samples] of a batch."""
    labels = labels.to(probs.device)
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").item()
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    hit = top5 == labels[:, None]
    return [(~hit[:, 0]).sum().item(), (~hit.any(dim=1)).sum().item(), loss, labels.numel()]


@torch.no_grad()
def evaluate(model, loader, device, amp=True, limit=None):
    """{"top1_error", "top5_error", "loss", "samples", "counts"} over the loader's epoch.

    Accepts centre-crop batches (N×3×224×224) or ten-crop batches (N×10×3×224×224). `counts`
    are the sums behind the rates, for adding over ranks (`from_counts`).
    """
    was_training = model.training
    model.eval()
    counts = [0, 0, 0.0, 0]
    for i, (images, labels) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        counts = [a + b for a, b in zip(counts, error_counts(softmax(model, images, device, amp), labels))]
    model.train(was_training)
    if counts[3] == 0:
        raise ValueError("the validation loader yielded no samples")
    return {**from_counts(*counts), "counts": counts}


def from_counts(errors1, errors5, loss_sum, seen):
    """The rates of `error_counts` sums."""
    return {"top1_error": errors1 / seen, "top5_error": errors5 / seen, "loss": loss_sum / seen, "samples": int(seen)}


@torch.no_grad()
def predict(model, loader, device, amp=True):
    """(softmax N x C on the CPU, labels N) over the loader's epoch, in its order."""
    model.eval()
    probs, labels = [], []
    for images, y in loader:
        probs.append(softmax(model, images, device, amp).cpu())
        labels.append(y.cpu())
    if not probs:
        raise ValueError("the validation loader yielded no samples")
    return torch.cat(probs), torch.cat(labels)


def evaluate_checkpoint(shards, checkpoint, ten_crop=False, devices=None, batch_size=128) -> dict:
    """`evaluate_checkpoints` of one checkpoint."""
    return evaluate_checkpoints(shards, [checkpoint], ten_crop, devices, batch_size)


def evaluate_checkpoints(shards, checkpoints, ten_crop=False, devices=None, batch_size=128, cache_dir=None,
                         cache_limit=None) -> dict:
    """{"top1_error", "top5_error", "loss", "samples", "ten_crop", "step", "checkpoints"} on the
    validation split of `shards`: one checkpoint, or an ensemble whose softmax outputs are
    averaged (Section 6, Table 2: "averaging the predictions of five similar CNNs"); with
    `ten_crop`, over the ten views of each network first. Each network reads the images the
    way its training did (its input_norm); validation order is the shards' order, so the
    networks see the same images in the same order, which the labels confirm.

    `devices`: the columns' devices (train.launch.resolve_devices), None for the CPU. ValueError
    (one line, naming the file) for a checkpoint of other classes, one that does not fit its
    settings or an unreadable file; FileNotFoundError for a missing one. `step` is the step of
    each checkpoint (a list for an ensemble)."""
    from pipeline import build_loader
    from shards import VAL, Manifest
    from train.checkpoint import check_classes, load_checkpoint, model_from_checkpoint

    checkpoints = [str(c) for c in checkpoints]
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    manifest = Manifest.load(shards)
    manifest.split(VAL)
    for path in checkpoints:  # every one is checked before any is evaluated
        check_classes(path, load_checkpoint(path, mmap=True), shards, manifest)
    device = devices[0] if devices else "cpu"
    total, labels, steps = None, None, []
    for path in checkpoints:
        model, state = model_from_checkpoint(path, devices=devices)
        loader = build_loader(shards, VAL, batch_size, device=device, ten_crop=ten_crop,
                              mean=model.config["input_norm"], cache_dir=cache_dir, cache_limit=cache_limit)
        try:
            probs, y = predict(model, loader, device)
        finally:
            loader.close()
        if labels is not None and not torch.equal(y, labels):
            raise ValueError(f"{path}: its validation pass read other labels than {checkpoints[0]}'s")
        total, labels = (probs if total is None else total + probs), y
        steps.append(state.get("step"))
        del model
    r = from_counts(*error_counts(total / len(checkpoints), labels))
    r.update(ten_crop=ten_crop, step=steps[0] if len(steps) == 1 else steps, checkpoints=len(checkpoints))
    return r


def record_evaluation(checkpoint, shards, result) -> None:
    """Append `result` to `evaluations.jsonl` of the run directory `checkpoint` lies in (one with
    a config.json); elsewhere, nothing."""
    import json
    import os

    run = os.path.dirname(os.path.abspath(str(checkpoint)))
    if not os.path.exists(os.path.join(run, "config.json")):
        return
    from shards.store import is_s3_url

    where = str(shards) if is_s3_url(shards) else os.path.abspath(str(shards))
    row = {"checkpoint": os.path.basename(str(checkpoint)), "shards": where,
           **{k: result[k] for k in ("step", "ten_crop", "top1_error", "top5_error", "loss", "samples")}}
    with open(os.path.join(run, "evaluations.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
