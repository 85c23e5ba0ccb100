"""The composition on top of the four stages (docs/DESIGN.md, "Layers"): the sample-data
generator and `alexnet demo`. Nothing in `preprocess/`, `shards/`, `pipeline/` or `train/`
imports this package; it calls their library functions."""
