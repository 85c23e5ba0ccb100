#!/usr/bin/env python
"""Throughput from object storage against the same shards on disk, in one run: img/s and MB/s of

  read     DALI's fn.readers.webdataset alone (jpg + cls, no decode): what the storage delivers
  loader   the training loader (pipeline.build_loader: read, decode, crop, mirror, mean image,
           lighting), what the trainer is fed

each from the local shard directory and from an S3 server, side by side, and for S3 the GET
requests per sample (counted in the server's log) and the time each costs the reader. The S3
server is `moto_server` on 127.0.0.1 (tests/s3kit.py) unless --s3 names a prefix of a real
store (credentials and endpoint from the AWS environment). --latency-ms adds a relay that holds
each request that long, to see what a store farther than loopback does to DALI's reader.

    python scripts/bench_s3.py                            # ~1000 generated samples, local moto
    python scripts/bench_s3.py --latency-ms 2,10          # also through a 2 ms and a 10 ms relay
    python scripts/bench_s3.py --shards /data/shards --s3 s3://bucket/shards --json

MB/s counts the tar bytes per sample (tar size / samples; the members DALI reads plus headers).
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts"), os.path.join(ROOT, "tests")]


class Relay:
    """A TCP relay on 127.0.0.1 that holds every chunk a client sends for `delay` seconds before
    passing it on (one HTTP request is one chunk here): a store `delay` farther away."""

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay = ("127.0.0.1", target_port), delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(src, dst, delay):
        try:
            while data := src.recv(1 << 16):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def reader_pipeline(shards, batch, threads):
    """DALI's webdataset reader alone over the training shards, as the loader configures it."""
    from nvidia.dali import Pipeline, fn

    from shards import Manifest

    tars, idx = zip(*Manifest.load(shards).shard_paths(shards, "train"))
    pipe = Pipeline(batch_size=batch, num_threads=threads, device_id=None, seed=0, prefetch_queue_depth=2)
    with pipe:
        jpegs, cls = fn.readers.webdataset(paths=list(tars), index_paths=list(idx), ext=["jpg", "cls"],
                                           random_shuffle=True, initial_fill=256, name="reader")
        pipe.set_outputs(jpegs, cls)
    pipe.build()
    return pipe


def measure_reader(shards, batch, threads, warmup, batches):
    pipe = reader_pipeline(shards, batch, threads)
    for _ in range(warmup):
        pipe.run()
    t = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    rate = batches * batch / (time.perf_counter() - t)
    del pipe
    return rate


def measure_loader(shards, batch, threads, warmup, batches):
    from bench_pipeline import measure

    from pipeline import build_loader

    loader = build_loader(shards, "train", batch, device="cpu", lighting=0.1, num_threads=threads, prepare_next=False)
    rate, _ = measure(loader, warmup, batches, "cpu")
    loader.close()
    return rate


