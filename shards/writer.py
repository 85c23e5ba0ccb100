"""Write one WebDataset tar shard and its DALI index in a single pass.

The index (`.idx`, the format of DALI's `wds2idx`, version v1.2) is built from the real byte
offsets of the members as they are written: one line `v1.2 N`, then per sample
`ext offset size name` for each member, offsets pointing at the data (after the 512-byte header).
Both files are written under temporary names and renamed when complete: the `.idx` first, then
the `.tar`, so a `.tar` on disk with its final name is always a complete shard.
"""
import hashlib
import io
import json
import os
import tarfile

from shards.files import atomic_write, naming

INDEX_VERSION = "v1.2"
MEMBER_EXTS = ("jpg", "cls", "json")  # the three members of every sample, in tar order


def shard_stem(split: str, number: int) -> str:
    """`train-000042`: the shared stem of a shard's `.tar` and `.idx`."""
    return f"{split}-{number:06d}"


def shard_number(filename: str) -> int:
    """The inverse of `shard_stem`: 42 for `train-000042.tar` (or `.idx`)."""
    return int(os.path.splitext(os.path.basename(filename))[0].rsplit("-", 1)[1])


def sample_key(split: str, position: int) -> str:
    """A dot-free key that sorts in write order, e.g. `train_00001234`."""
    return f"{split}_{position:08d}"


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes (sha256) and counts every byte passing through."""

    def __init__(self, path):
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.position = 0

    def writable(self):
        return True

    def write(self, b):
        self._f.write(b)
        self.sha256.update(b)
        self.position += len(b)
        return len(b)

    def tell(self):
        return self.position

    def close(self):
        try:
            if not self._f.closed:
                try:
                    self._f.flush()
                    os.fsync(self._f.fileno())
                finally:
                    self._f.close()  # the descriptor is released even when the disk refused the flush
        finally:
            super().close()


class ShardWriter:
    """Writes samples (`KEY.jpg`, `KEY.cls`, `KEY.json`) to `DIR/STEM.tar` plus `DIR/STEM.idx`.

    Byte-deterministic: fixed mtime, owner and mode, so the same samples give the same bytes.

    >>> with ShardWriter("out", "train-000000") as w:
    ...     w.write("train_00000000", jpeg_bytes, 3, {"src": "train/n01/x.JPEG"})
    >>> w.info  # ShardInfo(tar="train-000000.tar", index="train-000000.idx", samples=1, sha256=...)
    """

    def __init__(self, directory, stem):
        self.directory = str(directory)
        self.stem = stem
        self.tar_path = os.path.join(self.directory, stem + ".tar")
        self.idx_path = os.path.join(self.directory, stem + ".idx")
        # The tar is streamed sample by sample over the shard's whole life, not produced by one
        # `write(f)` call, so shards.files.atomic_write does not fit it: it gets the same
        # temporary name (.tmp), fsync (`_HashingFile.close`) and rename, here.
        self._tmp_tar = self.tar_path + ".tmp"
        self._file = _HashingFile(self._tmp_tar)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index_lines = []
        self.samples = 0
        self.info = None

    def write(self, key: str, jpeg: bytes, label: int, meta: dict) -> None:
        """Append one sample: `KEY.jpg` (the bytes as given), `KEY.cls` and `KEY.json` (`meta`
        plus its label)."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        meta = dict(meta, label=int(label))
        payloads = (jpeg, str(int(label)).encode(), json.dumps(meta, sort_keys=True).encode())
        fields = []
        with naming(self._tmp_tar):  # a full disk names no file
            for ext, data in zip(MEMBER_EXTS, payloads):
                name = f"{key}.{ext}"
                offset = self._add(name, data)
                fields.append(f"{ext} {offset} {len(data)} {name}")
        self._index_lines.append(" ".join(fields))
        self.samples += 1

    def _add(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar = self._tar
        header = info.tobuf(tar.format, tar.encoding, tar.errors)
        offset = tar.offset + len(header)  # data starts right after the header blocks
        # What TarFile.addfile writes (header, data, NUL padding to a block), without building
        # the header a second time: ~2x faster per sample, the same bytes.
        blocks, rest = divmod(len(data), tarfile.BLOCKSIZE)
        tar.fileobj.write(header + data + (tarfile.NUL * (tarfile.BLOCKSIZE - rest) if rest else b""))
        tar.offset = offset + (blocks + (1 if rest else 0)) * tarfile.BLOCKSIZE
        return offset

    def close(self):
        """Finish both files and move them to their final names; returns the ShardInfo."""
        from shards.manifest import ShardInfo

        if self.info is not None:
            return self.info
        if self.samples == 0:
            self.abort()
            raise ValueError(f"shard {self.stem} has no samples")
        try:
            with naming(self._tmp_tar):
                self._tar.close()
                self._file.close()
            index = f"{INDEX_VERSION} {self.samples}\n" + "\n".join(self._index_lines) + "\n"
            with naming(self.idx_path):
                atomic_write(self.idx_path, lambda f: f.write(index), mode="w")
            os.replace(self._tmp_tar, self.tar_path)
        except BaseException:  # the disk refused the end of it: no temporary stays
            self.abort()
            raise
        self.info = ShardInfo(
            tar=os.path.basename(self.tar_path),
            index=os.path.basename(self.idx_path),
            samples=self.samples,
            sha256=self._file.sha256.hexdigest(),
        )
        return self.info

    def abort(self):
        """Drop the unfinished shard (also when the disk refuses its last bytes)."""
        for close in (self._tar.close, self._file.close):
            try:
                close()
            except Exception:  # the error that made us abort is the one to report
                pass
        if os.path.exists(self._tmp_tar):
            os.remove(self._tmp_tar)  # the index's temporary is atomic_write's to remove

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def file_sha256(path, chunk=1 << 20) -> str:
    """The sha256 (hex) of a file, as the manifest records it for each tar."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_index(path):
    """Parse a DALI `.idx` file (a path, or an `s3://` URL: shards.store): a list of samples,
    each a list of (ext, offset, size, name)."""
    from shards.store import store_of

    store, name = store_of(path)
    return parse_index(store.read_bytes(name).decode(), path)


def parse_index(text: str, path):
    """`read_index` of a DALI index's text; ValueError naming `path` when it is not one."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION:
        raise ValueError(f"{path}: not a DALI {INDEX_VERSION} index (first line {' '.join(head)!r})")
    samples = []
    for line in lines[1:]:
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ValueError(f"{path}: malformed line {line.strip()!r}")
        samples.append(
            [(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)]
        )
    if int(head[1]) != len(samples):
        raise ValueError(f"{path}: header says {head[1]} samples, found {len(samples)}")
    return samples
