"""Sample-data trees and the preprocess runs over them that the preprocess, shards and CLI tests
share, made once per session (tests/shardkit.py, by contrast, writes shards without preprocess).

The fixtures are imported by the test modules that use them (`from samplekit import src, single`);
each one's result is cached here, so a session makes every tree and run once however many modules
import it.
"""
import json
import os
import tarfile

import pytest
from click.testing import CliRunner

from demo import sample_data
from preprocess.plan import Part, Settings
from preprocess.run import preprocess

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 12, 4
_made = {}


def run(src, out, **kw):
    """`preprocess` of src into out: one worker, shards of 5 images, no progress bar by default."""
    kw.setdefault("workers", 1)
    kw.setdefault("shard_size", 5)
    return preprocess(Settings(src=str(src), out=str(out), **kw), show_progress=False)


def read_tar(path):
    """{key: {ext: bytes}} in tar order."""
    samples = {}
    with tarfile.open(path) as tf:
        for m in tf:
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def read_split(out, split):
    """{key: {ext: bytes}} of every shard of `split` in out's manifest, in order."""
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    samples = {}
    for shard in manifest["splits"][split]["shards"]:
        samples.update(read_tar(os.path.join(out, shard["tar"])))
    return samples


def tars(out):
    """{name: bytes} of every .tar and .idx in out."""
    return {f: open(os.path.join(out, f), "rb").read() for f in sorted(os.listdir(out)) if f.endswith((".tar", ".idx"))}


def cli(*args):
    """`alexnet ARGS...` in this process (click's runner; stdout and stderr apart)."""
    import alexnet_cli

    return CliRunner().invoke(alexnet_cli.main, list(map(str, args)))


def one_line_error(result, code=2):
    """The one stderr line of a failed command, after checking its exit code and the one line."""
    assert result.exit_code == code, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.output, result.stderr
    return lines[0]


def _once(name, make):
    if name not in _made:
        _made[name] = make()
    return _made[name]


@pytest.fixture(scope="session")
def src(tmp_path_factory):
    """A sample-data tree: CLASSES classes, TRAIN_PER_CLASS training (one truncated) and
    VAL_PER_CLASS validation images each, flat val/ with LOC_val_solution.csv."""
    def make():
        root = tmp_path_factory.mktemp("data") / "imagenet"
        sample_data.generate(root, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS)
        return root

    return _once("src", make)


@pytest.fixture(scope="session")
def single(src, tmp_path_factory):
    """`src` preprocessed by `run` (shards of 5): the reference output. Never modified."""
    def make():
        out = tmp_path_factory.mktemp("single") / "out"
        run(src, out)
        return out

    return _once("single", make)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory):
    """A small preprocessed folder (2 classes, 9 training + 4 validation samples in 4 shards)."""
    def make():
        root = tmp_path_factory.mktemp("verify")
        sample_data.generate(root / "src", classes=2, train_per_class=5, val_per_class=2)
        run(root / "src", root / "out", shard_size=4)
        return root / "out"

    return _once("shards_dir", make)


@pytest.fixture(scope="session")
def part_runs(tmp_path_factory):
    """A folder with `src` (3 classes: 27 training images, 1 truncated, and 9 validation), its
    single run `single` and its three parts `p0`..`p2` (`--part i/3`), all with shards of 4."""
    def make():
        root = tmp_path_factory.mktemp("merge")
        sample_data.generate(root / "src", classes=3, train_per_class=9, val_per_class=3)
        run(root / "src", root / "single", shard_size=4)
        for i in range(3):
            run(root / "src", root / f"p{i}", shard_size=4, part=Part(i, 3))
        return root

    return _once("part_runs", make)
