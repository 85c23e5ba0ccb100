"""Benchmark `alexnet preprocess` against a plain PIL script, as whole commands, side by side.

The peer is the script everyone writes first: open -> convert("RGB") -> bicubic resize of the
whole image -> centre crop -> JPEG q90 -> tar, one image after another in one process. Both are
timed as complete commands (interpreter start-up included) on the same photo-like JPEGs, and the
quality of `alexnet preprocess` is checked as the PSNR of its shards against the peer's bicubic
reference (the exact geometry of docs/DESIGN.md, "Shard directory", before JPEG encoding).

    python scripts/bench_preprocess.py --pin                # 600 generated photos, one core each
    python scripts/bench_preprocess.py --workers 1 2 --filters bilinear bicubic --repeat 3
    python scripts/bench_preprocess.py --src /data/ILSVRC2012  # a real ImageNet layout (train/)
    python scripts/bench_preprocess.py --pin --compare /tmp/old-checkout  # before/after, side by side

Commands run interleaved (plain, ours, plain, ours, ...) and the median wall time of each is
kept, so a busy spell on a shared machine hits all of them alike; --pin gives each command as
many CPUs as it has workers (the plain script one).

Photos are generated deterministically (seeded): 333-1600 px on each side, JPEG quality 75-95,
smooth gradients + shapes + texture + sensor noise, so the bytes per pixel resemble real photos.
"""
import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = 10

# The peer: a plain PIL script, run as its own command (python -c) like a user would.
PLAIN_SCRIPT = r'''
import io, os, sys, tarfile
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(src, "train")) for f in fs)
with tarfile.open(out, "w") as tar:
    for i, path in enumerate(files):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        W, H = max(256, round(w * s)), max(256, round(h * s))
        im = im.resize((W, H), Image.BICUBIC)
        l, t = (W - 256) // 2, (H - 256) // 2
        im = im.crop((l, t, l + 256, t + 256))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        info = tarfile.TarInfo(f"{i:08d}.jpg")
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)
'''


