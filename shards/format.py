"""The fixed names and sizes of a shard directory (docs/DESIGN.md, "Shard directory"), spelled
here once; every other module imports them.

    OUT/manifest.json      the typed description (shards.manifest), written last
    OUT/<split>-NNNNNN.tar one WebDataset shard, beside its DALI index `.idx` (shards.writer)
    OUT/errors.jsonl       one line per source file not used (why), or used despite a warning
                           ("kept": true), then a summary line (shards.finish)
    OUT/mean_image.npy     float32 IMAGE_SIZE×IMAGE_SIZE×3 in [0,1]: the per-pixel training mean
    OUT/pixel_sum.npy      int64 IMAGE_SIZE×IMAGE_SIZE×3: the exact per-pixel Σ it comes from

No imports, so the command-line options can use these names at no cost.
"""

IMAGE_SIZE = 256  # pixels: the side of every stored image
TRAIN = "train"
VAL = "val"
SPLITS = (TRAIN, VAL)  # every split a shard directory may hold, in the order it lists them

MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"
MEAN_IMAGE_NAME = "mean_image.npy"
PIXEL_SUM_NAME = "pixel_sum.npy"
