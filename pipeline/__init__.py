"""DALI input pipelines for AlexNet (DESIGN.md, Contract 2), and the reference loader.

`build_loader` is the fast path (DALI, GPU or CPU); `build_reference_loader` is the stock
webdataset + PIL + DataLoader peer used as the correctness oracle and benchmark baseline.
Importing this package does not import DALI: it is imported when a loader is built.
"""
from pipeline.dali import DALI_MISSING, DALINotInstalled
from pipeline.lighting import Draws, epoch_draws, lighting_offset
from pipeline.loader import build_loader
from pipeline.reference import build_reference_loader

__all__ = [
    "DALI_MISSING",
    "DALINotInstalled",
    "Draws",
    "build_loader",
    "build_reference_loader",
    "epoch_draws",
    "lighting_offset",
]
