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


def one_line_error(result, code=2, names=()):
    """The one stderr line of a failed command, after checking its exit code, that it is the
    command's own exit (not an exception click's runner caught), the one line and that it
    names each of `names` (paths or words)."""
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.output, result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def files(folder):
    """{relative path: bytes} of every file under `folder` (to show that nothing changed)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def damaged_jpegs(good: bytes) -> dict:
    """Copies of the JPEG `good`, each with one kind of damage libjpeg warns about (and, first,
    the warning it gives; "N" stands for the count it says):

        header junk   3 bytes before the first DQT marker     "3 extraneous bytes before marker 0xdb"
        tail junk     200 bytes before EOI                    "N extraneous bytes before marker 0xd9"
        truncated     cut in the middle of the scan           "Premature end of JPEG file"
        marker        an EOI marker in the middle of the scan "premature end of data segment"
        desync        80 bytes of the scan set to 1 bits      the decoder loses sync, finishes
                      (a damaged entropy segment)             early: "N extraneous bytes before 0xd9"
    """
    dqt = good.index(b"\xff\xdb")
    sos = good.index(b"\xff\xda")
    mid = sos + (len(good) - sos) // 2
    return {
        "header junk": good[:dqt] + b"\x00\x11\x22" + good[dqt:],
        "tail junk": good[:-2] + bytes(range(1, 201)) + good[-2:],
        "truncated": good[:mid],
        "marker": good[:mid] + b"\xff\xd9" + good[mid:],
        "desync": good[:mid] + b"\xff\x00" * 40 + good[mid + 80:],
    }


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


W0 = sample_data.wnid(0)
# what add_odd_entries puts in a sample tree's train/, and why the scan does not use each one
ODD_ENTRIES = {
    f"train/{W0}/.DS_Store": "a hidden file",
    f"train/{W0}/caf\\xe9.JPEG": "the name is not UTF-8; rename the file",
    f"train/{W0}/dangling.JPEG": "a symbolic link that does not resolve (No such file or directory)",
    f"train/{W0}/loop.JPEG": "a symbolic link that does not resolve (Too many levels of symbolic links)",
    f"train/{W0}/notes.txt": "not an image file name (extension '.txt')",
    f"train/{W0}/pipe.JPEG": "not a regular file (a FIFO, socket or device)",
    f"train/{W0}/sub": "a folder inside a class folder (its files are not read)",
    "train/stray.JPEG": "not in a class folder",
}


def add_odd_entries(tree):
    """Put one of each entry that preprocess does not use in the sample tree `tree` (ODD_ENTRIES
    in train/; in val/, readme.txt). The non-UTF-8 name is os.fsencode bytes."""
    cls = tree / "train" / W0
    image = sorted(cls.iterdir())[-1]
    (cls / "dangling.JPEG").symlink_to("nowhere.JPEG")
    (cls / "loop.JPEG").symlink_to("loop.JPEG")
    (cls / "sub").mkdir()
    (cls / "sub" / "nested.JPEG").write_bytes(image.read_bytes())
    (cls / "notes.txt").write_text("mine")
    (cls / ".DS_Store").write_bytes(b"\0")
    os.mkfifo(cls / "pipe.JPEG")
    with open(os.path.join(os.fsencode(cls), b"caf\xe9.JPEG"), "wb") as f:
        f.write(image.read_bytes())
    (tree / "train" / "stray.JPEG").write_bytes(image.read_bytes())
    (tree / "val" / "readme.txt").write_text("mine")


def children(pid):
    """The child process ids of `pid` (Linux: /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def alive(pid):
    """Whether process `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def interrupt(src, out, record, sig, workers=1, shard_size=2):
    """Start `alexnet preprocess SRC OUT` in a process of its own, send it `sig` once
    OUT/.parts/<record>.npz exists (the record is written after its tar: that shard is
    complete), and wait for it. Returns (the command, its exit status, its workers' pids when it
    was signalled)."""
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "alexnet_cli", "preprocess", str(src), str(out), "--workers", str(workers),
           "--shard-size", str(shard_size), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(out, ".parts", f"{record}.npz")) and time.time() < deadline:
            time.sleep(0.0005)
        pool = children(proc.pid)
        proc.send_signal(sig)
    finally:
        proc.wait()
    return cmd, proc.returncode, pool
