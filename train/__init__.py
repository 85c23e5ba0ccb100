"""The paper's two-column AlexNet, its LRN and its SGD update (Sections 3, 4.2, 5).

Names are imported lazily, so `alexnet --help` (which imports `train.cli`) does not import torch.
"""
import importlib

_EXPORTS = {
    "AlexNet": "train.model",
    "count_parameters": "train.model",
    "LRN": "train.lrn",
    "lrn": "train.lrn",
    "PaperSGD": "train.optim",
    "param_groups": "train.optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
