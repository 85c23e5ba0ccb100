"""The PyTorch-facing DALI loader (docs/DESIGN.md, "Loader"): `build_loader(OUT, split, batch_size, device)`.

Each iteration is one epoch and builds a fresh DALI pipeline for it (`pipeline.graph`), seeded
from (seed, rank, epoch): the reader's shuffle and the host-side draws (`pipeline.draws`) are
then exact functions of those three numbers, whatever happened before (a resumed run at epoch
e sees what an uninterrupted one saw). The rebuild costs a fraction of a second per epoch
(0.1–0.2 s to the first batch on CPU, plus nvJPEG's set-up on a GPU).

Which samples a rank reads, in which order, comes from `pipeline.plan`, shared with the
reference loader. For validation the reader pads the rank's slice to whole batches and the
iterator trims the padding (LastBatchPolicy.PARTIAL); training drops the rest of the slice
(LastBatchPolicy.DROP).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from pipeline.draws import STRIDE, Draws, epoch_draws
from pipeline.normalise import Normalisation, load_normalisation
from pipeline.plan import EpochLoader, LoaderSpec, loader_spec, open_split
from shards import Manifest

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what a loader can hand over


def read_error(spec, error):
    """DALI's multi-line reader or decoder error as one line (shards.Damage, exit 1)."""
    from shards.errors import Damage

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    noise = ("Critical error in pipeline", "Current pipeline object", "File ", "which was used")
    operator = next((line.split("`")[1] for line in lines if line.startswith("Error in") and "`" in line), None)
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        cause = lines[lines.index("encountered:") + 1]
    else:
        cause = next((line for line in lines if not line.startswith(noise)), repr(error))
    cause = cause.split("failed: ", 1)[-1]
    where = f"{operator.removeprefix('nvidia.dali.fn.')}: " if operator else ""
    return Damage(f"{spec.out}: DALI could not read the {spec.split} shards ({where}{cause[:300]}); "
                  f"run `alexnet verify {spec.out}`")


