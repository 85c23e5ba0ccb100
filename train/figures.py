"""The paper's qualitative figures (Section 6.1, Figures 3 and 4) and the training curves.

`make_figures(shards, checkpoint, out_dir)` writes, from a checkpoint and its shard directory:

- `kernels.png` (Figure 3): the conv1 kernels, column 1 (GPU 1) in the top block and
  column 2 (GPU 2) in the bottom block, each kernel stretched to [0,1] by its own min/max
  and enlarged with nearest-neighbour upscaling (pixels are placed exactly, not resampled).
- `predictions.png` (Figure 4, left): validation images, the true label under each, and the
  five most probable labels as horizontal bars; the true class's bar is red when it is in the
  top 5. `predictions.json` holds the same numbers.
- `neighbours.png` (Figure 4, right): validation images in the first column, then the six
  training images whose last-hidden-layer (fc7) features are nearest in Euclidean distance.
  `neighbours.json` holds the labels and distances.
- `curves.png`: training loss and validation top-1/top-5 error against the step, from the
  `metrics.jsonl` next to the checkpoint (skipped, with a note, when there is none).

Images are shown as the network sees them: the loader's centre crop (offset 16, no flip) with
the per-pixel mean image added back and clipped to 0–255. The nearest-neighbour search streams
over the training split once, keeping only the current best k per query, so it needs no memory
for the 1.2 M × 4096 training features.
"""
import json
import os

import numpy as np

from train.plots import kernel_mosaic, plot_curves, plot_kernels, plot_neighbours, plot_predictions, read_metrics

__all__ = ["make_figures", "nearest", "NeighbourSearch", "mean_crop", "to_display", "kernel_mosaic", "plot_curves",
           "plot_kernels", "read_metrics"]

NEIGHBOURS_K = 6  # the paper's six training images per query
CROP = 224


def _devices_for(device):
    """(model devices for AlexNet, the device the inputs live on)."""
    if device is None:
        return None, "cpu"
    if isinstance(device, (tuple, list)):
        devs = tuple(str(d) for d in device)
    else:
        devs = tuple(d.strip() for d in str(device).split(",") if d.strip())
    if not devs or devs == ("cpu",):
        return None, "cpu"
    return devs, devs[0]


def mean_crop(shards, manifest=None):
    """The 224×224×3 centre crop of the training mean image, in 0–255 units (float32)."""
    from shards import Manifest

    manifest = manifest or Manifest.load(shards)
    if manifest.stats is None:
        raise ValueError(f"{shards}: the manifest has no training statistics (mean image)")
    mean = np.load(os.path.join(str(shards), manifest.stats.mean_image)).astype(np.float32)
    off = (mean.shape[0] - CROP) // 2
    return mean[off : off + CROP, off : off + CROP] * 255.0


def to_display(images, mean_crop_255, scale_255=1.0):
    """Model inputs → uint8 N×224×224×3 for display: x · scale + mean, in 0–255 units.

    For the paper's input (0–255 minus the mean image) the mean is the mean image's crop and the
    scale 1; for "channel" input ((x/255 − μ)/σ) they are 255·μ and 255·σ per channel.
    """
    x = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1) * scale_255 + mean_crop_255[None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def top_predictions(model, inputs, k=5):
    """(probabilities N×k, class indices N×k) of the model's softmax, most probable first."""
    import torch

    with torch.no_grad():
        probs = model(inputs).float().softmax(dim=1)
    p, i = probs.topk(min(k, probs.shape[1]), dim=1)
    return p.cpu(), i.cpu()


def nearest(query_feats, train_feats, k):
    """The k training features nearest each query in Euclidean distance, nearest first.

    Returns (distances Q×k, indices Q×k into `train_feats`); k is capped at the number of
    training rows. Computed in float64 from the differences themselves (no |a|²+|b|²−2ab
    cancellation), ties broken by the lower index. NumPy in, NumPy out; torch in, torch out.
    """
    import torch

    as_numpy = not isinstance(query_feats, torch.Tensor)
    q = torch.as_tensor(query_feats).double()
    t = torch.as_tensor(train_feats).double().to(q.device)
    if q.dim() != 2 or t.dim() != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"features must be Q×D and N×D, got {tuple(q.shape)} and {tuple(t.shape)}")
    k = min(int(k), t.shape[0])
    d = torch.cdist(q, t, compute_mode="donot_use_mm_for_euclid_dist")
    d, i = torch.sort(d, dim=1, stable=True)
    d, i = d[:, :k], i[:, :k]
    if as_numpy:
        return d.cpu().numpy(), i.cpu().numpy()
    return d, i


