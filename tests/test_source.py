"""preprocess/source.py: the classes and items of an ImageNet folder, and its one-line errors
(the same through the CLI: tests/cli/test_preprocess_cli.py)."""
import os
import shutil

import pytest

from demo import sample_data
from preprocess.source import ScanError, scan
from samplekit import (CLASSES, ODD_ENTRIES, TRAIN_PER_CLASS, VAL_PER_CLASS, add_odd_entries,  # noqa: F401
                       src)
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


def test_every_entry_not_used_is_listed_with_its_reason(src, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    add_odd_entries(tree)
    source = scan(str(tree))
    assert {r["path"]: r["reason"] for r in source.skipped["train"]} == ODD_ENTRIES
    assert source.skipped["val"] == [{"split": "val", "path": "val/readme.txt",
                                      "reason": "not an image file name (extension '.txt')"}]
    # the images are the same as without those entries
    assert [it.path for it in source.splits["train"]] == [it.path for it in scan(str(src)).splits["train"]]
    assert list(scan(str(tree), splits=("val",)).skipped) == ["val"]


def test_an_entry_named_like_a_class_that_is_no_folder_is_refused(src, tmp_path):
    """It would drop a class and shift every later index."""
    tree = tmp_path / "tree"
    shutil.copytree(src, tree)
    (tree / "train" / "n09999999").symlink_to("/no/such/disk/n09999999")
    with pytest.raises(ScanError, match="n09999999: named like a class folder, but a symbolic link that does not"):
        scan(str(tree))


def test_a_folder_that_cannot_be_listed_is_one_line(src, tmp_path, monkeypatch):
    import errno

    real = os.scandir
    folder = str(src / "train" / sample_data.wnid(1))

    def scandir(path):
        if os.fspath(path) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", folder)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ScanError, match=f"{folder}: Permission denied; it must be a readable folder"):
        scan(str(src))
