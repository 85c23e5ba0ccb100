"""The input pipelines of AlexNet (docs/DESIGN.md, "Loader"): the DALI loader and the reference loader.

`build_loader` is the fast path (DALI, GPU or CPU); `build_reference_loader` is the stock
webdataset + PIL + DataLoader peer used as the correctness oracle and benchmark baseline.
What both share lives once: the options, one spec built by `loader_spec`, and the epoch plan (`plan`), the random draws
(`draws`), the manifest's normalisation (`normalise`); `graph` is the DALI graph, `dali_loader`
and `reference` the two loaders. Importing this package imports neither DALI nor torch: names
resolve on first use.
"""
from shards.exports import lazy_exports

_EXPORTS = {
    "CROP": "pipeline.draws",
    "DALI_MISSING": "pipeline.graph",
    "DALINotInstalled": "pipeline.graph",
    "Draws": "pipeline.draws",
    "epoch_draws": "pipeline.draws",
    "lighting_offset": "pipeline.draws",
    "build_loader": "pipeline.dali_loader",
    "build_reference_loader": "pipeline.reference",
    "LoaderSpec": "pipeline.plan",
    "loader_spec": "pipeline.plan",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
