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

from shards.format import TRAIN, VAL

from pipeline import CROP
from train.plots import kernel_mosaic, plot_curves, plot_kernels, plot_neighbours, plot_predictions, read_metrics

__all__ = ["make_figures", "nearest", "NeighbourSearch", "mean_crop", "to_display", "kernel_mosaic", "plot_curves",
           "plot_kernels", "read_metrics"]

NEIGHBOURS_K = 6  # the paper's six training images per query


def mean_crop(shards, manifest=None):
    """The 224×224×3 centre crop of the training mean image, in 0–255 units (float32)."""
    from shards import Manifest
    from shards.store import open_store, read_array

    manifest = manifest or Manifest.load(shards)
    if manifest.stats is None:
        raise ValueError(f"{shards}: the manifest has no training statistics (mean image)")
    mean = read_array(open_store(shards), manifest.stats.mean_image).astype(np.float32)  # a folder or s3://
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


def make_figures(shards, checkpoint, out_dir, devices=None, n_predictions=8, n_neighbours=5, n_train=None,
                 batch_size=64, k=NEIGHBOURS_K, progress=False, cache_dir=None, cache_limit=None):
    """Write the figures of Section 6.1 for a checkpoint; returns {name: path}.

    `n_predictions` validation images for predictions.png, `n_neighbours` validation queries
    (rows) for neighbours.png, each with its `k` (6) nearest training images, searched over the
    first `n_train` training images (all when None) read in shard order as centre crops without
    flips (`neighbours.json` indices are positions in that order).
    `devices`: the columns' devices (train.launch.resolve_devices), None for the CPU.
    Names: kernels, predictions, predictions_json, neighbours, neighbours_json, curves; when a
    figure cannot be made (no metrics.jsonl, no validation or training split) its name is
    absent and `notes` (a list of strings) says why.
    """
    from shards import Manifest
    from train.checkpoint import model_from_checkpoint

    shards, checkpoint, out_dir = str(shards), str(checkpoint), str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest.load(shards)
    model, _ = model_from_checkpoint(checkpoint, devices=devices)
    fig = _Figures(shards, manifest, model, out_dir, devices[0] if devices else "cpu", batch_size,
                   dict(cache_dir=cache_dir, cache_limit=cache_limit))
    fig.kernels()
    queries = fig.validation_images(max(n_predictions, n_neighbours))
    if queries is not None and n_predictions > 0:
        fig.predictions(*(q[:n_predictions] for q in queries))
    if queries is not None and n_neighbours > 0:
        fig.neighbours(*(q[:n_neighbours] for q in queries), k=k, n_train=n_train, progress=progress)
    fig.curves(checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint)))
    if fig.notes:
        fig.out["notes"] = fig.notes
    return fig.out


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


class _Figures:
    """The figures of one checkpoint: each method draws one and records its paths in `out`, or
    records in `notes` why it could not."""

    def __init__(self, shards, manifest, model, out_dir, in_device, batch_size, cache=None):
        self.shards, self.manifest, self.model, self.out_dir = shards, manifest, model.eval(), out_dir
        self.in_device, self.batch_size, self.cache = in_device, batch_size, cache or {}  # s3://: the shard cache
        self.names = [c.name or c.wnid for c in manifest.classes]
        self.input_norm = model.config["input_norm"]  # what training fed the model, from the checkpoint
        if self.input_norm == "image":
            self.offset, self.scale = mean_crop(shards, manifest), 1.0
        else:
            self.offset, self.scale = (255.0 * np.asarray(v, np.float32)
                                       for v in (manifest.stats.mean, manifest.stats.std))
        self.out, self.notes = {}, []

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def show(self, x):
        return to_display(x, self.offset, self.scale)

    def _has(self, split):
        return split in self.manifest.splits and self.manifest.splits[split].samples > 0

    def loader(self, split, **kwargs):
        from pipeline import build_loader  # train never opens a tar: the pipeline reads the shards

        return build_loader(self.shards, split, self.batch_size, self.in_device, mean=self.input_norm,
                            **self.cache, **kwargs)

    def kernels(self):
        """Figure 3: the conv1 kernels, one block per column."""
        plot_kernels(self.model.conv1_weight(), self.path("kernels.png"), columns=len(self.model.columns),
                     places=[str(d) for d in self.model.devices])
        self.out["kernels"] = self.path("kernels.png")

    def validation_images(self, n):
        """The first n validation (inputs, labels), or None (with a note) when there are none."""
        if n <= 0:
            return None
        if not self._has(VAL):
            self.notes.append("predictions and neighbours skipped: the shard directory has no validation split")
            return None
        return _take(self.loader(VAL), n)

    def predictions(self, x, y):
        """Figure 4, left: the top-5 labels with their probabilities."""
        probs, idx = top_predictions(self.model, x, k=5)
        path = self.path("predictions.png")
        plot_predictions(self.show(x), y.tolist(), probs.tolist(), idx.tolist(), self.names, path)
        self.out["predictions"] = path
        self.out["predictions_json"] = _write_json(self.path("predictions.json"), [
            {"position": j, "label": int(y[j]), "top5": idx[j].tolist(), "probs": probs[j].tolist()}
            for j in range(len(y))])

    def neighbours(self, qx, qy, k, n_train, progress):
        """Figure 4, right: the k training images nearest each query in fc7's feature space."""
        import torch

        if not self._has(TRAIN):
            self.notes.append("neighbours skipped: the shard directory has no training split")
            return
        with torch.no_grad():
            _, qf = self.model(qx, return_features=True)
        search = NeighbourSearch(qf.float(), k=k)
        # validation mode: centre crops, no flips, no lighting, shard order, every image once
        train = self.loader(TRAIN, augment=False, lighting=0.0, shuffle=False, drop_last=False)
        limit = n_train if n_train is not None else self.manifest.splits[TRAIN].samples
        self._search(search, train, limit, progress)
        path = self.path("neighbours.png")
        plot_neighbours(self.show(qx), qy.tolist(), search.images, search.labels.numpy(), self.names, path)
        self.out["neighbours"] = path
        self.out["neighbours_json"] = _write_json(self.path("neighbours.json"), {
            "train_images_searched": search.seen,
            "queries": [{"position": r, "label": int(qy[r]), "neighbours": search.index[r].tolist(),
                         "labels": search.labels[r].tolist(), "distances": search.dist[r].tolist()}
                        for r in range(len(qy))]})

    def _search(self, search, train, limit, progress):
        """Stream the first `limit` training images through the model into `search`."""
        import torch
        from tqdm import tqdm

        with torch.no_grad(), tqdm(total=limit, desc="fc7 features", unit="img", disable=not progress) as bar:
            for x, y in train:
                if search.seen >= limit:
                    break
                x, y = x[: limit - search.seen], y[: limit - search.seen]
                _, f = self.model(x, return_features=True)
                search.add(f.float(), y, x, self.show)
                bar.update(x.shape[0])

    def curves(self, run_dir):
        """Training loss and validation error from the run's metrics.jsonl."""
        metrics = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.exists(metrics):
            self.notes.append(f"curves skipped: no metrics.jsonl in {run_dir}")
            return
        plot_curves(metrics, self.path("curves.png"))
        self.out["curves"] = self.path("curves.png")
