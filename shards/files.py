"""Files every stage writes the same way (docs/DESIGN.md, "Atomic writes"): `atomic_write`, so a
reader sees the old content or the new one, never half of either; `exclusive`, one writer per
folder."""
import contextlib
import fcntl
import json
import os


def atomic_write(path, write, mode: str = "wb", fsync: bool = True) -> str:
    """Call `write(f)` on `path + '.tmp'` opened in `mode`, flush and fsync it, then rename it to
    `path`. A crash leaves `path` as it was (and perhaps a `.tmp`, which the next write replaces).
    Returns `path`."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_json(path, obj, indent=1) -> str:
    """`obj` as JSON (a trailing newline) at `path`, atomically."""
    def write(f):
        json.dump(obj, f, indent=indent)
        f.write("\n")

    return atomic_write(path, write, mode="w")


LOCK = ".lock"


class Busy(OSError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def exclusive(folder, what: str):
    """Hold `folder/.lock` while the block runs, so that a second process writing the same folder
    (a second `alexnet preprocess` into one OUT, a second `alexnet train` on one run directory)
    stops at once instead of both writing the same files. `what` names the holder in the message
    (e.g. "alexnet train"). The lock is the kernel's (flock): a process killed with -9 leaves no
    stale lock, only the file. Raises Busy (naming the holder's pid) or OSError (unwritable)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"{folder} is in use by another {what} (pid {holder}); wait for it to finish or choose "
                       "another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.remove(path)  # before the unlock: a later run makes a new one
    finally:
        os.close(fd)


def read_text(path, encoding: str = "utf-8-sig") -> str:
    """The whole of a text file, decoded at once, so that a UnicodeDecodeError's offset is the
    file's own (a text-mode read decodes in chunks). A UTF-8 byte-order mark is dropped."""
    with open(path, "rb") as f:
        return f.read().decode(encoding)


def read_json(path):
    """The JSON value in `path` (OSError, UnicodeDecodeError or json.JSONDecodeError otherwise;
    shards.errors.one_line turns each into one line naming the file)."""
    return json.loads(read_text(path))


def parse_json(data: bytes):
    """`read_json` of a file's bytes read elsewhere (e.g. from S3, shards.store)."""
    return json.loads(data.decode("utf-8-sig"))


@contextlib.contextmanager
def naming(path):
    """An OSError leaving the block without a file name gets `path` (a write that the disk
    refuses names no file), so that its one-line error says which file."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = os.fspath(path)
        raise
