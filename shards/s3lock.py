"""One `alexnet upload` per S3 prefix (docs/DESIGN.md, "Shard directory"; docs/FAULTS.md).

Two uploads of different shard directories into one prefix would interleave their objects and
both end with "manifest last". The lock is an object, `prefix/.lock`, created only if absent
(a conditional PUT, `If-None-Match: *`, which S3 decides atomically), holding the holder's host,
pid, start time and a token. It is deleted when the upload ends, whatever the outcome.

A lock left by an upload killed with -9 is taken over by a rerun on the same host whose holder's
pid is no longer running (a PUT with `If-Match` on the stale lock's ETag, so two reruns cannot
both take it), so kill -9 and a rerun still resume. Any other holder (a live process, or
another host, whose processes cannot be seen from here) is one line, exit 2, naming it and the
object to delete once it is known to be gone.

Stores that ignore conditional PUTs (older MinIO or Ceph releases) make this lock advisory only.
"""
import contextlib
import datetime
import json
import os
import socket
import uuid

from shards.errors import UserError

LOCK = ".lock"


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex}


def _running(pid) -> bool:
    """Whether process `pid` of this host is alive (one of another user's counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _parse(data: bytes) -> dict:
    try:
        held = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return held if isinstance(held, dict) else {}


def _stale(held: dict) -> bool:
    """A lock of this host whose process is gone (killed with -9, or the machine restarted)."""
    return held.get("host") == socket.gethostname() and "pid" in held and not _running(held["pid"])


def _refuse(store, held: dict):
    who = (f"host {held.get('host', '?')}, pid {held.get('pid', '?')}, since {held.get('time', '?')}"
           if held else "unreadable holder")
    raise UserError(f"{store.url(LOCK)}: another alexnet upload is writing {store.location} ({who}); wait for it "
                    f"to finish, or delete {store.url(LOCK)} once that upload is known to be gone")


def acquire(store, what: str = "") -> tuple:
    """Take `store`'s lock: (the holder record written, its ETag). UserError when another holds it."""
    me = dict(_holder(), source=what)
    body = json.dumps(me).encode()
    for _ in range(3):  # a lock released or taken over between our requests: look again
        etag = store.put_if(LOCK, body)
        if etag is not None:
            return me, etag
        found = store.read_tagged(LOCK)
        if found is None:
            continue  # released meanwhile
        data, stale_etag = found
        held = _parse(data)
        if not _stale(held):
            _refuse(store, held)
        etag = store.put_if(LOCK, body, etag=stale_etag)  # only if nobody else took it over first
        if etag is not None:
            return me, etag
    _refuse(store, _parse((store.read_tagged(LOCK) or (b"", None))[0]))


def release(store, me: dict) -> None:
    """Delete the lock if it is still `me`'s."""
    found = store.read_tagged(LOCK)
    if found is not None and _parse(found[0]).get("token") == me["token"]:
        store.delete(LOCK)


@contextlib.contextmanager
def upload_lock(store, source: str = ""):
    """Hold `store`'s (an S3Store's) lock while the block runs; `source` is recorded in it."""
    me, _ = acquire(store, os.path.abspath(source) if source else "")
    try:
        yield me
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the upload is the one to say
            release(store, me)
        raise
    release(store, me)
