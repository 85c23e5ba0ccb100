"""Writing a file so that a reader sees the old content or the new one, never half of either
(docs/DESIGN.md, "Atomic writes"): every stage writes through `atomic_write`."""
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
