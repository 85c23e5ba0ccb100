"""Turning an ImageNet folder into shards: decoding, resizing, statistics.

Exports are resolved lazily (PEP 562), so `import preprocess.cli` (which `alexnet --help`
does) costs no numpy, Pillow or simplejpeg import.
"""
from shards.exports import lazy_exports

_EXPORTS = {
    "Settings": "preprocess.plan",
    "Part": "preprocess.plan",
    "preprocess": "preprocess.run",
    "Summary": "preprocess.run",
    "TooManyErrors": "preprocess.run",
    "merge": "preprocess.combine",
    "MergeError": "preprocess.combine",
    "scan": "preprocess.source",
    "ScanError": "preprocess.source",
    "OutError": "preprocess.outdir",
    "load": "preprocess.transform",
    "encode": "preprocess.transform",
    "geometry": "preprocess.transform",
    "BadImage": "preprocess.transform",
    "PixelSums": "preprocess.sums",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
