"""shards/format.py: the image size, the split names and the file names are defined once; every
other module of shards/ and preprocess/ (and tests/shardkit.py) takes them from there."""
import inspect
import io
import pathlib
import tokenize

import shardkit
from preprocess import cli as preprocess_cli
from preprocess import sums, transform
from preprocess.plan import Settings
from shards import format as fmt
from shards.manifest import Stats
from shards.stats import StatSums

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_constants():
    assert fmt.IMAGE_SIZE == 256
    assert fmt.SPLITS == (fmt.TRAIN, fmt.VAL) == ("train", "val")
    assert (fmt.MANIFEST_NAME, fmt.ERRORS_NAME) == ("manifest.json", "errors.jsonl")
    assert (fmt.MEAN_IMAGE_NAME, fmt.PIXEL_SUM_NAME) == ("mean_image.npy", "pixel_sum.npy")


def test_defaults_come_from_the_format():
    assert Settings(src="s", out="o").size == fmt.IMAGE_SIZE
    assert Settings(src="s", out="o").splits == fmt.SPLITS
    assert Settings(src="s", out="o", split=fmt.VAL).splits == (fmt.VAL,)
    assert StatSums().size == sums.PixelSums().size == shardkit.SIZE == fmt.IMAGE_SIZE
    for f in (transform.load, transform.geometry, transform.crop_box):
        assert inspect.signature(f).parameters["size"].default == fmt.IMAGE_SIZE, f
    stats = Stats(pixels=0, images=0, mean=[], std=[], cov=[], eigval=[], eigvec=[])
    assert (stats.mean_image, stats.pixel_sum) == (fmt.MEAN_IMAGE_NAME, fmt.PIXEL_SUM_NAME)
    split = next(p for p in preprocess_cli.preprocess.params if p.name == "split")
    assert list(split.type.choices) == [*fmt.SPLITS, "all"]


def test_no_other_module_spells_a_split_or_file_name():
    names = {repr(v) for v in (fmt.TRAIN, fmt.VAL, fmt.MANIFEST_NAME, fmt.ERRORS_NAME, fmt.MEAN_IMAGE_NAME,
                               fmt.PIXEL_SUM_NAME)}
    names |= {n.replace("'", '"') for n in names}
    found = []
    for path in sorted((ROOT / "shards").glob("*.py")) + sorted((ROOT / "preprocess").glob("*.py")):
        if path.name == "format.py":
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.STRING and tok.string in names:
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string}")
    assert not found, found