def count_gets(log_path, prefix):
    if not log_path:
        return None
    with open(log_path, errors="replace") as f:
        return sum(1 for line in f if f"GET /{prefix}" in line and ".tar" in line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="local shard directory (default: generate one in a temporary directory)")
    p.add_argument("--samples", type=int, default=1024, help="images to generate without --shards")
    p.add_argument("--s3", help="s3://bucket/prefix of a real store to upload to and read (default: a local moto_server)")
    p.add_argument("--latency-ms", default="", help="comma-separated delays for extra S3 rows through a relay (local server only)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="batches excluded at the start")
    p.add_argument("--batches", type=int, default=None, help="batches timed (default: most of an epoch, at most 30)")
    p.add_argument("--threads", type=int, default=None, help="DALI CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each; the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    a = p.parse_args(argv)

    from bench_pipeline import generate
    from s3kit import S3Server

    from shards import Manifest
    from shards.store import open_store
    from shards.upload import upload_shard_dir

    say = (lambda m: None) if a.json else (lambda m: print(m, file=sys.stderr))
    threads = a.threads or len(os.sched_getaffinity(0))
    tmp = None
    if a.shards:
        local = a.shards
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-s3-")
        local = os.path.join(tmp.name, "shards")
        os.makedirs(local)
        generate(local, a.samples, 1)
    manifest = Manifest.load(local)
    train = manifest.split("train")
    sizes = open_store(local).listing()
    tar_bytes = sum(sizes[s.tar] for s in train.shards) / train.samples
    from shards.writer import read_index

    jpeg = [size for s in train.shards for sample in read_index(os.path.join(local, s.index))
            for ext, _, size, _ in sample if ext == "jpg"]
    batches = a.batches or max(1, min(30, train.samples // a.batch_size - a.warmup - 1))

    server = None
    log = os.path.join(tmp.name if tmp else tempfile.gettempdir(), "moto.log")
    if a.s3:
        url, log = a.s3, None
    else:
        server = S3Server(log_path=log).__enter__()
        os.environ.update(server.env)
        url = server.make_bucket("bench") + "/shards"
    try:
        t = time.perf_counter()
        up = upload_shard_dir(local, url)
        upload_s = time.perf_counter() - t
        say(f"{up.line()} in {upload_s:.1f} s")
        sources = {"disk": (local, None), "s3": (url, None)}
        relays = []
        for ms in filter(None, a.latency_ms.split(",")):
            if server is None:
                sys.exit("bench_s3: --latency-ms needs the local server (not --s3)")
            relay = Relay(server.port, float(ms) / 1e3)
            relays.append(relay)
            sources[f"s3+{ms}ms"] = (url, f"http://127.0.0.1:{relay.port}")
        rows = {}
        for name, (where, endpoint) in sources.items():
            if endpoint:
                os.environ["AWS_ENDPOINT_URL"] = endpoint
            elif server is not None:
                os.environ["AWS_ENDPOINT_URL"] = server.endpoint
            gets0 = count_gets(log, "bench/shards/") if name != "disk" else None
            reads = [measure_reader(where, a.batch_size, threads, a.warmup, batches) for _ in range(a.repeats)]
            gets = (count_gets(log, "bench/shards/") - gets0) if gets0 is not None else None
            loads = [measure_loader(where, a.batch_size, threads, a.warmup, batches) for _ in range(a.repeats)]
            read, load = statistics.median(reads), statistics.median(loads)
            # the reader reads warm-up, timed and prefetched batches: count per sample it read
            read_samples = a.repeats * (a.warmup + batches + 2 + 1) * a.batch_size
            rows[name] = {"read_img_s": round(read, 1), "read_MB_s": round(read * tar_bytes / 1e6, 2),
                          "loader_img_s": round(load, 1), "loader_MB_s": round(load * tar_bytes / 1e6, 2),
                          "gets_per_sample": round(gets / read_samples, 2) if gets is not None else None,
                          "ms_per_get": round(1e3 / (read * gets / read_samples), 2) if gets else None}
            say(f"{name}: {rows[name]}")
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    result = {"threads": threads, "batch_size": a.batch_size, "samples": train.samples, "batches_timed": batches,
              "tar_bytes_per_sample": round(tar_bytes), "jpeg_bytes_mean": round(statistics.mean(jpeg)),
              "upload_MB_s": round(up.bytes_sent / 1e6 / upload_s, 1), "server": "moto_server on 127.0.0.1" if server else url,
              "rows": rows}
    if a.json:
        print(json.dumps(result))
        return
    print(f"bench_s3: {train.samples} samples, {result['tar_bytes_per_sample']:,} tar bytes/sample "
          f"(JPEG mean {result['jpeg_bytes_mean']:,} B), batch {a.batch_size}, {threads} DALI threads, "
          f"{batches} timed batches, median of {a.repeats}; S3: {result['server']} "
          f"(upload {result['upload_MB_s']} MB/s)")
    print(f"{'source':<12} {'read img/s':>10} {'read MB/s':>10} {'loader img/s':>13} {'loader MB/s':>12} "
          f"{'GET/sample':>11} {'ms/GET':>7}")
    for name, r in rows.items():
        g = "" if r["gets_per_sample"] is None else f"{r['gets_per_sample']:.2f}"
        m = "" if r["ms_per_get"] is None else f"{r['ms_per_get']:.2f}"
        print(f"{name:<12} {r['read_img_s']:>10.1f} {r['read_MB_s']:>10.2f} {r['loader_img_s']:>13.1f} "
              f"{r['loader_MB_s']:>12.2f} {g:>11} {m:>7}")


if __name__ == "__main__":
    main()
