#!/usr/bin/env python
"""Throughput from object storage against the same shards on disk, in one run: img/s and MB/s of

  read     DALI's fn.readers.webdataset alone (jpg + cls, no decode): what the storage delivers
  loader   the training loader on the CPU (pipeline.build_loader: read, decode, crop, mirror, mean
           image, lighting), what a CPU trainer is fed

each from the local shard directory and from an S3 server, side by side, and for S3 the GET
requests per sample (counted in the server's log) and the time each costs the reader. The S3
server is `moto_server` on 127.0.0.1 (tests/s3kit.py) unless --s3 names a prefix of a real
store (credentials and endpoint from the AWS environment). --latency-ms adds a relay that holds
each request that long, to see what a store farther than loopback does to DALI's reader.

    python scripts/bench_s3.py                            # ~1000 generated samples, local moto
    python scripts/bench_s3.py --latency-ms 2,10          # also through a 2 ms and a 10 ms relay
    python scripts/bench_s3.py --shards /data/shards --s3 s3://bucket/shards --json
    python scripts/bench_s3.py --samples 3072 --latency-ms 20 --epochs 3   # the cache vs disk, whole epochs

With --epochs (default 3), each source is also timed over whole training epochs from the loader's
build (s3:// through a fresh local shard cache, pipeline.cache: its first download included);
"vs disk" is that rate over the disk's. The read/loader rows of s3:// also go through the cache.

MB/s counts the tar bytes per sample (tar size / samples; the members DALI reads plus headers).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts"), os.path.join(ROOT, "tests")]


def reader_pipeline(shards, batch, threads, shuffle_buffer, prefetch):
    """DALI's webdataset reader alone over the training shards, exactly as the loader configures
    it: the loader's own graph cut after its reader (pipeline.stages)."""
    from pipeline import build_loader
    from pipeline.stages import stage_pipeline

    loader = build_loader(shards, "train", batch, device="cpu", lighting=0.1, num_threads=threads,
                          prefetch=prefetch, prepare_next=False, shuffle_buffer=shuffle_buffer)
    pipe = stage_pipeline(loader, "read")
    pipe.build()
    return pipe


def measure_reader(shards, batch, threads, warmup, batches, shuffle_buffer, prefetch, log=None):
    """(img/s of the reader alone, tar GETs per sample in the timed batches: None without a log)."""
    pipe = reader_pipeline(shards, batch, threads, shuffle_buffer, prefetch)
    for _ in range(warmup):
        pipe.run()
    time.sleep(0.2)  # the server's log lines of the warm-up's requests, before both counts alike
    gets = count_gets(log)
    t = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    rate = batches * batch / (time.perf_counter() - t)
    time.sleep(0.2)  # the server's log lines of the last requests
    per_sample = (count_gets(log) - gets) / (batches * batch) if log else None
    del pipe
    return rate, per_sample


def measure_loader(shards, batch, threads, warmup, batches, shuffle_buffer, prefetch):
    from bench_pipeline import measure

    from pipeline import build_loader

    loader = build_loader(shards, "train", batch, device="cpu", lighting=0.1, num_threads=threads, prepare_next=False,
                          shuffle_buffer=shuffle_buffer, prefetch=prefetch)
    rate, _ = measure(loader, warmup, batches, "cpu")
    loader.close()
    return rate


def measure_epochs(shards, batch, threads, epochs, shuffle_buffer, prefetch):
    """(img/s over `epochs` whole epochs, from the loader's build to its last batch; seconds to the
    first batch): for s3:// through a fresh local shard cache (pipeline.cache), so the first
    epoch's download is inside the time."""
    from pipeline import build_loader

    with tempfile.TemporaryDirectory(prefix="bench-s3-cache-") as cache:
        t = time.perf_counter()
        loader = build_loader(shards, "train", batch, device="cpu", lighting=0.1, num_threads=threads,
                              prefetch=prefetch, shuffle_buffer=shuffle_buffer, cache_dir=cache)
        images, first = 0, None
        for epoch in range(epochs):
            for x, _ in loader:
                images += len(x)
                first = first if first is not None else time.perf_counter() - t
        rate = images / (time.perf_counter() - t)
        loader.close()
    return rate, first


