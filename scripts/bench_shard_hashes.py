"""What `alexnet train`'s sha256 check of the shards (shards.checksum) costs, per 100 GB.

Writes --gb of shard-sized files (25 MB of random bytes each, an ImageNet tar's size) to a
temporary folder, then hashes them with `check_shard_hashes` for each thread count: "cold"
after evicting the files from the page cache (posix_fadvise DONTNEED, no root needed), so the
disk is read; "warm" from the page cache, the hashing alone; and "cached", a resume reading
the cache file. Prints one line per measurement and the seconds per 100 GB.

    python scripts/bench_shard_hashes.py --gb 2 --threads 1 2
"""
import argparse
import hashlib
import os
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shards.checksum import check_shard_hashes  # noqa: E402

SHARD_BYTES = 25 << 20


def make(folder, gb):
    shards = []
    for i in range(max(1, int(gb * 1e9 // SHARD_BYTES))):
        name = f"train-{i:06d}.tar"
        data = os.urandom(SHARD_BYTES)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shards.append(SimpleNamespace(tar=name, sha256=hashlib.sha256(data).hexdigest()))
    return SimpleNamespace(splits={"train": SimpleNamespace(shards=shards)})


def evict(folder):
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as folder:
        manifest = make(folder, a.gb)
        total = sum(os.path.getsize(os.path.join(folder, s.tar)) for s in manifest.splits["train"].shards)
        print(f"{len(manifest.splits['train'].shards)} files, {total / 1e9:.2f} GB in {folder}; "
              f"{os.cpu_count()} cores")
        cache = os.path.join(folder, "hashes.json")
        for threads in a.threads:
            for mode in ("cold", "warm"):
                if mode == "cold":
                    evict(folder)
                t0 = time.perf_counter()
                check_shard_hashes(folder, manifest, threads=threads)
                s = time.perf_counter() - t0
                print(f"{mode:6s} threads {threads:2d}: {total / s / 1e9:.2f} GB/s, "
                      f"{100e9 / total * s:,.0f} s per 100 GB")
        check_shard_hashes(folder, manifest, cache=cache)
        t0 = time.perf_counter()
        check_shard_hashes(folder, manifest, cache=cache)
        s = time.perf_counter() - t0
        print(f"cached (a resume): {s * 1e3:.1f} ms for {len(manifest.splits['train'].shards)} files")


if __name__ == "__main__":
    main()
