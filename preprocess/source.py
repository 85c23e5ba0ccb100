"""Find the images of an ILSVRC-2012 folder and their labels.

Layout (the Kaggle "LOC" release nests the same under ILSVRC/Data/CLS-LOC/; both are found):

    SRC/train/<wnid>/*                   class index = position of wnid in the sorted list
    SRC/val/<wnid>/*                     validation in class folders, or
    SRC/val/*  + SRC/LOC_val_solution.csv  flat; the label is the first wnid of PredictionString
    SRC/LOC_synset_mapping.txt           optional "<wnid> <name>" lines: class names

Files are matched by extension in any case (.JPEG, .jpg, .png, ...). A validation file without
a usable label is kept as an item with label -1 and a reason, so it is reported in errors.jsonl
at its place like any damaged file. Everything else in the folders that is not used is listed
too (`Source.skipped`, rows of errors.jsonl without a position): hidden files, files with
another extension, folders inside a class folder, files beside the class folders, symbolic
links that do not resolve (dangling, or a loop), what is not a regular file, and names that are
not UTF-8. One such entry never stops a scan; a class folder that cannot be read does (it would
change the classes).
"""
import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from shards.errors import UserError, describe, printable
from shards.files import read_text
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
    """What `scan` found in SRC: the classes, their names, the items of each split and the
    entries of each split's folders that are not used (errors.jsonl rows without a position)."""

    root: str  # absolute SRC
    wnids: List[str]  # sorted; index = class
    names: Dict[str, str]
    splits: Dict[str, List[Item]] = field(default_factory=dict)  # sorted by path
    skipped: Dict[str, List[dict]] = field(default_factory=dict)  # split -> [{"split", "path", "reason"}]

    def fingerprint(self, items: List[Item]) -> str:
        """sha256 over the (path, label) list, in the given order."""
        h = hashlib.sha256()
        for it in items:
            h.update(f"{it.path}\t{it.label}\n".encode())
        return h.hexdigest()


@dataclass
class Listing:
    """One folder's entries: image files and folders (sorted names), and the rest with why."""

    images: List[str] = field(default_factory=list)
    folders: List[str] = field(default_factory=list)
    others: List[Tuple[str, str]] = field(default_factory=list)  # (name as text, reason)


def _kind(entry: os.DirEntry) -> Tuple[str, str]:
    """("file" | "folder" | "other", why it is other)."""
    try:
        if entry.is_dir():
            return "folder", ""
        if entry.is_file():
            return "file", ""
        if entry.is_symlink():
            os.stat(entry.path)  # raises: dangling, or a loop
        return "other", "not a regular file (a FIFO, socket or device)"
    except OSError as e:
        return "other", f"a symbolic link that does not resolve ({e.strerror})"


def list_folder(folder: str) -> Listing:
    """The entries of `folder`, each placed: an image (by extension, any case), a folder, or
    another entry with the reason it is not used. A folder that cannot be listed is a ScanError."""
    listing = Listing()
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise ScanError(f"{describe(e, folder)}; it must be a readable folder") from None
    for entry in entries:
        name, (kind, why) = entry.name, _kind(entry)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            kind, why = "other", "the name is not UTF-8; rename the file"
        if kind != "other" and name.startswith("."):
            kind, why = "other", f"a hidden {kind}"
        if kind == "file" and os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
            kind, why = "other", f"not an image file name (extension {os.path.splitext(name)[1] or 'none'!r})"
        if kind == "file":
            listing.images.append(name)
        elif kind == "folder":
            listing.folders.append(name)
        else:
            listing.others.append((printable(name), why))
    return listing


def _rows(split: str, rel: str, others) -> List[dict]:
    return [{"split": split, "path": f"{rel}/{name}", "reason": why} for name, why in others]


def class_folders(train: str, names: Dict[str, str], rel: str = TRAIN):
    """The class folders of train/ (sorted) -> their image names, and the rows of what is not
    used (`rel` is train/ relative to SRC). Each folder must be a wnid (n + 8 digits) or be
    listed in LOC_synset_mapping.txt, and hold at least one image. Any other folder would
    silently become a class and move the index of every class after it, so it is refused
    (ScanError, one line), as is an entry named like a class that is not a readable folder."""
    top = list_folder(train)
    if not top.folders:
        raise ScanError(f"{train}: no class folders (expected train/<wnid>/*.JPEG)")
    for name, why in top.others:
        if WNID.fullmatch(name) or name in names:
            raise ScanError(f"{os.path.join(train, name)}: named like a class folder, but {why}; fix or remove it")
    skipped = _rows(TRAIN, rel, [(n, "not in a class folder") for n in top.images] + top.others)
    images = {}
    for f in top.folders:
        path = os.path.join(train, f)
        if not (WNID.fullmatch(f) or f in names):
            raise ScanError(f"{path}: not a class folder (not a wnid like n01440764, nor listed in "
                            "LOC_synset_mapping.txt); move it out of train/ or list it")
        listing = list_folder(path)
        images[f] = listing.images
        if not images[f]:
            raise ScanError(f"{path}: a class folder with no image files; remove it or add its images "
                            "(an empty class would shift the index of every class after it)")
        skipped += _rows(TRAIN, f"{rel}/{f}", _inner(listing))
    return images, skipped


