"""preprocess/source.py: the classes and items of an ImageNet folder, and its one-line errors
(the same through the CLI: tests/cli/test_preprocess_cli.py)."""
import shutil

import pytest

from demo import sample_data
from preprocess.source import ScanError, scan
from samplekit import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, src  # noqa: F401 (src: a fixture)
from shards import UserError


def test_scan_finds_the_classes_and_both_splits(src):
    source = scan(str(src))
    assert source.wnids == sorted(source.wnids) and len(source.wnids) == CLASSES
    assert source.wnids[0] == sample_data.wnid(0)
    train, val = source.splits["train"], source.splits["val"]
    assert len(train) == CLASSES * TRAIN_PER_CLASS and len(val) == CLASSES * VAL_PER_CLASS
    assert [it.path for it in val] == sorted(it.path for it in val)
    assert all(it.path.startswith(f"train/{source.wnids[it.label]}/") for it in train)
    assert all(0 <= it.label < CLASSES and not it.problem for it in val)
    assert list(scan(str(src), splits=("train",)).splits) == ["train"]


def test_scan_errors_are_one_line_user_errors(src, tmp_path):
    with pytest.raises(ScanError, match="no such folder") as e:
        scan(str(tmp_path / "missing"))
    assert isinstance(e.value, UserError) and e.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="no train/"):
        scan(str(tmp_path / "empty"))
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    (tree / "train" / "notes").mkdir()
    (tree / "train" / "notes" / "a.JPEG").write_bytes(b"x")
    with pytest.raises(ScanError, match="not a class folder"):
        scan(str(tree))
    (tree / "LOC_val_solution.csv").write_bytes(b"")
    (tree / "LOC_synset_mapping.txt").write_text("notes my notes\n")
    with pytest.raises(ScanError, match="the file is empty"):
        scan(str(tree))
