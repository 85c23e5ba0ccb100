"""The shard directory format (docs/DESIGN.md, "Shard directory"): its names and sizes, keys, the
tar + DALI index writer, the manifest, the statistics, the finisher, verification, where a
directory lives (a folder or s3://bucket/prefix, shards.store) and its upload to S3, and the small
helpers every stage shares (errors, atomic writes, lazy exports).

`shards` knows nothing about image processing or training; it is the contract between
`preprocess` (which writes shards) and `pipeline` (which reads them).
"""
from shards.exports import lazy_exports

_EXPORTS = {
    "IMAGE_SIZE": "shards.format",
    "SPLITS": "shards.format",
    "TRAIN": "shards.format",
    "VAL": "shards.format",
    "MANIFEST_NAME": "shards.format",
    "ERRORS_NAME": "shards.format",
    "MEAN_IMAGE_NAME": "shards.format",
    "PIXEL_SUM_NAME": "shards.format",
    "MANIFEST_VERSION": "shards.manifest",
    "ClassInfo": "shards.manifest",
    "Manifest": "shards.manifest",
    "ManifestError": "shards.manifest",
    "DamagedManifest": "shards.manifest",
    "ShardInfo": "shards.manifest",
    "SplitInfo": "shards.manifest",
    "Stats": "shards.manifest",
    "StatSums": "shards.stats",
    "ShardWriter": "shards.writer",
    "sample_key": "shards.writer",
    "shard_stem": "shards.writer",
    "finish_shard_dir": "shards.finish",
    "read_errors": "shards.finish",
    "NothingUsable": "shards.finish",
    "verify_shard_dir": "shards.verify",
    "VerifyReport": "shards.verify",
    "Problem": "shards.verify",
    "open_store": "shards.store",
    "is_s3_url": "shards.store",
    "upload_shard_dir": "shards.upload",
    "UploadReport": "shards.upload",
    "UserError": "shards.errors",
    "Damage": "shards.errors",
    "atomic_write": "shards.files",
    "atomic_write_json": "shards.files",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