def count_gets(log_path):
    """GET requests of tars in the server's log so far (moto_server logs one line per request)."""
    if not log_path:
        return None
    with open(log_path, errors="replace") as f:
        return sum(1 for line in f if "GET /" in line and ".tar HTTP" in line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="local shard directory (default: generate one in a temporary directory)")
    p.add_argument("--samples", type=int, default=1024, help="images to generate without --shards")
    p.add_argument("--s3", help="s3://bucket/prefix of a real store to upload to and read (default: a local moto_server)")
    p.add_argument("--latency-ms", default="", help="comma-separated delays for extra S3 rows through a relay (local server only)")
    p.add_argument("--auth-off", action="store_true", help="the local server checks no signatures (less work per request)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2, help="batches excluded at the start")
    p.add_argument("--batches", type=int, default=None, help="batches timed (default: most of an epoch, at most 15)")
    p.add_argument("--threads", type=int, default=None, help="DALI CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each; the median is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    p.add_argument("--shuffle-buffer", type=int, default=64,
                   help="samples in the reader's shuffle buffer: small, so that the timed batches are read while "
                        "they are timed, not from a buffer filled before")
    p.add_argument("--prefetch", type=int, default=2, help="batches DALI prepares ahead (prefetch_queue_depth)")
    p.add_argument("--epochs", type=int, default=3, help="whole epochs timed per source (0: none), first batch included")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one source, print JSON
    p.add_argument("--log", help=argparse.SUPPRESS)  # internal: the server's log, to count GETs
    a = p.parse_args(argv)
    if a.measure:
        args = (a.measure, a.batch_size, a.threads, a.warmup, a.batches, a.shuffle_buffer, a.prefetch)
        reads = [measure_reader(*args, log=a.log) for _ in range(a.repeats)]
        loads = [measure_loader(*args) for _ in range(a.repeats)]
        gets = [g for _, g in reads if g is not None]
        runs = [measure_epochs(a.measure, a.batch_size, a.threads, a.epochs, a.shuffle_buffer, a.prefetch)
                for _ in range(a.repeats)] if a.epochs else [(0.0, 0.0)]
        print(json.dumps({"read": statistics.median(r for r, _ in reads), "loader": statistics.median(loads),
                          "gets_per_sample": statistics.median(gets) if gets else None,
                          "epochs": statistics.median(r for r, _ in runs),
                          "first_batch_s": statistics.median(f for _, f in runs)}))
        return

    from bench_pipeline import generate
    from s3kit import Relay, S3Server

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
    batches = a.batches or max(1, min(15, train.samples // a.batch_size - a.warmup - 1))

    server = None
    log = os.path.join(tmp.name if tmp else tempfile.gettempdir(), "moto.log")
    if a.s3:
        url, log = a.s3, None
    else:
        server = S3Server(log_path=log, auth=not a.auth_off).__enter__()
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
            env = dict(os.environ)  # the read/loader rows' default shard cache: a fresh one per source, not ~/.cache
            env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix=f"cache-{name}-", dir=tmp.name if tmp else None)
            if endpoint:
                env["AWS_ENDPOINT_URL"] = endpoint
            # a process per source: DALI's S3 client reads AWS_ENDPOINT_URL once per process
            command = [sys.executable, os.path.abspath(__file__), "--measure", where, "--batch-size", str(a.batch_size),
                       "--warmup", str(a.warmup), "--batches", str(batches), "--threads", str(threads),
                       "--repeats", str(a.repeats), "--epochs", str(a.epochs), "--shuffle-buffer", str(a.shuffle_buffer), "--prefetch", str(a.prefetch)]
            if log and name != "disk":
                command += ["--log", log]
            child = subprocess.run(command, env=env, capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"bench_s3: measuring {name} failed:\n{child.stderr[-2000:]}")
            m = json.loads(child.stdout.strip().splitlines()[-1])
            read, load, per_sample = m["read"], m["loader"], m["gets_per_sample"]
            rows[name] = {"read_img_s": round(read, 1), "read_MB_s": round(read * tar_bytes / 1e6, 2),
                          "loader_img_s": round(load, 1), "loader_MB_s": round(load * tar_bytes / 1e6, 2),
                          "gets_per_sample": round(per_sample, 2) if per_sample is not None else None,
                          "ms_per_get": round(1e3 / (read * per_sample), 2) if per_sample else None,
                          "epochs_img_s": round(m["epochs"], 1), "first_batch_s": round(m["first_batch_s"], 2)}
            rows[name]["vs_disk"] = round(m["epochs"] / rows["disk"]["epochs_img_s"], 3) if m["epochs"] else None
            say(f"{name}: {rows[name]}")
        for relay in relays:
            relay.close()
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    result = {"threads": threads, "prefetch": a.prefetch, "batch_size": a.batch_size, "samples": train.samples, "batches_timed": batches,
              "tar_bytes_per_sample": round(tar_bytes), "jpeg_bytes_mean": round(statistics.mean(jpeg)),
              "upload_MB_s": round(up.bytes_sent / 1e6 / upload_s, 1), "server": "moto_server on 127.0.0.1" if server else url,
              "rows": rows}
    if a.json:
        print(json.dumps(result))
        return
    print(f"bench_s3: {train.samples} samples, {result['tar_bytes_per_sample']:,} tar bytes/sample "
          f"(JPEG mean {result['jpeg_bytes_mean']:,} B), batch {a.batch_size}, {threads} DALI threads, prefetch "
          f"{a.prefetch}, "
          f"{batches} timed batches, median of {a.repeats}; S3: {result['server']} "
          f"(upload {result['upload_MB_s']} MB/s)")
    print(f"{'source':<12} {'read img/s':>10} {'read MB/s':>10} {'loader img/s':>13} {'loader MB/s':>12} "
          f"{'GET/sample':>11} {'ms/GET':>7} {'epochs img/s':>13} {'1st batch s':>12} {'vs disk':>8}")
    for name, r in rows.items():
        g = "" if r["gets_per_sample"] is None else f"{r['gets_per_sample']:.2f}"
        m = "" if r["ms_per_get"] is None else f"{r['ms_per_get']:.2f}"
        print(f"{name:<12} {r['read_img_s']:>10.1f} {r['read_MB_s']:>10.2f} {r['loader_img_s']:>13.1f} "
              f"{r['loader_MB_s']:>12.2f} {g:>11} {m:>7} {r['epochs_img_s']:>13.1f} {r['first_batch_s']:>12.2f} "
              f"{r['vs_disk'] or 0:>8.3f}")


if __name__ == "__main__":
    main()
