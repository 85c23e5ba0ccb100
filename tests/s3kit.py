"""A real S3 server on loopback for tests and benchmarks: `moto_server` (the `moto[server]` dev
dependency) on 127.0.0.1 at a free port, with request signing checked, so that wrong credentials
are refused as a real store refuses them.

    with S3Server() as s3:            # starts the server, makes an IAM user allowed everything
        os.environ.update(s3.env)     # AWS_ENDPOINT_URL, that user's keys, the region
        s3.make_bucket("shards")
        ...                           # boto3 (shards.store) and DALI's reader both talk to it

`s3.env` is all either SDK needs: the endpoint, the keys, the region, and
AWS_EC2_METADATA_DISABLED (no probe of an instance metadata service that is not there). With
`S3Server(relay=True)` the endpoint is a `Relay` in front of the server, which a test can cut.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A TCP relay from 127.0.0.1:<port> to `target_port`, in a process of its own (a DALI
    pipeline may hold this process's GIL while it waits for data), which can hold each chunk a
    client sends for `delay` seconds (one HTTP request is about one chunk: a store that much
    farther away), can cap what the server sends back at `bandwidth` bytes per second, and can
    be `cut()`: the store gone, connections reset, new ones refused.

    The cap is shared by all connections of the relay, as one link's is: the relay's pumps of
    the server→client direction take turns on one clock (`Pacer`), so eight connections
    downloading at once get `bandwidth` between them, not eight times it. A chunk leaves the
    relay when the link would have finished sending it, never earlier; after an idle spell the
    link may catch up by at most `Pacer.SLACK` seconds' worth of bytes (the relay's own sleeps
    overshoot). The client→server direction (requests, uploads) is not capped. `bandwidth=None`
    (or 0): no cap.

    `cut_after`: each connection is closed after the server has sent that many bytes through it
    (a download cut mid-way, every time: what a flaky link does to a long GET).

    DALI's S3 client reads AWS_ENDPOINT_URL once per process, so a test that takes the store away
    from a DALI reader cuts the relay it has been talking to instead of changing the variable."""

    def __init__(self, target_port: int, delay: float = 0.0, bandwidth: float | None = None,
                 cut_after: int | None = None):
        self.target_port, self.delay, self.bandwidth = target_port, delay, bandwidth or None
        self.cut_after = cut_after or None
        self.port = free_port()
        self.proc = None
        self._start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "relay", str(self.target_port),
                                      str(self.port), str(self.delay), str(self.bandwidth or 0),
                                      str(self.cut_after or 0)],
                                     stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"listening":
            raise RuntimeError("the relay did not start")

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @contextlib.contextmanager
    def cut(self):
        """While the block runs the store is gone: open connections are reset, new ones refused."""
        self._stop()
        try:
            yield
        finally:
            self._start()

    def close(self):
        self._stop()


