"""The paper's two-column AlexNet, its LRN and its SGD update (Sections 3, 4.2, 5).

Names are imported lazily, so `alexnet --help` (which imports `train.cli`) does not import torch.
"""
from shards.exports import lazy_exports

_EXPORTS = {
    "AlexNet": "train.model",
    "count_parameters": "train.model",
    "LRN": "train.response_norm",
    "lrn": "train.response_norm",
    "PaperSGD": "train.optim",
    "param_groups": "train.optim",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
