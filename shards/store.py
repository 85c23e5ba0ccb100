"""Where a shard directory lives: a local folder or an S3 prefix (`s3://bucket/prefix`), behind one
interface, so that every reader of a shard directory reads both the same way (docs/DESIGN.md,
"Shard directory").

`open_store(path)` gives a `LocalStore` or an `S3Store`. Both have `url(name)` (the path or the
`s3://` URL of a file, what DALI is handed), `exists`, `size`, `read_bytes`, `open`, `listing`
(every file's size, in one call), `read_many`, and for writing `put`. The bytes are the same
whichever holds the directory, so a loader reading either gives the same batches.

S3 goes through boto3 (the optional extra `alexnet-imagenet[s3]`), imported only when an `s3://`
location is used. Credentials, region and endpoint are the AWS SDK's own: the environment
(`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `AWS_ENDPOINT_URL` for an S3-compatible store such as
MinIO or Ceph, ...) and `~/.aws/config` / `~/.aws/credentials`; DALI's reader reads the same.
What goes wrong on the wire is one line naming the URL (`shards.errors.UserError`, exit 2): no
credentials, credentials refused, no such bucket, an endpoint that cannot be reached. A missing
object is a `FileNotFoundError` naming its URL, which each reader turns into its own message
(a missing manifest, a shard missing from the directory).
"""
from __future__ import annotations

import errno
import os
import threading
from typing import Dict, Iterable, Iterator, Optional, Union

from shards.errors import UserError

S3_SCHEME = "s3://"
S3_EXTRA = 'pip install "alexnet-imagenet[s3]"'
SHA256_KEY = "sha256"  # the object metadata under which `put` stores the sha256 of the bytes
READ_THREADS = 16  # concurrent GETs of `read_many` on S3 (small files: each costs a round trip)


def is_s3_url(path) -> bool:
    """Whether `path` names an S3 location (`s3://bucket/...`)."""
    return isinstance(path, str) and path.startswith(S3_SCHEME)


def open_store(path) -> Union["LocalStore", "S3Store"]:
    """The shard directory at `path`: an `S3Store` for `s3://bucket/prefix`, else a `LocalStore`."""
    if is_s3_url(path):
        return S3Store(path)
    return LocalStore(os.fspath(path))


def store_of(path) -> tuple:
    """(the store of the directory holding `path`, the file's name): `path` is a file's path or
    its `s3://` URL, e.g. one that `url(name)` gave."""
    if is_s3_url(path):
        parent, _, name = path.rpartition("/")
        return S3Store(parent), name
    path = os.fspath(path)
    return LocalStore(os.path.dirname(path)), os.path.basename(path)


def _read_or_error(store, name: str):
    try:
        return store.read_bytes(name)
    except OSError as e:
        return e


def read_array(store, name: str):
    """The numpy array in the `.npy` file `name` of `store` (never a pickle): OSError when it
    cannot be read, ValueError when it is not an array file."""
    import io

    import numpy as np

    return np.load(io.BytesIO(store.read_bytes(name)), allow_pickle=False)


class LocalStore:
    """A shard directory on a local (or mounted) file system."""

    remote = False

    def __init__(self, root: str):
        self.root = root

    def __str__(self):
        return self.root

    def __repr__(self):
        return f"LocalStore({self.root!r})"

    def url(self, name: str) -> str:
        return os.path.join(self.root, name)

    def is_dir(self) -> bool:
        """Whether the directory is there."""
        return os.path.isdir(self.root)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.url(name))

    def size(self, name: str) -> int:
        return os.path.getsize(self.url(name))

    def read_bytes(self, name: str) -> bytes:
        with open(self.url(name), "rb") as f:
            return f.read()

    def read_many(self, names: Iterable[str]) -> Iterator[Union[bytes, OSError]]:
        """The bytes of each of `names`, in order (the OSError in place of a file that cannot be
        read)."""
        return (_read_or_error(self, n) for n in names)

    def open(self, name: str):
        """The file, opened for reading bytes."""
        return open(self.url(name), "rb")

    def listing(self) -> Dict[str, int]:
        """{name: size} of the files in the directory ({} when there is none)."""
        try:
            with os.scandir(self.root) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except FileNotFoundError:
            return {}

    def stored_sha256(self, name: str) -> Optional[str]:
        """A local file keeps no hash beside it."""
        return None

    def put(self, name: str, source, sha256: Optional[str] = None) -> None:
        """Write `source` (bytes, or the path of a file to copy) as `name`, atomically."""
        import shutil

        from shards.files import atomic_write

        def write(f):
            if isinstance(source, (bytes, bytearray, memoryview)):
                f.write(source)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)

        os.makedirs(self.root, exist_ok=True)
        atomic_write(self.url(name), write)

    def delete(self, name: str) -> None:
        try:
            os.remove(self.url(name))
        except FileNotFoundError:
            pass


