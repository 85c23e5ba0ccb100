"""Shard directories on S3 against a real server on loopback (`moto_server`, tests/s3kit.py):
reading s3://bucket/prefix gives what reading the same directory from disk gives (the manifest,
the same batches in the same order, the same losses, the same verify and stats), `alexnet upload`
writes the manifest last and a rerun sends only what is missing, and what goes wrong on the wire
is one line naming the URL (exit 2 for a wrong address or credentials, 1 for damage)."""
import hashlib
import json
import os
import shutil

import boto3  # noqa: F401 (the [dev] extra: an ImportError here, never a silent skip; `make test` checks it)
import moto.server  # noqa: F401
import pytest

from s3kit import s3_fixtures
from samplekit import cli, one_line_error
from shardkit import make_shards
from shards import Manifest
from shards.errors import Damage, UserError
from shards.store import SHA256_KEY, open_store
from shards.upload import upload_shard_dir


server, aws_env, local, remote = s3_fixtures("imagenet/v1",
                                             server=dict(relay=True), n_train=32, n_val=12, classes=8, shard_size=12, seed=1)


def objects(server, prefix):
    """{key below prefix: (bytes, metadata)} of every object under `prefix`."""
    c = server.client()
    out = {}
    for obj in c.list_objects_v2(Bucket="shards", Prefix=prefix + "/").get("Contents", []):
        got = c.get_object(Bucket="shards", Key=obj["Key"])
        out[obj["Key"][len(prefix) + 1:]] = (got["Body"].read(), got["Metadata"])
    return out


def copy_prefix(server, src, dst, skip=()):
    c = server.client()
    for key, (data, meta) in objects(server, src).items():
        if key not in skip:
            c.put_object(Bucket="shards", Key=f"{dst}/{key}", Body=data, Metadata=meta)
    return f"s3://shards/{dst}"


# --- reading: the same as from disk -----------------------------------------------------------

def test_click_keeps_s3_urls():
    import click
    from click.testing import CliRunner

    @click.command()
    @click.argument("out", type=click.Path(file_okay=False))
    def show(out):
        click.echo(out)

    for url in ("s3://shards/imagenet/v1", "s3://shards/imagenet/v1/", "s3://b"):
        assert CliRunner().invoke(show, [url]).output == url + "\n"


def test_the_manifest_from_s3_is_the_manifest_on_disk(local, remote):
    assert Manifest.load(remote) == Manifest.load(local)
    assert Manifest.load(remote + "/") == Manifest.load(local)
    tars = Manifest.load(remote).shard_paths(remote, "train")
    assert tars[0] == (f"{remote}/train-000000.tar", f"{remote}/train-000000.idx")


def test_upload_stores_each_sha256_and_is_byte_identical(server, local, remote):
    got = objects(server, "imagenet/v1")
    want = sorted(f for f in os.listdir(local) if not f.startswith("."))
    assert sorted(got) == want
    for name, (data, meta) in got.items():
        assert data == open(os.path.join(local, name), "rb").read(), name
        assert meta == {SHA256_KEY: hashlib.sha256(data).hexdigest()}


def test_the_same_batches_in_the_same_order(local, remote):
    import torch

    from pipeline import build_loader

    for split, kw in (("train", {"seed": 3}), ("val", {})):
        loaders = [build_loader(d, split, 8, num_threads=1, **kw) for d in (local, remote)]
        try:
            for epoch in (0, 1) if split == "train" else (0,):
                for loader in loaders:
                    loader.set_epoch(epoch)
                a, b = (list(loader) for loader in loaders)
                assert len(a) == len(b) == len(loaders[0]) > 0
                for (xa, ya), (xb, yb) in zip(a, b):
                    assert torch.equal(ya, yb) and torch.equal(xa, xb)
        finally:
            for loader in loaders:
                loader.close()


def test_the_reference_loader_reads_s3_too(local, remote):
    import torch

    from pipeline import build_reference_loader

    a, b = (list(build_reference_loader(d, "val", 8, num_workers=0)) for d in (local, remote))
    assert len(a) == len(b) == 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_the_same_losses_for_the_same_seed(local, remote, tmp_path):
    from trainkit import metric_rows, train_run

    for name, shards in (("disk", local), ("s3", remote)):
        train_run(shards, tmp_path / name, max_steps=2, seed=5)
    rows = {name: [r for r in metric_rows(tmp_path / name) if "loss" in r and "top1_error" not in r]
            for name in ("disk", "s3")}
    assert [r["step"] for r in rows["s3"]] == [1, 2]
    assert [r["loss"] for r in rows["s3"]] == [r["loss"] for r in rows["disk"]]


def test_verify_and_stats_say_the_same(local, remote):
    for args in (["verify"], ["stats"], ["stats", "--json"]):
        a, b = cli(*args, local), cli(*args, remote)
        assert a.exit_code == b.exit_code == 0, (a.output, b.output)
        assert b.stdout == a.stdout.replace(local, remote)
    assert cli("verify", remote).stdout.startswith(f"ok: {remote}: 4 shards, 44 samples")


