#!/usr/bin/env python
"""Throughput from object storage against the same shards on disk, in one run: img/s and MB/s of

  read     DALI's fn.readers.webdataset alone (jpg + cls, no decode): what the storage delivers
  loader   the training loader on the CPU (pipeline.build_loader: read, decode, crop, mirror, mean
           image, lighting), what a CPU trainer is fed

each from the local shard directory and from an S3 server, side by side, and for S3 the GET
requests per sample (counted in the server's log) and the time each costs the reader. The S3
server is `moto_server` on 127.0.0.1 (tests/s3kit.py) unless --s3 names a prefix of a real
store (credentials and endpoint from the AWS environment). --latency-ms adds a relay that holds
each request that long, to see what a store farther than loopback does to DALI's reader;
--bandwidth-mbs caps what each relay sends back at that many MB/s (10^6 bytes), one cap shared by
all the relay's connections (tests/s3kit.py, `Relay`), as one link to the store would.

    python scripts/bench_s3.py                            # ~1000 generated samples, local moto
    python scripts/bench_s3.py --latency-ms 2,10          # also through a 2 ms and a 10 ms relay
    python scripts/bench_s3.py --shards /data/shards --s3 s3://bucket/shards --json
    python scripts/bench_s3.py --samples 3072 --latency-ms 20 --epochs 3   # the cache vs disk, whole epochs
    python scripts/bench_s3.py --samples 3072 --latency-ms 20 --bandwidth-mbs 200 --epochs 3   # issue 23's check

With --epochs (default 3), each source is also timed over whole training epochs from the loader's
build (s3:// through a fresh local shard cache, pipeline.cache: its first download included), in
--repeats rounds that time every source once each (a process each), so that the machine's drift
falls on all alike; "vs disk" is the median over the rounds of that round's rate over the disk's
(each round's in the JSON). "1st batch s" is the time from the loader's build to its
first batch (median of the repeats); through a capped relay, "expect s" beside it is the first
slice's bytes (every tar and index of epoch 0's slice, all missing from the fresh cache) over the
bandwidth, and "diff s" the difference. The read/loader rows of s3:// also go through the cache.
Then one more untimed run of the same epochs hashes every batch (sha256 of the images' and the
labels' bytes): "same" says whether each source's batches are the disk's, batch for batch (the
loaders of one seed must give torch.equal batches); a difference makes the exit status 1.

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


def epochs_loader(shards, batch, threads, shuffle_buffer, prefetch, cache):
    """The training loader the epoch rows time and hash (one seed: the default)."""
    from pipeline import build_loader

    return build_loader(shards, "train", batch, device="cpu", lighting=0.1, num_threads=threads,
                        prefetch=prefetch, shuffle_buffer=shuffle_buffer, cache_dir=cache)


def measure_epochs(shards, batch, threads, epochs, shuffle_buffer, prefetch):
    """(img/s over `epochs` whole epochs, from the loader's build to its last batch; seconds to the
    first batch; bytes of epoch 0's slice, 0 on disk): for s3:// through a fresh local shard cache
    (pipeline.cache), so the first epoch's download is inside the time. The slice's bytes are
    read after the timing from the sizes the cache listed while downloading (no request inside
    it); the cache being fresh, they are all the bytes the first batch waited for."""
    with tempfile.TemporaryDirectory(prefix="bench-s3-cache-") as cache:
        t = time.perf_counter()
        loader = epochs_loader(shards, batch, threads, shuffle_buffer, prefetch, cache)
        images, first = 0, None
        for epoch in range(epochs):
            for x, _ in loader:
                images += len(x)
                first = first if first is not None else time.perf_counter() - t
        rate = images / (time.perf_counter() - t)
        loader.close()
        slice_bytes = sum(loader.cache.size(s) for s in loader.epoch_slice(0).shards) if loader.cache else 0
    return rate, first, slice_bytes


def batch_digests(shards, batch, threads, epochs, shuffle_buffer, prefetch):
    """sha256 of each batch (images, then labels) of the epoch rows' loader over `epochs` epochs,
    untimed, from a fresh cache: equal digests ⇔ torch.equal batches, in the same order."""
    import hashlib

    out = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-check-") as cache:
        loader = epochs_loader(shards, batch, threads, shuffle_buffer, prefetch, cache)
        for epoch in range(epochs):
            for x, y in loader:
                h = hashlib.sha256(x.contiguous().numpy().tobytes())
                h.update(y.contiguous().numpy().tobytes())
                out.append(h.hexdigest())
        loader.close()
    return out


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
    p.add_argument("--bandwidth-mbs", type=float, default=None,
                   help="cap each relay's server-to-client bandwidth at this many MB/s, shared by its connections "
                        "(without --latency-ms: one relay of 0 ms)")
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
    p.add_argument("--epoch-round", action="store_true", help=argparse.SUPPRESS)  # internal: one epochs timing
    a = p.parse_args(argv)
    if a.measure and a.epoch_round:  # one timing of whole epochs, in a round over every source
        from pipeline.graph import require_dali

        require_dali()  # DALI's import (about a second) is no part of either source's time
        rate, first, slice_bytes = measure_epochs(a.measure, a.batch_size, a.threads, a.epochs, a.shuffle_buffer,
                                                  a.prefetch)
        print(json.dumps({"epochs": rate, "first_batch_s": first, "slice_bytes": slice_bytes}))
        return
    if a.measure:
        args = (a.measure, a.batch_size, a.threads, a.warmup, a.batches, a.shuffle_buffer, a.prefetch)
        reads = [measure_reader(*args, log=a.log) for _ in range(a.repeats)]
        loads = [measure_loader(*args) for _ in range(a.repeats)]
        gets = [g for _, g in reads if g is not None]
        args = (a.measure, a.batch_size, a.threads, a.epochs, a.shuffle_buffer, a.prefetch)
        print(json.dumps({"read": statistics.median(r for r, _ in reads), "loader": statistics.median(loads),
                          "gets_per_sample": statistics.median(gets) if gets else None,
                          "digests": batch_digests(*args) if a.epochs else []}))
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
    bandwidth = a.bandwidth_mbs * 1e6 if a.bandwidth_mbs else None
    latencies = [ms for ms in a.latency_ms.split(",") if ms] or (["0"] if bandwidth else [])

    server, relays = None, []
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
        capped = set()
        for ms in latencies:
            if server is None:
                sys.exit("bench_s3: --latency-ms and --bandwidth-mbs need the local server (not --s3)")
            relay = Relay(server.port, float(ms) / 1e3, bandwidth)
            relays.append(relay)
            name = f"s3+{ms}ms" + (f"@{a.bandwidth_mbs:g}MB/s" if bandwidth else "")
            sources[name] = (url, relay.endpoint)
            if bandwidth:
                capped.add(name)
        rows, digests = {}, {}
        def measure(name, *extra):
            """One child process measuring source `name` (DALI's S3 client reads AWS_ENDPOINT_URL
            once per process), with a fresh default shard cache of its own (not ~/.cache)."""
            where, endpoint = sources[name]
            env = dict(os.environ)
            env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix=f"cache-{name.replace('/', '_')}-", dir=tmp.name if tmp else None)
            if endpoint:
                env["AWS_ENDPOINT_URL"] = endpoint
            command = [sys.executable, os.path.abspath(__file__), "--measure", where, "--batch-size", str(a.batch_size),
                       "--warmup", str(a.warmup), "--batches", str(batches), "--threads", str(threads),
                       "--repeats", str(a.repeats), "--epochs", str(a.epochs), "--shuffle-buffer", str(a.shuffle_buffer),
                       "--prefetch", str(a.prefetch), *extra]
            child = subprocess.run(command, env=env, capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"bench_s3: measuring {name} failed:\n{child.stderr[-2000:]}")
            return json.loads(child.stdout.strip().splitlines()[-1])

        # whole epochs: rounds over the sources, each source once per round, so that the machine's
        # drift falls on every source alike; "vs disk" is the median of each round's ratio
        rounds = [{name: measure(name, "--epoch-round") for name in sources} for _ in range(a.repeats)] \
            if a.epochs else []
        for name in sources:
            m = measure(name, *(["--log", log] if log and name != "disk" else []))
            runs = [r[name] for r in rounds] or [{"epochs": 0.0, "first_batch_s": 0.0, "slice_bytes": 0}]
            m.update(epochs=statistics.median(r["epochs"] for r in runs),
                     first_batch_s=statistics.median(r["first_batch_s"] for r in runs),
                     first_batch_s_all=[r["first_batch_s"] for r in runs], slice_bytes=runs[0]["slice_bytes"],
                     vs_disk=statistics.median(r[name]["epochs"] / r["disk"]["epochs"] for r in rounds) if rounds else None,
                     vs_disk_all=[r[name]["epochs"] / r["disk"]["epochs"] for r in rounds])
            read, load, per_sample = m["read"], m["loader"], m["gets_per_sample"]
            rows[name] = {"read_img_s": round(read, 1), "read_MB_s": round(read * tar_bytes / 1e6, 2),
                          "loader_img_s": round(load, 1), "loader_MB_s": round(load * tar_bytes / 1e6, 2),
                          "gets_per_sample": round(per_sample, 2) if per_sample is not None else None,
                          "ms_per_get": round(1e3 / (read * per_sample), 2) if per_sample else None,
                          "epochs_img_s": round(m["epochs"], 1), "first_batch_s": round(m["first_batch_s"], 2),
                          "first_batch_s_runs": [round(f, 2) for f in m["first_batch_s_all"]],
                          "slice_MB": round(m["slice_bytes"] / 1e6, 2)}
            if name in capped and a.epochs:  # the first slice over the relay's bandwidth
                expect = m["slice_bytes"] / bandwidth
                rows[name].update(expect_first_batch_s=round(expect, 2),
                                  first_batch_diff_s=round(m["first_batch_s"] - expect, 2))
            rows[name]["vs_disk"] = round(m["vs_disk"], 3) if m["vs_disk"] is not None else None
            rows[name]["vs_disk_runs"] = [round(v, 3) for v in m["vs_disk_all"]]
            digests[name] = m["digests"]
            rows[name]["same_batches"] = (len(m["digests"]) > 0 and m["digests"] == digests["disk"]) if a.epochs else None
            say(f"{name}: {rows[name]}")
    finally:
        for relay in relays:  # a relay left running would hold this process's stderr open
            relay.close()
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    result = {"threads": threads, "prefetch": a.prefetch, "batch_size": a.batch_size, "samples": train.samples,
              "shards": len(train.shards), "batches_timed": batches, "latency_ms": latencies,
              "bandwidth_MB_s": a.bandwidth_mbs, "epochs": a.epochs, "batches_compared": len(digests.get("disk", [])),
              "tar_bytes_per_sample": round(tar_bytes), "jpeg_bytes_mean": round(statistics.mean(jpeg)),
              "upload_MB_s": round(up.bytes_sent / 1e6 / upload_s, 1), "server": "moto_server on 127.0.0.1" if server else url,
              "rows": rows}
    differ = [name for name, r in rows.items() if r["same_batches"] is False]
    if a.json:
        print(json.dumps(result))
        sys.exit(1 if differ else 0)
    print(f"bench_s3: {train.samples} samples in {len(train.shards)} shards, {result['tar_bytes_per_sample']:,} tar "
          f"bytes/sample (JPEG mean {result['jpeg_bytes_mean']:,} B), batch {a.batch_size}, {threads} DALI threads, "
          f"prefetch {a.prefetch}, "
          f"{batches} timed batches, median of {a.repeats}; S3: {result['server']} "
          f"(upload {result['upload_MB_s']} MB/s)" + (f"; relays capped at {a.bandwidth_mbs:g} MB/s" if bandwidth else ""))
    width = max(12, *(len(name) for name in rows))
    print(f"{'source':<{width}} {'read img/s':>10} {'read MB/s':>10} {'loader img/s':>13} {'loader MB/s':>12} "
          f"{'GET/sample':>11} {'ms/GET':>7} {'epochs img/s':>13} {'vs disk':>8} {'slice MB':>9} {'1st batch s':>12} "
          f"{'expect s':>9} {'diff s':>7} {'same':>5}")
    for name, r in rows.items():
        g = "" if r["gets_per_sample"] is None else f"{r['gets_per_sample']:.2f}"
        m = "" if r["ms_per_get"] is None else f"{r['ms_per_get']:.2f}"
        e = f"{r['expect_first_batch_s']:.2f}" if "expect_first_batch_s" in r else ""
        d = f"{r['first_batch_diff_s']:+.2f}" if "first_batch_diff_s" in r else ""
        same = {True: "yes", False: "NO", None: ""}[r["same_batches"]]
        print(f"{name:<{width}} {r['read_img_s']:>10.1f} {r['read_MB_s']:>10.2f} {r['loader_img_s']:>13.1f} "
              f"{r['loader_MB_s']:>12.2f} {g:>11} {m:>7} {r['epochs_img_s']:>13.1f} {r['vs_disk'] or 0:>8.3f} "
              f"{r['slice_MB'] or '':>9} {r['first_batch_s']:>12.2f} {e:>9} {d:>7} {same:>5}")
    if a.epochs:
        print(f"same batches: {result['batches_compared']} batches of {a.epochs} epochs compared by sha256; "
              + (f"DIFFERENT from disk: {', '.join(differ)}" if differ else "every source's are the disk's"))
    if differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