class Pacer:
    """One link's clock of `bandwidth` bytes/s, shared by threads: `wait(n)` books the next n
    bytes on the link (after what every thread booked before) and sleeps until the link has sent
    them. Bookings never start more than SLACK seconds in the past, so an idle link saves up no
    more than SLACK × bandwidth bytes."""

    SLACK = 0.005

    def __init__(self, bandwidth: float):
        self.bandwidth = float(bandwidth)
        self._free = 0.0  # when the link has sent everything booked so far
        self._lock = threading.Lock()

    def chunk(self) -> int:
        """Bytes to pass per booking: about 10 ms of the link, 4 KiB to 64 KiB."""
        return int(min(1 << 16, max(1 << 12, self.bandwidth / 100)))

    def wait(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._free = max(self._free, now - self.SLACK) + n / self.bandwidth
            done = self._free
        pause = done - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def _serve_relay(target_port: int, port: int, delay: float, bandwidth: float = 0.0, cut_after: int = 0):
    """The relay process: accept on 127.0.0.1:port, two pumps per connection; the server→client
    pumps of all connections share one Pacer when `bandwidth` (bytes/s) is set, and close their
    connection after `cut_after` bytes when it is set."""
    pacer = Pacer(bandwidth) if bandwidth > 0 else None

    def pump(src, dst, held, paced, limit=0):
        size, sent = (paced.chunk() if paced else 1 << 16), 0
        try:
            while data := src.recv(size):
                if held:
                    time.sleep(held)
                if paced:
                    paced.wait(len(data))
                if limit and sent + len(data) >= limit:
                    dst.sendall(data[:limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    print("listening", flush=True)
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=pump, args=(client, upstream, delay, None), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, 0.0, pacer, cut_after), daemon=True).start()


class S3Server:
    """moto_server on 127.0.0.1:<free port>, authenticating every request after the first three
    (the three that make the IAM user whose keys `env` holds); `auth=False`: none (any keys do,
    each request costs the server less). `relay=True`: `env` points at a `Relay` in front of the
    server."""

    def __init__(self, log_path=os.devnull, relay: bool = False, auth: bool = True):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"  # the server itself
        self.log_path = log_path
        self.proc = None
        self.relay = None
        self.want_relay, self.auth = relay, auth
        self.env = {}

    def __enter__(self) -> "S3Server":
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3" if self.auth else "inf")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait()
            self.env = self._make_user() if self.auth else {
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}
            if self.want_relay:  # clients talk to the relay, which can be cut (Relay.cut)
                self.relay = Relay(self.port)
                self.env["AWS_ENDPOINT_URL"] = self.relay.endpoint
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        if self.relay is not None:
            self.relay.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def _wait(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {self.proc.returncode} (see {self.log_path})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not listen on {self.endpoint} within {timeout:.0f} s")
                time.sleep(0.05)

    def _make_user(self) -> dict:
        import boto3

        iam = boto3.session.Session().client("iam", endpoint_url=self.endpoint, region_name=REGION,
                                             aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="shards")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="shards", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="shards")["AccessKey"]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        """A boto3 S3 client with the server's keys, talking to the server itself (not the relay)."""
        import boto3

        e = self.env
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                              aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                                              aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"])

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


def use_only(env: dict, monkeypatch) -> None:
    """These AWS_* variables for boto3 and DALI in this process, and nothing else: no other AWS_*
    variable, nothing from ~/.aws."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in dict(env, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull).items():
        monkeypatch.setenv(k, v)


@contextlib.contextmanager
def serving(tmp_path_factory, **kw):
    """An S3Server (its log in a temporary folder) with the bucket "shards", for a module's fixture."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with S3Server(log_path=str(log), **kw) as s3:
        s3.make_bucket("shards")
        yield s3


def s3_fixtures(prefix: str, server=None, **shards):
    """The fixtures of a module of tests on one S3 server, to assign at module level:

        server, aws_env, local, remote = s3_fixtures("c/v1", n_train=47, n_val=23, classes=8, shard_size=4)

    `server`: an S3Server with the bucket "shards" for the module (`server`: S3Server's keywords,
    default relay=False, auth=False); `aws_env` (autouse): each test sees that server's AWS
    environment only; `local`: a shard directory of `local_shards(**shards)`; `remote`: it
    uploaded to s3://shards/PREFIX."""
    import pytest

    @pytest.fixture(scope="module", name="server")
    def server_(tmp_path_factory):
        with serving(tmp_path_factory, **(server or dict(relay=False, auth=False))) as s3:
            yield s3

    @pytest.fixture(autouse=True, name="aws_env")
    def aws_env_(server, monkeypatch):
        use_only(server.env, monkeypatch)

    @pytest.fixture(scope="module", name="local")
    def local_(tmp_path_factory):
        return local_shards(tmp_path_factory, **shards)

    @pytest.fixture(scope="module", name="remote")
    def remote_(server, local):
        return uploaded(server, local, f"s3://shards/{prefix}")

    return server_, aws_env_, local_, remote_


def local_shards(tmp_path_factory, **kw) -> str:
    """A shard directory written by tests/shardkit.py (`make_shards` keywords), for a module's fixture."""
    from shardkit import make_shards

    d = tmp_path_factory.mktemp("local") / "shards"
    d.mkdir()
    make_shards(d, **kw)
    return str(d)


def uploaded(server, local: str, url: str) -> str:
    """`local` (a shard directory) uploaded to `url` on `server` by `alexnet upload`'s library call; `url`."""
    import pytest

    from shards.upload import upload_shard_dir

    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
        upload_shard_dir(local, url)
    return url


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    _serve_relay(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
                 float(sys.argv[5]) if len(sys.argv) > 5 else 0.0, int(sys.argv[6]) if len(sys.argv) > 6 else 0)
