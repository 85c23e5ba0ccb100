"""The fault suite for S3 addresses and `alexnet upload` (docs/FAULTS.md): an `s3://` URL that two
readers would resolve differently is refused by every command before any request, and two
uploads never both succeed over one prefix (its lock object, shards.s3lock)."""
import json
import os
import socket
import subprocess
import threading

import boto3  # noqa: F401 (the [dev] extra: an ImportError here, never a silent skip)
import pytest

from s3kit import S3Server, use_only
from samplekit import cli, one_line_error
from shardkit import make_shards, overwrite

BAD_URLS = {  # the URL, and the words of its one line
    "a .. segment": ("s3://bkt/a/../p2", "'..' segment"),
    "a leading ..": ("s3://bkt/../x", "'..' segment"),
    "a . segment": ("s3://bkt/a/./p", "'.' segment"),
    "an empty segment": ("s3://bkt/a//p", "empty segment"),
    "a newline": ("s3://bkt/a\nb", "control character"),
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = tmp_path_factory.mktemp("local") / "shards"
    d.mkdir()
    make_shards(d, n_train=8, n_val=4, classes=4, shard_size=4, seed=1)
    return d


@pytest.fixture
def nowhere(monkeypatch):
    """An endpoint where nothing listens: a command that sent any request would say so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    use_only({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
              "AWS_DEFAULT_REGION": "us-east-1"}, monkeypatch)


@pytest.mark.parametrize("case", sorted(BAD_URLS))
def test_an_ambiguous_s3_url_is_refused_by_every_command_before_any_request(local, tmp_path, nowhere, case):
    url, says = BAD_URLS[case]
    shown = url.encode("unicode_escape").decode()
    commands = {
        "upload": ["upload", local, url],
        "verify": ["verify", url],
        "stats": ["stats", url],
        "train": ["train", url, "--out", tmp_path / "run", "--device", "cpu"],
        "eval": ["eval", url, tmp_path / "best.pt", "--device", "cpu"],
        "figures": ["figures", url, tmp_path / "best.pt", "--out", tmp_path / "figs", "--device", "cpu"],
        "profile": ["profile", url, "--device", "cpu"],
    }
    for name, args in commands.items():
        line = one_line_error(cli(*args), 2, [shown, says])
        assert "cannot reach" not in line, (name, line)
    assert os.listdir(tmp_path) == []  # no run directory, no figures folder


# --- the upload lock, against a real server on loopback ----------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with S3Server(log_path=str(tmp_path_factory.mktemp("moto") / "moto.log"), auth=False) as s3:
        s3.make_bucket("bkt")
        yield s3


@pytest.fixture
def aws_env(server, monkeypatch):
    use_only(server.env, monkeypatch)
    return server


def _keys(server, prefix):
    c = server.client()
    return sorted(o["Key"][len(prefix) + 1:] for o in c.list_objects_v2(Bucket="bkt", Prefix=prefix + "/")
                  .get("Contents", []))


def _hold(server, prefix, **holder):
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": "2026-12-03T10:00:00+00:00",
                       "token": "theirs", **holder}).encode()
    server.client().put_object(Bucket="bkt", Key=f"{prefix}/.lock", Body=body)


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_the_server_honours_conditional_puts(aws_env):
    """The lock rests on If-None-Match: * (and If-Match for a takeover): moto_server decides both."""
    from shards.store import S3Store

    store = S3Store("s3://bkt/cond")
    etag = store.put_if("x", b"1")
    assert etag is not None and store.put_if("x", b"2") is None
    assert store.put_if("x", b"3", etag='"not-its-etag"') is None
    assert store.put_if("x", b"4", etag=etag) is not None and store.read_tagged("x")[0] == b"4"


@pytest.mark.parametrize("holder", ["a live process here", "another host"])
def test_an_upload_into_a_prefix_another_upload_holds_is_one_line(aws_env, local, holder):
    prefix = "held-" + holder.split()[1]
    who = {"pid": os.getppid()} if holder == "a live process here" else {"host": "gpu-node-7", "pid": _dead_pid()}
    _hold(aws_env, prefix, **who)
    line = one_line_error(cli("upload", local, f"s3://bkt/{prefix}"), 2,
                          [f"s3://bkt/{prefix}/.lock", "another alexnet upload", f"pid {who['pid']}"])
    assert ("gpu-node-7" in line) == (holder == "another host")
    assert _keys(aws_env, prefix) == [".lock"]  # nothing sent, the lock left to its holder


def test_a_lock_left_by_a_killed_upload_on_this_host_is_taken_over(aws_env, local):
    """kill -9 leaves the lock object; the rerun on the same host sees its pid gone and resumes."""
    _hold(aws_env, "killed", pid=_dead_pid())
    r = cli("upload", local, "s3://bkt/killed")
    assert r.exit_code == 0, r.output
    assert ".lock" not in _keys(aws_env, "killed") and "manifest.json" in _keys(aws_env, "killed")
    assert cli("verify", "s3://bkt/killed").exit_code == 0


def test_two_uploads_at_once_never_both_succeed(aws_env, local, tmp_path, monkeypatch):
    """The issue's case: two shard directories into one prefix at once. The first holds the lock
    while it sends; the second is refused (exit 2) and the first's directory verifies."""
    from shards.store import S3Store
    from shards.upload import upload_shard_dir

    other = tmp_path / "other"
    other.mkdir()
    make_shards(other, n_train=8, n_val=4, classes=4, shard_size=4, seed=2)
    sending, go_on = threading.Event(), threading.Event()
    real_put = S3Store.put

    def slow_put(self, name, source, sha256=None):
        sending.set()
        go_on.wait(30)
        return real_put(self, name, source, sha256)

    monkeypatch.setattr(S3Store, "put", slow_put)
    first = {}
    t = threading.Thread(target=lambda: first.update(r=upload_shard_dir(str(local), "s3://bkt/both", jobs=1)))
    t.start()
    try:
        assert sending.wait(30)
        one_line_error(cli("upload", other, "s3://bkt/both"), 2, ["s3://bkt/both/.lock", "another alexnet upload"])
    finally:
        go_on.set()
        t.join(60)
    assert "r" in first and ".lock" not in _keys(aws_env, "both")
    assert cli("verify", "s3://bkt/both").exit_code == 0


def test_a_failed_upload_releases_its_lock(aws_env, local, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(local, damaged)
    overwrite(damaged / "train-000000.tar")  # size intact, sha256 not
    one_line_error(cli("upload", damaged, "s3://bkt/failed"), 1, ["sha256 differs"])
    assert ".lock" not in _keys(aws_env, "failed")


def test_train_compares_the_stored_sha256_of_s3_shards_with_the_manifest(aws_env, local):
    """Shards on S3 are not downloaded to be hashed: the sha256 `upload` stored with each object
    is compared with the manifest (an object replaced by other bytes is exit 1, naming it)."""
    import hashlib

    from shards import Manifest
    from shards.checksum import check_shard_hashes
    from shards.errors import Damage
    from shards.store import SHA256_KEY

    assert cli("upload", local, "s3://bkt/replaced").exit_code == 0
    m = Manifest.load("s3://bkt/replaced")
    assert check_shard_hashes("s3://bkt/replaced", m) == 0
    other = os.urandom(1000)
    aws_env.client().put_object(Bucket="bkt", Key="replaced/val-000000.tar", Body=other,
                                Metadata={SHA256_KEY: hashlib.sha256(other).hexdigest()})
    with pytest.raises(Damage, match="s3://bkt/replaced/val-000000.tar: its stored sha256 differs"):
        check_shard_hashes("s3://bkt/replaced", m)