# --- S3 ---------------------------------------------------------------------------------------

_clients: dict = {}
_clients_lock = threading.Lock()


def _boto3(url):
    """boto3, or a one-line error naming the extra that installs it."""
    try:
        import boto3
    except ImportError:
        raise UserError(f"{url}: reading or writing s3:// needs boto3; install it with {S3_EXTRA}") from None
    return boto3


def _client(url):
    """This process's S3 client for the AWS environment as it is now (a test or a user that
    changes AWS_* variables gets a new one; a forked worker builds its own)."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), env)
    with _clients_lock:  # boto3 sessions are not thread-safe to create; clients are to use
        client = _clients.get(key)
        if client is None:
            boto3 = _boto3(url)
            from botocore.config import Config

            try:
                client = boto3.session.Session().client("s3", config=Config(max_pool_connections=4 * READ_THREADS))
            except Exception as e:  # a profile that does not exist, a malformed config file
                raise UserError(f"{url}: {_sdk_message(e)}; check AWS_PROFILE and ~/.aws/config") from None
            _clients.clear()  # one environment at a time
            _clients[key] = client
        return client


def _sdk_message(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _not_found(url: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such object", url)


CREDENTIALS_HINT = ("check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and "
                    "~/.aws/credentials) and that they may read the bucket")


def s3_error(e: BaseException, url: str, endpoint: str = "") -> BaseException:
    """What to raise for botocore's `e` met on `url`: a one-line UserError (no credentials,
    credentials refused, no such bucket, an endpoint that cannot be reached), FileNotFoundError
    for a missing object, OSError(ECONNRESET) for a transfer cut short."""
    from botocore import exceptions as bx

    at = f" at {endpoint}" if endpoint else ""
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return UserError(f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                         "AWS_PROFILE (a profile in ~/.aws/credentials)")
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            bucket = S3_SCHEME + url[len(S3_SCHEME):].split("/", 1)[0]
            return UserError(f"{bucket}: no such bucket{at}; check the address (and AWS_ENDPOINT_URL for an "
                             "S3-compatible store)")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return _not_found(url)
        if status in (401, 403) or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                                            "ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
            return UserError(f"{url}: access denied{at} ({code or status}); {CREDENTIALS_HINT}")
        return UserError(f"{url}: S3 refused the request{at} ({code or status}: {err.get('Message', '')})".rstrip())
    if isinstance(e, (bx.IncompleteReadError, bx.ResponseStreamingError, bx.ReadTimeoutError)):
        return OSError(errno.ECONNRESET, f"the transfer was cut short ({_sdk_message(e)})", url)
    if isinstance(e, (bx.ConnectionError, bx.HTTPClientError)):  # refused, timed out, DNS, TLS, proxy
        return UserError(f"{url}: cannot reach the S3 endpoint{at} ({_sdk_message(e)}); check AWS_ENDPOINT_URL "
                         "and the network")
    if isinstance(e, bx.BotoCoreError):
        return UserError(f"{url}: {_sdk_message(e)}")
    return e


def check_s3_url(url: str) -> None:
    """UserError (exit 2), before any request, for an `s3://` URL that is not one unambiguous
    prefix: a `.` or `..` segment, an empty segment (`a//b`) or a control character (a newline).
    S3 stores such keys literally while URL-normalising readers (DALI's) resolve them, so the
    same URL would name two different sets of objects; one rule for every command."""
    shown = url.encode("unicode_escape").decode("ascii")  # one line, whatever the URL holds
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UserError(f"{shown}: holds a control character; give the s3://bucket/prefix without it")
    rest = url[len(S3_SCHEME):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UserError(f"{shown}: no bucket; an S3 shard directory looks like s3://bucket/prefix")
    segments = [bucket] + (prefix.strip("/").split("/") if prefix.strip("/") else [])
    odd = [s for s in segments if s in ("", ".", "..")]
    if odd:
        what = "an empty segment (//)" if odd[0] == "" else f"a '{odd[0]}' segment"
        raise UserError(f"{shown}: holds {what}, which S3 keeps literally but other readers resolve; "
                        "give the prefix without it, e.g. s3://bucket/imagenet/shards")


class S3Store:
    """A shard directory under an S3 prefix, `s3://bucket/prefix` (an S3-compatible store through
    `AWS_ENDPOINT_URL`). Objects are `prefix/name`; "directory" means the prefix."""

    remote = True

    def __init__(self, url: str):
        check_s3_url(url)
        rest = url[len(S3_SCHEME):]
        bucket, _, prefix = rest.partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"{S3_SCHEME}{bucket}/{self.prefix}".rstrip("/")
        self._bucket_checked = False

    def __str__(self):
        return self.location

    def __repr__(self):
        return f"S3Store({self.location!r})"

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def client(self):
        return _client(self.location)

    def _call(self, url: str, op: str, **kwargs):
        """client.<op>(**kwargs), botocore's errors as `s3_error`'s."""
        client = self.client
        try:
            return getattr(client, op)(**kwargs)
        except Exception as e:
            raise _raised(e, url, client) from None

    def is_dir(self) -> bool:
        """Whether the bucket is there (a prefix exists once it holds objects); a missing bucket,
        refused credentials or an unreachable endpoint raise their one-line UserError."""
        self._check_bucket()
        return True

    def _check_bucket(self):
        if self._bucket_checked:
            return
        try:
            self._call(self.location, "head_bucket", Bucket=self.bucket)
        except FileNotFoundError:  # HEAD has no body: a 404 is the bucket
            raise s3_error(_no_such_bucket(), self.location, self.client.meta.endpoint_url) from None
        self._bucket_checked = True

    def _head(self, name: str) -> Optional[dict]:
        """The object's HEAD response, None when there is no such object (in a bucket that is there)."""
        try:
            return self._call(self.url(name), "head_object", Bucket=self.bucket, Key=self.key(name))
        except FileNotFoundError:
            self._check_bucket()  # a HEAD's 404 does not say whether the bucket or the key is missing
            return None

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def size(self, name: str) -> int:
        head = self._head(name)
        if head is None:
            raise _not_found(self.url(name))
        return int(head["ContentLength"])

    def stored_sha256(self, name: str) -> Optional[str]:
        """The sha256 that `put` stored with the object (None: no object, or none stored)."""
        head = self._head(name)
        return None if head is None else head.get("Metadata", {}).get(SHA256_KEY)

    def read_bytes(self, name: str) -> bytes:
        url = self.url(name)
        response = self._get(name)
        try:
            data = response["Body"].read()
        except Exception as e:
            raise _raised(e, url, self.client) from None
        if len(data) != int(response.get("ContentLength", len(data))):
            raise OSError(errno.ECONNRESET, f"the transfer was cut short ({len(data)} of {response['ContentLength']} "
                                     "bytes)", url)
        return data

    def _get(self, name: str) -> dict:
        try:
            return self._call(self.url(name), "get_object", Bucket=self.bucket, Key=self.key(name))
        except FileNotFoundError:
            self._check_bucket()  # a store that answers a missing bucket with a bare 404
            raise

    def read_many(self, names: Iterable[str]) -> Iterator[Union[bytes, OSError]]:
        """The bytes of each of `names`, in order (the OSError in place of an object that cannot
        be read), fetched READ_THREADS at a time: each GET costs a round trip."""
        from concurrent.futures import ThreadPoolExecutor

        names = list(names)
        if len(names) <= 1:
            return iter([_read_or_error(self, n) for n in names])
        with ThreadPoolExecutor(min(READ_THREADS, len(names)), thread_name_prefix="s3-read") as pool:
            return iter(list(pool.map(lambda n: _read_or_error(self, n), names)))

    def open(self, name: str):
        """A stream of the object's bytes (botocore's StreamingBody: read(n), close())."""
        return _Stream(self._get(name)["Body"], self.url(name), self.client)

    def listing(self) -> Dict[str, int]:
        """{name: size} of the objects directly under the prefix (one request per 1000)."""
        self._check_bucket()
        start = f"{self.prefix}/" if self.prefix else ""
        sizes, etags = {}, {}
        client = self.client
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(start):]
                    if name and "/" not in name:
                        sizes[name] = int(obj["Size"])
                        if obj.get("ETag"):
                            etags[name] = obj["ETag"]
        except Exception as e:
            raise _raised(e, self.location, client) from None
        self.sizes, self.etags = sizes, etags  # the last listing: the shard cache reuses it, ETags included
        return sizes

    def put(self, name: str, source, sha256: Optional[str] = None) -> None:
        """Upload `source` (bytes, or the path of a local file) as `name`, its sha256 (when given)
        stored as the object's metadata. S3 makes an object visible only once it is complete
        (a multipart upload too), so a reader never sees part of one."""
        from boto3.s3.transfer import TransferConfig

        extra = {"Metadata": {SHA256_KEY: sha256}} if sha256 else {}
        url, client = self.url(name), self.client
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                client.put_object(Bucket=self.bucket, Key=self.key(name), Body=bytes(source), **extra)
            else:
                client.upload_file(os.fspath(source), self.bucket, self.key(name), ExtraArgs=extra,
                                   Config=TransferConfig(use_threads=False))
        except Exception as e:
            raise _raised(_unwrap(e), url, client) from None

    def delete(self, name: str) -> None:
        self._call(self.url(name), "delete_object", Bucket=self.bucket, Key=self.key(name))

    def put_if(self, name: str, data: bytes, etag: Optional[str] = None) -> Optional[str]:
        """A conditional PUT of the small object `name`: with `etag` None only if no object has
        that name (`If-None-Match: *`), else only if the object's ETag is still `etag`
        (`If-Match`). The new object's ETag, or None when the condition failed (another writer
        got there first). S3 decides this atomically on the server."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        client = self.client
        try:
            return client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data, **condition)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise _raised(e, self.url(name), client) from None
        except Exception as e:
            raise _raised(e, self.url(name), client) from None

    def read_tagged(self, name: str) -> Optional[tuple]:
        """(the bytes, the ETag) of `name`, or None when there is no such object."""
        try:
            response = self._get(name)
        except FileNotFoundError:
            return None
        try:
            return response["Body"].read(), response["ETag"]
        except Exception as e:
            raise _raised(e, self.url(name), self.client) from None

    def abort_uploads(self, names: Iterable[str]) -> int:
        """Abort the unfinished multipart uploads of `names` (left by a killed upload; S3 keeps
        and bills their parts until then); returns how many."""
        keys = {self.key(n) for n in names}
        start = f"{self.prefix}/" if self.prefix else ""
        found = self._call(self.location, "list_multipart_uploads", Bucket=self.bucket, Prefix=start)
        stale = [u for u in found.get("Uploads", []) if u["Key"] in keys]
        for u in stale:
            self._call(self.location, "abort_multipart_upload", Bucket=self.bucket, Key=u["Key"],
                       UploadId=u["UploadId"])
        return len(stale)


class _Stream:
    """A StreamingBody whose read errors are `s3_error`'s."""

    def __init__(self, body, url, client):
        self._body, self._url, self._client = body, url, client

    def read(self, n=-1):
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as e:
            raise _raised(e, self._url, self._client) from None

    def close(self):
        self._body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _no_such_bucket():
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": "NoSuchBucket", "Message": "The specified bucket does not exist"},
                        "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadBucket")


def _unwrap(e: BaseException) -> BaseException:
    """boto3's transfer manager wraps the SDK's error in S3UploadFailedError: the error itself."""
    cause = e.__cause__ or e.__context__
    if type(e).__name__ == "S3UploadFailedError" and cause is not None:
        return cause
    return e


def _raised(e: BaseException, url: str, client) -> BaseException:
    try:
        endpoint = client.meta.endpoint_url
    except Exception:
        endpoint = ""
    return s3_error(e, url, endpoint)
