"""Find the images of an ILSVRC-2012 folder and their labels.

Layout (the Kaggle "LOC" release nests the same under ILSVRC/Data/CLS-LOC/; both are found):

    SRC/train/<wnid>/*                   class index = position of wnid in the sorted list
    SRC/val/<wnid>/*                     validation in class folders, or
    SRC/val/*  + SRC/LOC_val_solution.csv  flat; the label is the first wnid of PredictionString
    SRC/LOC_synset_mapping.txt           optional "<wnid> <name>" lines: class names

Files are matched by extension in any case (.JPEG, .jpg, .png, ...); hidden files are skipped.
A validation file without a usable label is kept as an item with label -1 and a reason, so it
is reported in errors.jsonl at its place like any damaged file.
"""
import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from shards.errors import UserError
from shards.format import SPLITS, TRAIN, VAL

IMAGE_EXTS = {".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
KAGGLE_ROOT = os.path.join("ILSVRC", "Data", "CLS-LOC")


WNID = re.compile(r"n\d{8}")  # a WordNet id, as ImageNet names its class folders


class ScanError(UserError, ValueError):
    """SRC is not an ImageNet layout; the message says what is missing (exit code 2)."""


@dataclass(frozen=True, slots=True)  # 1.28 M of them for ImageNet
class Item:
    """One source file: its path, its label and why it cannot be used, if that is known already."""

    path: str  # relative to SRC, '/'-separated
    label: int  # class index; -1 when unlabelled (see `problem`)
    wnid: str = ""
    problem: str = ""  # why this file cannot be used, known before reading it


@dataclass
class Source:
    """What `scan` found in SRC: the classes, their names and the items of each split."""

    root: str  # absolute SRC
    wnids: List[str]  # sorted; index = class
    names: Dict[str, str]
    splits: Dict[str, List[Item]] = field(default_factory=dict)  # sorted by path

    def fingerprint(self, items: List[Item]) -> str:
        """sha256 over the (path, label) list, in the given order."""
        h = hashlib.sha256()
        for it in items:
            h.update(f"{it.path}\t{it.label}\n".encode())
        return h.hexdigest()


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTS


def _images(folder: str) -> List[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image(e.name))


def _subdirs(folder: str) -> List[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def class_folders(train: str, names: Dict[str, str]) -> Dict[str, List[str]]:
    """The class folders of train/ (sorted) -> their image names: each must be a wnid (n + 8
    digits) or be listed in LOC_synset_mapping.txt, and hold at least one image. Any other folder
    would silently become a class and move the index of every class after it, so it is refused
    (ScanError, one line). Each folder is listed once."""
    folders = _subdirs(train)
    if not folders:
        raise ScanError(f"{train}: no class folders (expected train/<wnid>/*.JPEG)")
    images = {}
    for f in folders:
        path = os.path.join(train, f)
        if not (WNID.fullmatch(f) or f in names):
            raise ScanError(f"{path}: not a class folder (not a wnid like n01440764, nor listed in "
                            "LOC_synset_mapping.txt); move it out of train/ or list it")
        images[f] = _images(path)
        if not images[f]:
            raise ScanError(f"{path}: a class folder with no image files; remove it or add its images "
                            "(an empty class would shift the index of every class after it)")
    return images


def find_root(src: str) -> Tuple[str, str]:
    """(folder holding train/ and val/, its path relative to SRC: '' or the Kaggle nesting)."""
    if not os.path.isdir(src):
        raise ScanError(f"{src}: no such folder")
    for rel in ("", KAGGLE_ROOT):
        if os.path.isdir(os.path.join(src, rel, TRAIN)):
            return os.path.join(src, rel), rel
    raise ScanError(f"{src}: no train/ folder (expected the ILSVRC-2012 layout SRC/train/<wnid>/*.JPEG)")


def read_names(src: str) -> Dict[str, str]:
    path = os.path.join(src, "LOC_synset_mapping.txt")
    names = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                wnid, _, name = line.strip().partition(" ")
                if wnid:
                    names[wnid] = name.strip() or wnid
    return names


def read_val_solution(src: str) -> Dict[str, str]:
    """ImageId -> wnid (the first one of PredictionString) from SRC/LOC_val_solution.csv.

    A UTF-8 byte-order mark (Excel and many Windows tools write one) is tolerated; a file that is
    not UTF-8, is empty, lacks the header `ImageId,PredictionString` (a header-less or
    `;`-separated file) or labels no image is a ScanError naming the file: it would otherwise put
    every validation image in errors.jsonl as unlabelled and leave no val split.
    """
    path = os.path.join(src, "LOC_val_solution.csv")
    labels = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if not header:
                raise ScanError(f"{path}: the file is empty (expected the header ImageId,PredictionString)")
            if not {"ImageId", "PredictionString"} <= set(header):
                raise ScanError(f"{path}: expected the header ImageId,PredictionString (comma-separated), "
                                f"found {','.join(header)[:80]!r}")
            reader.fieldnames = header
            for row in reader:
                pred = (row.get("PredictionString") or "").split()
                image = (row.get("ImageId") or "").strip()
                if image and pred:
                    labels[image] = pred[0]
    except UnicodeDecodeError as e:
        raise ScanError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "save it as UTF-8") from None
    except csv.Error as e:
        raise ScanError(f"{path}: not a readable CSV ({e})") from None
    if not labels:
        raise ScanError(f"{path}: no row has an ImageId and a PredictionString wnid")
    return labels


def scan(src: str, splits=SPLITS) -> Source:
    """The classes (from train/) and the items of each requested split present in SRC."""
    src = os.path.abspath(src)
    data, rel = find_root(src)
    prefix = f"{rel.replace(os.sep, '/')}/" if rel else ""
    names = read_names(src)
    train_images = class_folders(os.path.join(data, TRAIN), names)
    wnids = list(train_images)
    source = Source(root=src, wnids=wnids, names=names)
    index = {w: i for i, w in enumerate(wnids)}
    if TRAIN in splits:
        # class_folders guarantees at least one image per class
        source.splits[TRAIN] = [Item(f"{prefix}{TRAIN}/{w}/{name}", index[w], w) for w in wnids
                                for name in train_images[w]]
    if VAL in splits and os.path.isdir(os.path.join(data, VAL)):
        items = _scan_val(src, data, prefix, index)
        if items:
            source.splits[VAL] = items
    return source


def _scan_val(src: str, data: str, prefix: str, index: Dict[str, int]) -> List[Item]:
    val = os.path.join(data, VAL)
    folders = _subdirs(val)
    flat = _images(val)
    items = []
    for w in folders:  # class folders
        for name in _images(os.path.join(val, w)):
            label = index.get(w, -1)
            problem = "" if label >= 0 else f"class folder {w} is not a training class"
            items.append(Item(f"{prefix}{VAL}/{w}/{name}", label, w, problem))
    if flat:
        solution = _solution_for(src, data)
        if solution is None:
            raise ScanError(
                f"{val} holds images but no LOC_val_solution.csv was found next to it "
                "(needed for their labels); use --split train to skip validation"
            )
        for name in flat:
            w = solution.get(os.path.splitext(name)[0])
            label = index.get(w, -1) if w else -1
            problem = ""
            if w is None:
                problem = "no label in LOC_val_solution.csv"
            elif label < 0:
                problem = f"LOC_val_solution.csv labels it {w}, not a training class"
            items.append(Item(f"{prefix}{VAL}/{name}", label, w or "", problem))
    return sorted(items, key=lambda it: it.path)


def _solution_for(src: str, data: str) -> Optional[Dict[str, str]]:
    for folder in (src, data):
        if os.path.exists(os.path.join(folder, "LOC_val_solution.csv")):
            return read_val_solution(folder)
    return None