# --- writing: complete objects, the manifest last, a rerun sends only what is missing ---------

def test_a_rerun_uploads_nothing(local, remote):
    r = upload_shard_dir(local, remote)
    assert r.uploaded == [] and len(r.kept) == len(os.listdir(local))


def test_an_interrupted_upload_resumes_to_the_same_objects(server, local):
    class Killed(BaseException):
        pass

    seen = []

    def die_after_three(done, total):
        seen.append(done)
        if len(seen) == 3:
            raise Killed

    with pytest.raises(Killed):
        upload_shard_dir(local, "s3://shards/resumed", jobs=1, progress=die_after_three)
    partial = objects(server, "resumed")
    assert 3 <= len(partial) < len(os.listdir(local)) - 1 and "manifest.json" not in partial  # no directory yet
    one_line_error(cli("stats", "s3://shards/resumed"), 2, ["s3://shards/resumed/manifest.json", "no manifest"])
    r = upload_shard_dir(local, "s3://shards/resumed")
    assert sorted(r.kept) == sorted(partial) and sorted(r.uploaded + r.kept) == sorted(os.listdir(local))
    assert objects(server, "resumed") == objects(server, "imagenet/v1")


def test_a_changed_directory_hides_its_manifest_while_it_is_rewritten(server, local, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_shards(other, n_train=32, n_val=12, classes=8, shard_size=12, seed=2)
    url = copy_prefix(server, "imagenet/v1", "changed")
    store = open_store(url)
    manifests = []
    upload_shard_dir(other, url, progress=lambda done, total: manifests.append(store.exists("manifest.json")))
    assert manifests[:-1] == [False] * (len(manifests) - 1) and store.exists("manifest.json")
    assert Manifest.load(url) == Manifest.load(other)
    assert cli("verify", url).exit_code == 0


def test_upload_refuses_a_damaged_shard_and_a_local_destination(server, local, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(local, damaged)
    tar = damaged / "val-000000.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF  # same size, other bytes
    tar.write_bytes(bytes(data))
    with pytest.raises(Damage, match="val-000000.tar: sha256 differs from the manifest"):
        upload_shard_dir(damaged, "s3://shards/damaged")
    assert "manifest.json" not in objects(server, "damaged")
    line = one_line_error(cli("upload", local, str(tmp_path / "elsewhere")), 2, ["not an s3:// URL"])
    assert "s3://bucket/prefix" in line


def test_upload_command(local, server):
    result = cli("upload", local, "s3://shards/by-cli")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("upload: s3://shards/by-cli: 12 objects, 12 uploaded")
    assert objects(server, "by-cli") == objects(server, "imagenet/v1")


# --- faults on the wire: one line naming the URL ---------------------------------------------

def test_a_missing_bucket_or_prefix(remote, tmp_path):
    one_line_error(cli("stats", "s3://no-such-bucket/x"), 2, ["s3://no-such-bucket: no such bucket",
                                                             "AWS_ENDPOINT_URL"])
    one_line_error(cli("verify", "s3://shards/nothing/here"), 2, ["s3://shards/nothing/here/manifest.json",
                                                                  "no manifest"])
    one_line_error(cli("train", "s3://no-such-bucket/x", "--out", str(tmp_path / "unused-run")), 2, ["no such bucket"])


@pytest.mark.parametrize("var, value, code", [("AWS_SECRET_ACCESS_KEY", "wrong", "SignatureDoesNotMatch"),
                                              ("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0", "InvalidAccessKeyId")])
def test_wrong_credentials(remote, monkeypatch, var, value, code):
    monkeypatch.setenv(var, value)
    for command in ("stats", "verify"):
        line = one_line_error(cli(command, remote), 2, [remote, "access denied", "AWS_ACCESS_KEY_ID"])
        assert code in line or "403" in line


def test_no_credentials(remote, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    one_line_error(cli("stats", remote), 2, [remote, "no AWS credentials found"])


def test_an_unreachable_endpoint(remote, monkeypatch, tmp_path):
    from s3kit import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    one_line_error(cli("stats", remote), 2, [remote, "cannot reach the S3 endpoint", "AWS_ENDPOINT_URL"])
    one_line_error(cli("eval", remote, str(tmp_path / "none.pt")), 2, ["cannot reach the S3 endpoint"])


def test_a_truncated_object(server, remote):
    url = copy_prefix(server, "imagenet/v1", "truncated")
    tar = open_store(url).read_bytes("train-000001.tar")
    server.client().put_object(Bucket="shards", Key="truncated/train-000001.tar", Body=tar[: len(tar) // 2])
    result = cli("verify", url)
    assert result.exit_code == 1 and "train-000001.tar: sha256 differs" in result.stdout
    with pytest.raises(Damage, match=f"^{url}/train-000001.tar: truncated"):
        from pipeline import build_loader

        build_loader(url, "train", 8)


def test_an_object_missing_from_the_directory(server, remote):
    url = copy_prefix(server, "imagenet/v1", "missing", skip={"val-000000.idx"})
    result = cli("verify", url)
    assert result.exit_code == 1 and "val-000000.idx: missing" in result.stdout
    with pytest.raises(Damage, match=f"^{url}/val-000000.idx: missing from the shard directory"):
        from pipeline import build_loader

        build_loader(url, "val", 4)


def test_errors_during_an_epoch_are_one_line(server, remote, tmp_path):
    """What changes after the loader was built reaches the shard cache's download (pipeline.cache):
    an object gone is damage (exit 1), the store gone a usage error (exit 2), each one line."""
    from pipeline import build_loader

    url = copy_prefix(server, "imagenet/v1", "vanishing")
    loader = build_loader(url, "val", 4, num_threads=1, cache_dir=str(tmp_path / "a"))  # an empty cache
    server.client().delete_object(Bucket="shards", Key="vanishing/val-000000.tar")
    with pytest.raises(Damage) as e:
        list(loader)
    assert str(e.value).startswith(f"{url}/val-000000.tar: missing") and "\n" not in str(e.value)

    loader = build_loader(remote, "val", 4, num_threads=1, cache_dir=str(tmp_path / "b"))
    with server.relay.cut(), pytest.raises(UserError) as e:  # the store goes away
        list(loader)
    assert type(e.value) is UserError and "cannot reach the S3 endpoint" in str(e.value) and "\n" not in str(e.value)


def test_training_stops_cleanly_and_keeps_its_last_checkpoint(server, remote, tmp_path, monkeypatch):
    from s3kit import free_port

    run = tmp_path / "run"
    result = cli("train", remote, "--out", run, "--width", "0.125", "--init", "kaiming", "--batch-size", "8",
                 "--device", "cpu", "--epochs", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    last = (run / "last.pt").read_bytes()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    line = one_line_error(cli("train", remote, "--out", run, "--resume", "--epochs", "2"), 2,
                          [remote, "cannot reach the S3 endpoint"])
    assert "Traceback" not in line and (run / "last.pt").read_bytes() == last


def test_training_outlives_the_store_once_its_shards_are_cached(server, remote, tmp_path, monkeypatch):
    """The store goes away after the first epoch's checkpoint: the second epoch's slice was
    downloaded and verified during the first (pipeline.cache), so training ends as it would
    have, from the local copies (a store gone before a slice is local: one line, exit 2, in
    test_training_stops_cleanly_and_keeps_its_last_checkpoint and tests/test_cache.py)."""
    import train.trainer
    from trainkit import SMALL
    from train.config import TrainConfig

    run = tmp_path / "run"
    cfg = TrainConfig(shards=remote, out=str(run), **{**SMALL, "epochs": 2, "num_threads": 1})
    t = train.trainer.Trainer(cfg, progress=False)
    real_save, cut, cut_entered = t.save, server.relay.cut(), []

    def save_then_lose_the_store(*a, **kw):
        path = real_save(*a, **kw)
        if not cut_entered:
            cut.__enter__()
            cut_entered.append(True)
        return path

    monkeypatch.setattr(t, "save", save_then_lose_the_store)
    try:
        t.fit()
    finally:
        cut.__exit__(None, None, None)
        t.close()
    assert cut_entered and t.epoch == 2  # both epochs trained, the second with the store gone
    state = __import__("torch").load(run / "last.pt", weights_only=False)
    assert state["step"] == 8
    assert json.loads((run / "config.json").read_text())["shards"] == remote


def test_credentials_and_endpoint_from_a_profile(server, remote, tmp_path):
    """The AWS SDKs' own configuration, nothing of ours: a profile in the shared files gives boto3
    and DALI (in a fresh process: DALI reads its configuration once per process) the keys, the
    region and the endpoint."""
    import subprocess
    import sys

    e = server.env
    (tmp_path / "credentials").write_text(f"[lab]\naws_access_key_id = {e['AWS_ACCESS_KEY_ID']}\n"
                                          f"aws_secret_access_key = {e['AWS_SECRET_ACCESS_KEY']}\n")
    (tmp_path / "config").write_text(f"[profile lab]\nregion = us-east-1\nendpoint_url = {e['AWS_ENDPOINT_URL']}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_PROFILE="lab", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
               AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_EC2_METADATA_DISABLED="true")
    code = ("from pipeline import build_loader; from shards import Manifest; "
            f"print(Manifest.load({remote!r}).split('val').samples, "
            f"sum(len(y) for _, y in build_loader({remote!r}, 'val', 4, num_threads=1)))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["12", "12"], r.stderr[-2000:]
