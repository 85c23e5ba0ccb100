"""DALI input pipelines for AlexNet (docs/DESIGN.md, "Loader"), and the reference loader.

`build_loader` is the fast path (DALI, GPU or CPU); `build_reference_loader` is the stock
webdataset + PIL + DataLoader peer used as the correctness oracle and benchmark baseline.
Importing this package imports neither DALI nor torch: names resolve on first use.
"""
from shards.exports import lazy_exports

_EXPORTS = {
    "DALI_MISSING": "pipeline.dali",
    "DALINotInstalled": "pipeline.dali",
    "Draws": "pipeline.lighting",
    "epoch_draws": "pipeline.lighting",
    "lighting_offset": "pipeline.lighting",
    "build_loader": "pipeline.loader",
    "build_reference_loader": "pipeline.reference",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
