"""shards.store without a server: a local directory through the store's interface, S3 addresses,
and botocore's errors as one line naming the URL (tests/test_s3.py talks to a real server)."""
import sys

import pytest

from shards.errors import Damage, UserError
from shards.store import LocalStore, S3Store, is_s3_url, open_store, read_array, store_of


def test_open_store_tells_s3_from_a_folder(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    assert is_s3_url("s3://b/p") and not is_s3_url("s3.tar") and not is_s3_url(tmp_path)


@pytest.mark.parametrize("url, location, key", [
    ("s3://bucket/a/b", "s3://bucket/a/b", "a/b/x.tar"),
    ("s3://bucket/a/b/", "s3://bucket/a/b", "a/b/x.tar"),
    ("s3://bucket", "s3://bucket", "x.tar"),
    ("s3://bucket/", "s3://bucket", "x.tar"),
])
def test_s3_addresses(url, location, key):
    store = S3Store(url)
    assert (str(store), store.key("x.tar"), store.url("x.tar")) == (location, key, f"{location}/x.tar")
    assert store.bucket == "bucket"


def test_an_s3_url_needs_a_bucket():
    with pytest.raises(UserError, match="no bucket"):
        S3Store("s3:///prefix")


def test_local_store(tmp_path):
    store = LocalStore(str(tmp_path / "d"))
    assert not store.is_dir() and store.listing() == {}
    store.put("a.bin", b"hello")
    (tmp_path / "src").write_bytes(b"x" * 3000)
    store.put("b.bin", str(tmp_path / "src"))
    assert store.is_dir() and store.listing() == {"a.bin": 5, "b.bin": 3000}
    assert store.exists("a.bin") and not store.exists("c.bin") and store.size("b.bin") == 3000
    assert list(store.read_many(["b.bin", "a.bin"])) == [b"x" * 3000, b"hello"]
    with store.open("a.bin") as f:
        assert f.read() == b"hello"
    assert store.stored_sha256("a.bin") is None
    with pytest.raises(FileNotFoundError):
        store.read_bytes("c.bin")
    store.delete("a.bin")
    store.delete("a.bin")  # gone already: no error
    assert store.listing() == {"b.bin": 3000}
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["b.bin"]  # no .tmp left


def test_store_of_a_file(tmp_path):
    store, name = store_of(str(tmp_path / "x.tar"))
    assert (str(store), name) == (str(tmp_path), "x.tar")
    store, name = store_of("s3://bucket/a/b/x.tar")
    assert (str(store), name) == ("s3://bucket/a/b", "x.tar")


def test_read_array_refuses_pickles(tmp_path):
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int64).reshape(2, 3))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    store = LocalStore(str(tmp_path))
    assert read_array(store, "a.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        read_array(store, "o.npy")


def test_without_boto3_the_error_names_the_extra(monkeypatch):
    import shards.store

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    monkeypatch.setattr(shards.store, "_clients", {})
    with pytest.raises(UserError, match=r'^s3://bucket/p: reading or writing s3:// needs boto3; install it with '
                                        r'pip install "alexnet-imagenet\[s3\]"$'):
        open_store("s3://bucket/p").read_bytes("manifest.json")


# --- botocore's errors ------------------------------------------------------------------------

def _client_error(code, status, op="GetObject"):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


URL = "s3://bucket/p/manifest.json"
END = "http://127.0.0.1:9"


@pytest.fixture
def bx():
    """botocore's exceptions: boto3 is in the [dev] extra (`make test` checks it), never a silent skip."""
    import botocore.exceptions

    return botocore.exceptions


def test_no_such_bucket_names_the_bucket(bx):
    from shards.store import s3_error

    e = s3_error(_client_error("NoSuchBucket", 404), URL, END)
    assert type(e) is UserError and e.exit_code == 2
    assert str(e) == ("s3://bucket: no such bucket at http://127.0.0.1:9; check the address (and AWS_ENDPOINT_URL "
                      "for an S3-compatible store)")


@pytest.mark.parametrize("code, status", [("NoSuchKey", 404), ("404", 404)])
def test_a_missing_object_is_file_not_found(bx, code, status):
    from shards.store import s3_error

    e = s3_error(_client_error(code, status), URL, END)
    assert isinstance(e, FileNotFoundError) and e.filename == URL


@pytest.mark.parametrize("code, status", [("InvalidAccessKeyId", 403), ("SignatureDoesNotMatch", 403),
                                          ("AccessDenied", 403), ("403", 403), ("ExpiredToken", 400)])
def test_refused_credentials(bx, code, status):
    from shards.store import s3_error

    e = s3_error(_client_error(code, status), URL, END)
    assert type(e) is UserError and str(e).startswith(f"{URL}: access denied at {END} ({code})")
    assert "AWS_ACCESS_KEY_ID" in str(e) and "\n" not in str(e)


def test_no_credentials(bx):
    from shards.store import s3_error

    e = s3_error(bx.NoCredentialsError(), URL, END)
    assert type(e) is UserError and str(e).startswith(f"{URL}: no AWS credentials found; set AWS_ACCESS_KEY_ID")


def test_unreachable_endpoint(bx):
    from shards.store import s3_error

    e = s3_error(bx.EndpointConnectionError(endpoint_url=END), URL, END)
    assert type(e) is UserError and str(e).startswith(f"{URL}: cannot reach the S3 endpoint at {END} (")
    assert str(e).endswith("check AWS_ENDPOINT_URL and the network")
    e = s3_error(bx.ConnectTimeoutError(endpoint_url=END), URL, END)
    assert type(e) is UserError and "cannot reach" in str(e)


def test_a_transfer_cut_short_is_an_io_error(bx):
    from shards.store import s3_error

    e = s3_error(bx.IncompleteReadError(actual_bytes=10, expected_bytes=20), URL, END)
    assert isinstance(e, OSError) and not isinstance(e, (UserError, Damage)) and e.filename == URL


def test_other_errors_stay_one_line(bx):
    from shards.store import s3_error

    e = s3_error(_client_error("SlowDown", 503), URL, END)
    assert type(e) is UserError and str(e) == f"{URL}: S3 refused the request at {END} (SlowDown: m)"
    e = s3_error(ValueError("not ours"), URL, END)
    assert isinstance(e, ValueError) and not isinstance(e, UserError)