@dataclass
class DaliLoader(EpochLoader):
    """Iterable of (images, labels) on the device, one epoch per iteration. Build with build_loader."""

    spec: LoaderSpec
    manifest: Manifest = field(repr=False)
    norm: Normalisation = field(repr=False)
    epoch: int = 0
    _next: object = field(default=None, repr=False)  # (epoch, Future of (pipeline, iterator))
    _builder: object = field(default=None, repr=False)
    _handoff: object = field(default=None, repr=False)  # pipeline.handoff.Handoff (uint8 hand-off)
    cache: object = field(default=None, repr=False)  # pipeline.cache.ShardCache of an s3:// directory
    end_epoch: Optional[int] = None  # no epoch from this one on is prepared or downloaded ahead (a run's epochs)

    @property
    def device(self) -> torch.device:
        return torch.device(self.spec.device)

    @property
    def samples(self) -> int:
        return self.manifest.split(self.spec.split).samples

    def draws(self, epoch=None) -> Draws:
        """Per-position draws of an epoch: position i is the i-th image this rank yields."""
        s = self.spec
        epoch = self.epoch if epoch is None else epoch
        plan = self.plan(epoch)
        # whole padded batches of the slice, plus the batches DALI asks for ahead of the end
        n = (math.ceil((plan.stop - plan.start) / s.batch_size) + s.prefetch + 2) * s.batch_size
        return epoch_draws(s.seed, s.rank, epoch, n, s.augment, s.lighting)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        plan = self.plan(epoch)
        finish = self._finisher(epoch)
        pipe = it = failure = None
        try:
            pipe, it = self._take(epoch)
            for b, batch in enumerate(it):
                if b >= plan.batches:
                    break
                ahead = b == 0 and (self.end_epoch is None or self.epoch < self.end_epoch)
                if ahead and self.spec.prepare_next:
                    self._prepare(self.epoch)  # the epoch a plain loop iterates next
                elif ahead and self.cache is not None:
                    self._download_ahead(self.epoch)  # its slice only: no pipeline built on the cores
                yield finish(batch[0]["images"], b * self.spec.batch_size), self._labels(batch[0]["labels"])
        except RuntimeError as e:  # DALI's reader or decoder: the shards are damaged
            failure = read_error(self.spec, e)
        finally:
            del it, pipe
            if self.cache is not None:  # the pipeline is gone: its tars may be evicted
                self.cache.release(epoch)
        if failure is not None:  # raised here, with no reference left to DALI's broken pipeline
            raise failure

    def close(self) -> None:
        """Drop a pipeline prepared for the next epoch and stop the builder thread."""
        ready, self._next = self._next, None
        if ready is not None:
            ready[1].cancel()
        if self.cache is not None:  # a download ahead stops now rather than finish its whole slice
            self.cache.cancel()
        if self._builder is not None:
            self._builder.shutdown(wait=True)
            self._builder = None
        ready = None
        if self.cache is not None:  # nothing held: other processes may evict this one's files
            self.cache.close()

    # --- one epoch's pipeline -------------------------------------------------------------
    def _take(self, epoch):
        """(pipeline, iterator) of `epoch`: the one prepared in the background, else a fresh one."""
        ready, self._next = self._next, None
        if ready is not None and ready[0] == epoch:
            return ready[1].result()
        if ready is not None:  # set_epoch jumped: drop the pipeline built for another epoch
            ready[1].cancel()
            if self.cache is not None:
                self.cache.release(ready[0])
        return self._open(epoch)

    def _open(self, epoch):
        """(pipeline, iterator) of an epoch; the iterator starts filling its buffers at once."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from pipeline.graph import OUTPUTS, READER_NAME, build_pipeline

        pipe = build_pipeline(self.graph(epoch), self.source(epoch))
        policy = LastBatchPolicy.DROP if self.spec.drop_last else LastBatchPolicy.PARTIAL
        return pipe, DALIGenericIterator([pipe], list(OUTPUTS), reader_name=READER_NAME, last_batch_policy=policy)

    def _prepare(self, epoch):
        """Build epoch `epoch`'s pipeline in the background, so the next epoch starts without the
        seconds a fresh pipeline takes to build and fill its shuffle buffer."""
        from concurrent.futures import ThreadPoolExecutor

        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, thread_name_prefix="dali-next-epoch")
        self._next = (epoch, self._builder.submit(self._open, epoch))

    def download_ahead(self, epoch=None) -> None:
        """s3://: start downloading `epoch`'s slice (default: the next iteration's) in the
        background now, so that it overlaps whatever the caller does before iterating (the trainer
        builds its model); the epoch's pipeline then finds the files, or waits on their locks.
        Nothing for a local shard directory."""
        if self.cache is not None:
            self._download_ahead(self.epoch if epoch is None else epoch)

    def _download_ahead(self, epoch):
        """Download epoch `epoch`'s slice into the cache in the background (its pipeline is built
        when the epoch starts; `_open` then finds the files, or waits on their locks)."""
        from concurrent.futures import ThreadPoolExecutor

        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, thread_name_prefix="dali-next-epoch")
        self._builder.submit(self.cache.fetch, self.epoch_slice(epoch), epoch)

    @property
    def split_shards(self):
        return self.manifest.split(self.spec.split).shards

    def graph(self, epoch, stop="views"):
        """The DALI graph of `epoch` (pipeline.graph), cut after `stop` (pipeline.stages)."""
        from pipeline.graph import EpochGraph

        s, plan = self.spec, self.plan(epoch)
        seed = int(np.random.SeedSequence([s.seed, s.rank, epoch, 1]).generate_state(1)[0] & 0x7FFFFFFF)
        if self.cache is not None:  # s3://: the slice's local copies alone, as one slice of one
            tars, indexes = self.fetch_slice(epoch)
            shard_id, num_shards = 0, 1
        else:
            pairs = s.in_epoch_order(self.manifest.shard_paths(s.out, s.split), epoch)
            tars, indexes = [t for t, _ in pairs], [i for _, i in pairs]
            shard_id, num_shards = plan.shard_id, None
        return EpochGraph(
            spec=s, tars=tars, indexes=indexes, shard_id=shard_id, num_shards=num_shards,
            slice_samples=plan.stop - plan.start, seed=seed, device_id=self._device_id(),
            mean_image=self.norm.mean_image, channel_mean=self.norm.channel_mean.tolist(),
            channel_std=self.norm.channel_std.tolist(), stop=stop,
        )

    def _device_id(self):
        """The CUDA device's index for DALI, None for a CPU-only pipeline."""
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def source(self, epoch):
        """The external source's callback of `epoch`: iteration → the per-sample arrays of that
        batch by name (pipeline.graph.source_names): crop corner, mirror, the lighting-folded
        mean, the decoder route."""
        from pipeline.handoff import per_sample_shift

        s, B = self.spec, self.spec.batch_size
        draws = self.draws(epoch)
        batches = len(draws) // B
        arrays = {
            "x": (draws.x0 / float(STRIDE)).astype(np.float32),  # crop_pos is relative: x0 / (256 − 224)
            "y": (draws.y0 / float(STRIDE)).astype(np.float32),
            "mirror": draws.mirror,
            "shift": per_sample_shift(self.norm, s.mean, draws),
        }
        # the first round(share·B) images of every batch go to the CPU decoder: a fixed route,
        # so the output (libjpeg-turbo and nvJPEG round differently) is a function of the seed
        on_cpu = np.arange(B) < round(s.cpu_decode * B)

        def source(iteration):
            rows = slice((iteration % batches) * B, (iteration % batches + 1) * B)  # past the end: prefetch only
            return {**{k: a[rows] for k, a in arrays.items()}, "on_cpu": on_cpu}

        return source

    # --- one batch ------------------------------------------------------------------------
    def _labels(self, raw: torch.Tensor) -> torch.Tensor:
        labels = parse_labels(raw)
        if self.device.type == "cuda":  # pinned + non-blocking: no host sync per batch
            return labels.pin_memory().to(self.device, non_blocking=True)
        return labels

    def _finisher(self, epoch):
        """batch, first stream position → the images as the loader hands them over."""
        s = self.spec
        if s.handoff == "uint8":
            from pipeline.handoff import Handoff

            if self._handoff is None:
                self._handoff = Handoff(self.norm, s.mean, s.dtype, s.memory_format, self.device, s.ten_crop)
            views = self._handoff.epoch(self.draws(epoch))
            return lambda images, start: self._handoff(images, views, start)

        def finish(images, start):
            if s.dtype == torch.bfloat16:  # DALI writes float16 or float32 only
                images = images.to(torch.bfloat16)
            if s.memory_format == torch.channels_last:  # DALI wrote N(×10)×H×W×C
                images = images.movedim(-1, -3)
            return images

        return finish