class NeighbourSearch:
    """Streaming k-nearest search: feed training batches, keep the best k per query.

    Holds only the k best candidates' distances, indices, labels and display images, so the
    training set's features are never all in memory.
    """

    def __init__(self, query_feats, k=NEIGHBOURS_K):
        import torch

        self.q = query_feats.detach().double()
        self.k = k
        nq = self.q.shape[0]
        self.dist = torch.empty(nq, 0, dtype=torch.float64)
        self.index = torch.empty(nq, 0, dtype=torch.int64)
        self.labels = torch.empty(nq, 0, dtype=torch.int64)
        self.images = np.zeros((nq, 0, CROP, CROP, 3), np.uint8)
        self.seen = 0

    def add(self, feats, labels, images, show):
        """One batch: features B×D, labels B, model inputs B×3×224×224 and `show`, which turns
        model inputs into uint8 images (e.g. `to_display` with the run's normalisation)."""
        import torch

        d, i = nearest(self.q, feats.detach().to(self.q.device), self.k)
        d, i = d.cpu(), i.cpu()
        want = sorted(set(i.flatten().tolist()))
        shown = dict(zip(want, show(images[want])))
        cand_imgs = np.stack([np.stack([shown[j] for j in row]) for row in i.tolist()])
        labels = labels.detach().cpu().long()
        dist = torch.cat([self.dist, d], dim=1)
        index = torch.cat([self.index, i + self.seen], dim=1)
        labs = torch.cat([self.labels, labels[i]], dim=1)
        imgs = np.concatenate([self.images, cand_imgs], axis=1)
        order = torch.sort(dist, dim=1, stable=True).indices[:, : self.k]  # earlier batches win ties
        self.dist = torch.gather(dist, 1, order)
        self.index = torch.gather(index, 1, order)
        self.labels = torch.gather(labs, 1, order)
        self.images = np.stack([imgs[r, order[r].numpy()] for r in range(imgs.shape[0])])
        self.seen += feats.shape[0]


def _take(loader, n):
    """The first n (inputs, labels) of a loader, concatenated (inputs stay on their device)."""
    import torch

    xs, ys, have = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if have >= n:
            break
    if not xs:
        return None, None
    return torch.cat(xs)[:n], torch.cat(ys)[:n].long()


