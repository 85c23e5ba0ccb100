"""The errors every stage's commands raise, at the bottom of the tree so that no stage imports
the entry point (docs/DESIGN.md, "Layers").

Exit codes (docs/DESIGN.md, "Errors"): 2 for a usage mistake or bad input (`UserError`, and
click's own `UsageError`/`BadParameter`), 1 for damage found (`Damage`, or a plain
`click.ClickException`). Either is one line on stderr, never a traceback.
"""
import click


class UserError(click.ClickException):
    """A user mistake (missing folder, bad option value, bad input file): one line, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"alexnet: error: {self.format_message()}", err=True)


class Damage(UserError):
    """Damage found in data the user already has (a shard that fails its hash, a manifest that
    disagrees with its shards): one line, exit code 1."""

    exit_code = 1


# --- one line for what goes wrong with a file (one path for every stage: docs/DESIGN.md, "Errors")


def printable(path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (os.fsdecode's
    surrogates, or a bytes path) as \\xNN."""
    import os

    return os.fsencode(path).decode("utf-8", "backslashreplace")


def describe(e: BaseException, path=None) -> str:
    """`FILE: what went wrong` for an error met reading or writing a file: an OSError names its
    own file (else `path`: a write to a full disk names none), a UnicodeDecodeError its byte and
    offset, a JSON error its line and column."""
    import json
    import os

    where = path
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else path
        what = e.strerror or str(e) or type(e).__name__
    elif isinstance(e, UnicodeDecodeError):
        what = f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
    elif isinstance(e, json.JSONDecodeError):
        what = f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
    else:
        what = str(e) or type(e).__name__
    if where is None:
        return what
    return f"{printable(where) if isinstance(where, (str, bytes, os.PathLike)) else where}: {what}"


def refused_by_disk(e: BaseException) -> bool:
    """Whether `e` is a disk refusing data that was fine (full, over quota, a file too large, an
    I/O error): damage to the run (exit 1), not a mistake of the user's (exit 2)."""
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def file_error(e: BaseException, path=None, hint: str = "") -> UserError:
    """`describe(e, path)`, then `hint` (what to do), as one line: Damage (exit 1) when the disk
    refused data (`refused_by_disk`), else UserError (exit 2)."""
    cls = Damage if refused_by_disk(e) else UserError
    return cls(describe(e, path) + (f"; {hint}" if hint else ""))


def one_line(path=None, hint: str = ""):
    """A context manager: an OSError, UnicodeDecodeError or JSON error leaving the block becomes
    `file_error(e, path, hint)`, one line naming the file instead of a traceback. This project's
    own errors (click exceptions) pass through as they are.

    >>> with one_line(out, "finished shards are kept; run the same command again"):
    ...     write_everything(out)
    """
    import contextlib
    import json

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise file_error(e, path, hint) from None

    return guard()