def parse_labels(raw: torch.Tensor) -> torch.Tensor:
    """int64 labels from the `.cls` bytes (ASCII decimal, NUL-padded on the right), N×L uint8."""
    raw = raw.reshape(raw.shape[0], -1).to(torch.int64)
    digits = raw - ord("0")
    valid = (digits >= 0) & (digits <= 9)
    labels = torch.zeros(raw.shape[0], dtype=torch.int64)
    for j in range(raw.shape[1]):
        labels = torch.where(valid[:, j], labels * 10 + digits[:, j], labels)
    return labels


def build_loader(OUT, split, batch_size, device="cpu", **options) -> DaliLoader:
    """The DALI loader of a split of a shard directory (docs/DESIGN.md, "Loader").

    Args:
        OUT: shard directory (manifest.json, tars, .idx files, mean_image.npy) or s3:// URL.
        split: "train" or "val".
        batch_size: images per batch on this rank.
        device: "cuda" (or "cuda:N"): mixed decoding, all pixel work on that GPU; "cpu": a
            CPU-only DALI pipeline.
        **options: the rest of `pipeline.plan.LoaderSpec`, by the same names: rank,
            world_size, seed, augment (default: train only), lighting (σ, default 0.1 for
            train), mean ("image" or "channel"), ten_crop, shuffle and drop_last (default:
            train only), dtype, memory_format, num_threads (default: this process's cores),
            prefetch, prepare_next (default: training loaders on a GPU), shuffle_buffer,
            handoff ("float": normalised in DALI; "uint8": crops, normalised by one fused op
            on the device, pipeline.handoff), cpu_decode (share of each batch decoded on the
            CPU cores, GPU loaders), hw_decoder_load, cache_dir and cache_limit (s3:// shards:
            the local shard cache, pipeline.cache; bytes or a size such as "40G").
    """
    from pipeline.cache import open_cache

    spec = loader_spec(OUT, split, batch_size, device=device, **options)
    cache = open_cache(spec)  # s3:// only; an unwritable cache folder: exit 2 before any request
    manifest = open_split(spec, cache.store if cache else None)
    norm = load_normalisation(OUT, manifest, spec.mean)
    from pipeline.graph import require_dali

    require_dali()
    loader = DaliLoader(spec, manifest, norm, cache=cache)
    if cache is not None:  # a limit below one slice and the next: one line, before any download
        cache.check_limit(spec, loader.split_shards)
    return loader