def _inner(listing: Listing):
    """What of a class folder's entries is not used: folders inside it, then the others."""
    return [(d, "a folder inside a class folder (its files are not read)") for d in listing.folders] + \
        listing.others


def find_root(src: str) -> Tuple[str, str]:
    """(folder holding train/ and val/, its path relative to SRC: '' or the Kaggle nesting)."""
    if not os.path.isdir(src):
        raise ScanError(f"{src}: no such folder")
    for rel in ("", KAGGLE_ROOT):
        if os.path.isdir(os.path.join(src, rel, TRAIN)):
            return os.path.join(src, rel), rel
    raise ScanError(f"{src}: no train/ folder (expected the ILSVRC-2012 layout SRC/train/<wnid>/*.JPEG)")


def _text_of(path: str) -> str:
    """The text of an input file; a ScanError naming it when it is not UTF-8 (OSError passes on:
    preprocess.run names its file)."""
    try:
        return read_text(path)
    except UnicodeDecodeError as e:
        raise ScanError(f"{describe(e, path)}; save it as UTF-8") from None


def read_names(src: str) -> Dict[str, str]:
    path = os.path.join(src, "LOC_synset_mapping.txt")
    names = {}
    if os.path.exists(path):
        for line in _text_of(path).splitlines():
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
        reader = csv.DictReader(io.StringIO(_text_of(path), newline=""))
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
    except csv.Error as e:
        raise ScanError(f"{path}: not a readable CSV ({e})") from None
    if not labels:
        raise ScanError(f"{path}: no row has an ImageId and a PredictionString wnid")
    return labels


def scan(src: str, splits=SPLITS) -> Source:
    """The classes (from train/) and the items of each requested split present in SRC, and what
    their folders hold that is not used (`Source.skipped`)."""
    src = os.path.abspath(src)
    data, rel = find_root(src)
    prefix = f"{rel.replace(os.sep, '/')}/" if rel else ""
    names = read_names(src)
    train_images, skipped = class_folders(os.path.join(data, TRAIN), names, f"{prefix}{TRAIN}")
    wnids = list(train_images)
    source = Source(root=src, wnids=wnids, names=names)
    index = {w: i for i, w in enumerate(wnids)}
    if TRAIN in splits:
        # class_folders guarantees at least one image per class
        source.splits[TRAIN] = [Item(f"{prefix}{TRAIN}/{w}/{name}", index[w], w) for w in wnids
                                for name in train_images[w]]
        source.skipped[TRAIN] = skipped
    if VAL in splits and os.path.isdir(os.path.join(data, VAL)):
        items, source.skipped[VAL] = _scan_val(src, data, prefix, index)
        if items:
            source.splits[VAL] = items
    return source


def _scan_val(src: str, data: str, prefix: str, index: Dict[str, int]) -> Tuple[List[Item], List[dict]]:
    val = os.path.join(data, VAL)
    top = list_folder(val)
    rel = f"{prefix}{VAL}"
    items, skipped = [], _rows(VAL, rel, top.others)
    for w in top.folders:  # class folders
        listing = list_folder(os.path.join(val, w))
        skipped += _rows(VAL, f"{rel}/{w}", _inner(listing))
        for name in listing.images:
            label = index.get(w, -1)
            problem = "" if label >= 0 else f"class folder {w} is not a training class"
            items.append(Item(f"{rel}/{w}/{name}", label, w, problem))
    if top.images:
        solution = _solution_for(src, data)
        if solution is None:
            raise ScanError(
                f"{val} holds images but no LOC_val_solution.csv was found next to it "
                "(needed for their labels); use --split train to skip validation"
            )
        for name in top.images:
            w = solution.get(os.path.splitext(name)[0])
            label = index.get(w, -1) if w else -1
            problem = ""
            if w is None:
                problem = "no label in LOC_val_solution.csv"
            elif label < 0:
                problem = f"LOC_val_solution.csv labels it {w}, not a training class"
            items.append(Item(f"{rel}/{name}", label, w or "", problem))
    return sorted(items, key=lambda it: it.path), skipped


def _solution_for(src: str, data: str) -> Optional[Dict[str, str]]:
    for folder in (src, data):
        if os.path.exists(os.path.join(folder, "LOC_val_solution.csv")):
            return read_val_solution(folder)
    return None
