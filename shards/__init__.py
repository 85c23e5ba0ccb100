"""The shard directory format (DESIGN.md, Contract 1): keys, tar + DALI index writer, manifest, stats, verify.

`shards` knows nothing about image processing or training; it is the contract between
`preprocess` (which writes shards) and `pipeline` (which reads them).
"""
from shards.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    ClassInfo,
    Manifest,
    ManifestError,
    ShardInfo,
    SplitInfo,
    Stats,
)
from shards.stats import StatSums
from shards.writer import ShardWriter, sample_key, shard_stem

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ClassInfo",
    "Manifest",
    "ManifestError",
    "ShardInfo",
    "SplitInfo",
    "Stats",
    "StatSums",
    "ShardWriter",
    "sample_key",
    "shard_stem",
]