def photo(rng) -> Image.Image:
    """One photo-like RGB image: 333-1600 px per side, gradients, shapes, texture, noise."""
    short = int(rng.integers(333, 1000))
    aspect = float(rng.uniform(1.0, 1.6))
    long_ = int(min(1600, round(short * aspect)))
    w, h = (long_, short) if rng.random() < 0.7 else (short, long_)
    # smooth background: a coarse random field blown up bicubically
    coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.35) * min(w, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=colour)
        else:
            k = int(rng.integers(3, 8))
            ang = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, k, endpoint=False)
            rad = r * rng.uniform(0.5, 1.0, k)
            draw.polygon(list(zip((cx + rad * np.cos(ang)).tolist(), (cy + rad * np.sin(ang)).tolist())), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    a = np.asarray(img, np.float32)
    # texture at a few scales (foliage, fabric) and sensor noise
    for scale, amp in ((4, 12.0), (2, 8.0)):
        tex = rng.normal(0, 1, (h // scale + 1, w // scale + 1)).astype(np.float32)
        tex = np.asarray(Image.fromarray(tex).resize((w, h), Image.BILINEAR))
        a += tex[..., None] * float(rng.uniform(0.5, 1.5) * amp)
    a += rng.normal(0, float(rng.uniform(3, 8)), a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_photos(root, n, seed=0):
    """n photos in an ImageNet train layout under root (CLASSES class folders)."""
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        folder = os.path.join(root, "train", f"n{1000000 + i % CLASSES:08d}")
        os.makedirs(folder, exist_ok=True)
        photo(rng).save(os.path.join(folder, f"img_{i:05d}.JPEG"), "JPEG", quality=int(rng.integers(75, 96)))


def timed(cmd, cpus=None, cwd=None):
    """Wall seconds of one whole command, optionally pinned to the given CPUs."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, preexec_fn=pin, cwd=cwd)
    return time.perf_counter() - t


def reference(path):
    """The bicubic reference: full resize to the exact W x H, then the centre crop (uint8)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    W, H = max(256, round(w * s)), max(256, round(h * s))
    im = im.resize((W, H), Image.BICUBIC)
    l, t = (W - 256) // 2, (H - 256) // 2
    return np.asarray(im.crop((l, t, l + 256, t + 256)), np.float64)


def psnr(a, b):
    mse = np.mean((a - b) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def quality(src, out):
    """Mean PSNR (dB) of the shards' JPEGs against the bicubic reference of their sources."""
    values = []
    for name in sorted(os.listdir(out)):
        if not name.endswith(".tar"):
            continue
        with tarfile.open(os.path.join(out, name)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for mname, data in members.items():
            if not mname.endswith(".json"):
                continue
            meta = json.loads(data)
            got = np.asarray(Image.open(io.BytesIO(members[mname[:-5] + ".jpg"])).convert("RGB"), np.float64)
            values.append(psnr(got, reference(os.path.join(src, meta["src"]))))
    return float(np.mean(values)), float(np.min(values)), len(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", help="an ImageNet-layout folder (default: generate photos)")
    ap.add_argument("--images", type=int, default=600, help="photos to generate (default 600)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to time (default 1)")
    ap.add_argument("--filters", nargs="+", default=["bilinear", "bicubic"], help="--filter values to time")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each command; the median is kept")
    ap.add_argument("--keep", help="generate the photos into this folder and keep them (reused if present)")
    ap.add_argument("--pin", action="store_true",
                    help="pin each timed command to one CPU per worker (plain script and -w 1: one core)")
    ap.add_argument("--compare", metavar="DIR", nargs="+", default=[],
                    help="also time (and check the PSNR of) `alexnet preprocess` run from other checkouts "
                         "of this project (e.g. the previous commit), side by side with this one")
    args = ap.parse_args()
    for d in args.compare:
        if not os.path.isfile(os.path.join(d, "alexnet_cli.py")):
            ap.error(f"--compare {d}: no alexnet_cli.py there")

    tmp = tempfile.mkdtemp(prefix="bench-preprocess-")
    try:
        src = args.src or args.keep or os.path.join(tmp, "src")
        if not args.src and not os.path.isdir(os.path.join(src, "train")):
            t = time.perf_counter()
            make_photos(src, args.images)
            print(f"generated {args.images} photos in {time.perf_counter() - t:.1f} s -> {src}", file=sys.stderr)
        n = sum(len(fs) for _, _, fs in os.walk(os.path.join(src, "train")))
        mb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(src, "train")) for f in fs) / 1e6
        print(f"source: {src}: {n} training images, {mb:.1f} MB")

        alexnet = [sys.executable, "-m", "alexnet_cli", "preprocess", src]
        # name -> (command maker, CPUs, working directory: `-m alexnet_cli` imports from there first)
        commands = {"plain PIL script": (lambda out: [sys.executable, "-c", PLAIN_SCRIPT, src, out], 1, None)}
        checkouts = {"": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        for i, d in enumerate(args.compare):
            checkouts[f"[{os.path.basename(os.path.normpath(d)) or i}] "] = os.path.abspath(d)
        for f in args.filters:
            for w in args.workers:
                for tag, cwd in checkouts.items():
                    commands[f"{tag}preprocess --workers {w} --filter {f}"] = (
                        lambda out, w=w, f=f: alexnet + [out, "--split", "train", "--workers", str(w), "--filter", f, "-q"],
                        w, cwd)
        cpus = sorted(os.sched_getaffinity(0))
        # interleaved repeats, so a slow spell of a shared machine hits every command alike
        times = {name: [] for name in commands}
        for r in range(args.repeat):
            for name, (make_cmd, n_cpus, cwd) in commands.items():
                out = os.path.join(tmp, "out")
                times[name].append(timed(make_cmd(out), set(cpus[:n_cpus]) if args.pin else None, cwd))
                shutil.rmtree(out) if os.path.isdir(out) else os.remove(out)
        plain = float(np.median(times["plain PIL script"]))
        results = {"images": n, "repeat": args.repeat, "pinned": args.pin, "plain_img_s": round(n / plain, 1)}
        width = max(38, max(map(len, commands)))
        print(f"{'command':{width}s} {'img/s':>8s} {'seconds':>8s} {'vs plain':>8s}   (median of {args.repeat}; "
              f"min-max seconds)")
        for name in commands:
            t = float(np.median(times[name]))
            print(f"{name:{width}s} {n / t:8.1f} {t:8.2f} {plain / t:7.2f}x   "
                  f"({min(times[name]):.2f}-{max(times[name]):.2f})")
            results[name] = {"img_s": round(n / t, 1), "ratio": round(plain / t, 2),
                             "seconds": [round(x, 3) for x in times[name]]}
        for f in args.filters:
            for tag, cwd in checkouts.items():
                out = os.path.join(tmp, f"out-psnr-{f}")
                subprocess.run(alexnet + [out, "--split", "train", "--filter", f, "-q"], check=True,
                               stdout=subprocess.DEVNULL, cwd=cwd)
                mean_db, min_db, k = quality(src, out)
                shutil.rmtree(out)
                print(f"{tag}PSNR --filter {f} vs bicubic reference, after encoding: mean {mean_db:.2f} dB, "
                      f"min {min_db:.2f} dB ({k} images)")
                results[f"{tag}psnr_{f}_db"] = {"mean": round(mean_db, 2), "min": round(min_db, 2)}
        print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