def make_figures(shards, checkpoint, out_dir, device="cpu", n_predictions=8, n_neighbours=4, n_train=None,
                 batch_size=64, k=NEIGHBOURS_K, progress=False):
    """Write the figures of Section 6.1 for a checkpoint; returns {name: path}.

    `n_predictions` validation images for predictions.png, `n_neighbours` validation queries
    (rows) for neighbours.png, each with its `k` (6) nearest training images, searched over the
    first `n_train` training images (all when None) read in shard order as centre crops without
    flips (`neighbours.json` indices are positions in that order).
    `device`: "cpu", "cuda", "cuda:1", or two devices ("cuda:0,cuda:1") for the two columns.
    Names: kernels, predictions, predictions_json, neighbours, neighbours_json, curves; when a
    figure cannot be made (no metrics.jsonl, no validation or training split) its name is
    absent and `notes` (a list of strings) says why.
    """
    import torch

    from shards import Manifest
    from train.checkpoint import model_from_checkpoint

    shards, checkpoint, out_dir = str(shards), str(checkpoint), str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest.load(shards)
    names = [c.name or c.wnid for c in manifest.classes]
    devices, in_device = _devices_for(device)
    model, state = model_from_checkpoint(checkpoint, devices=devices)
    model.eval()
    out, notes = {}, []

    # Figure 3
    path = os.path.join(out_dir, "kernels.png")
    plot_kernels(model.conv1_weight(), path, columns=2)
    out["kernels"] = path

    input_norm = model.config["input_norm"]  # what training fed the model, from the checkpoint
    if input_norm == "image":
        offset, scale = mean_crop(shards, manifest), 1.0
    else:
        offset, scale = (255.0 * np.asarray(v, np.float32) for v in (manifest.stats.mean, manifest.stats.std))

    def show(x):
        return to_display(x, offset, scale)

    val_x = val_y = None
    want = max(n_predictions, n_neighbours)
    if want <= 0:
        pass
    elif "val" in manifest.splits and manifest.splits["val"].samples > 0:
        from pipeline import build_loader  # train never opens a tar: the pipeline reads the shards

        val = build_loader(shards, "val", batch_size, in_device, mean=input_norm)
        val_x, val_y = _take(val, want)
        del val
    else:
        notes.append("predictions and neighbours skipped: the shard directory has no validation split")

    # Figure 4, left
    if val_x is not None and n_predictions > 0:
        x, y = val_x[:n_predictions], val_y[:n_predictions]
        probs, idx = top_predictions(model, x, k=5)
        path = os.path.join(out_dir, "predictions.png")
        plot_predictions(show(x), y.tolist(), probs.tolist(), idx.tolist(), names, path)
        out["predictions"] = path
        jpath = os.path.join(out_dir, "predictions.json")
        with open(jpath, "w") as f:
            json.dump([{"position": j, "label": int(y[j]), "top5": idx[j].tolist(), "probs": probs[j].tolist()}
                       for j in range(len(y))], f, indent=1)
        out["predictions_json"] = jpath

    # Figure 4, right
    if val_x is not None and n_neighbours > 0:
        if "train" not in manifest.splits or manifest.splits["train"].samples == 0:
            notes.append("neighbours skipped: the shard directory has no training split")
        else:
            qx, qy = val_x[:n_neighbours], val_y[:n_neighbours]
            with torch.no_grad():
                _, qf = model(qx, return_features=True)
            search = NeighbourSearch(qf.float(), k=k)
            # validation mode: centre crops, no flips, no lighting, shard order, every image once
            train = build_loader(shards, "train", batch_size, in_device, augment=False, lighting=0.0,
                                 mean=input_norm,
                                 shuffle=False, drop_last=False)
            limit = n_train if n_train is not None else manifest.splits["train"].samples
            bar = None
            if progress:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=limit, desc="fc7 features", unit="img")
                except ImportError:
                    pass
            with torch.no_grad():
                for x, y in train:
                    if search.seen >= limit:
                        break
                    x, y = x[: limit - search.seen], y[: limit - search.seen]
                    _, f = model(x, return_features=True)
                    search.add(f.float(), y, x, show)
                    if bar is not None:
                        bar.update(x.shape[0])
            if bar is not None:
                bar.close()
            del train
            path = os.path.join(out_dir, "neighbours.png")
            plot_neighbours(show(qx), qy.tolist(), search.images, search.labels.numpy(), names, path)
            out["neighbours"] = path
            jpath = os.path.join(out_dir, "neighbours.json")
            with open(jpath, "w") as f:
                json.dump({"train_images_searched": search.seen,
                           "queries": [{"position": r, "label": int(qy[r]),
                                        "neighbours": search.index[r].tolist(),
                                        "labels": search.labels[r].tolist(),
                                        "distances": search.dist[r].tolist()} for r in range(len(qy))]},
                          f, indent=1)
            out["neighbours_json"] = jpath

    # curves
    run_dir = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        path = os.path.join(out_dir, "curves.png")
        plot_curves(metrics, path)
        out["curves"] = path
    else:
        notes.append(f"curves skipped: no metrics.jsonl in {run_dir}")
    if notes:
        out["notes"] = notes
    return out
