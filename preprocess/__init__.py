"""Turning an ImageNet folder into shards: decoding, resizing, statistics.

Exports are resolved lazily (PEP 562), so `import preprocess.cli` (which `alexnet --help`
does) costs no numpy, Pillow or simplejpeg import.
"""
import importlib

_EXPORTS = {
    "Settings": "preprocess.plan",
    "Part": "preprocess.plan",
    "preprocess": "preprocess.run",
    "Summary": "preprocess.run",
    "TooManyErrors": "preprocess.run",
    "merge": "preprocess.merge",
    "MergeError": "preprocess.merge",
    "scan": "preprocess.scan",
    "ScanError": "preprocess.scan",
    "OutError": "preprocess.outdir",
    "load": "preprocess.transform",
    "encode": "preprocess.transform",
    "geometry": "preprocess.transform",
    "BadImage": "preprocess.transform",
    "PixelSums": "preprocess.sums",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'preprocess' has no attribute {name!r}")
