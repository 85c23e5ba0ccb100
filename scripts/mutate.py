#!/usr/bin/env python3
"""A mutation check of the test suite: does each core module's test file catch a deliberate bug?

Each mutation below replaces one exact snippet of a module with a plausible bug, in a COPY of the
project (the files `git ls-files` lists, tracked and new; the working tree is never touched), and
runs the tests named for it there (`pytest -x -q`). The mutation is

  killed     the tests failed (or timed out), as they should;
  survived   the tests passed: a bug they do not see (exit 1 unless the mutation is `accepted`,
             with the reason it is harmless);
  stale      the snippet is no longer in the file (or is there more than once): update the list.

Each distinct set of tests is first run on the unchanged copy; a set that fails there makes its
mutations "untested" (and the exit status 1), since their "killed" would mean nothing.

    python scripts/mutate.py                      # all of them (about 15 min on 2 CPU cores)
    python scripts/mutate.py --only writer lrn    # those whose name contains a word given
    python scripts/mutate.py --list               # names, files and tests, nothing run
    python scripts/mutate.py --report out.md      # also a Markdown table of the results
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the project's root
    old: str  # the exact snippet, found once in the file
    new: str
    tests: Tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    accepted: Optional[str] = None  # why a survivor is harmless


WRITER = ("tests/test_writer.py", "tests/test_verify.py")
STATS = ("tests/test_stats.py", "tests/test_sums.py", "tests/test_finish.py", "tests/test_verify.py")
TRANSFORM = ("tests/test_transform.py",)
GRAPH = ("tests/test_dali_loader.py",)
DRAWS = ("tests/test_draws.py", "tests/test_dali_loader.py")
MODEL = ("tests/test_model.py", "tests/test_model_grouped.py")
LRN = ("tests/test_response_norm.py",)
OPTIM = ("tests/test_optim.py",)
TRAINER = ("tests/test_trainer.py",)

MUTATIONS = (
    # --- shards/writer.py --------------------------------------------------------------------
    Mutation("writer: a member of whole blocks gets a needless padding block (issue 21)", "shards/writer.py",
             'tar.fileobj.write(header + data + (tarfile.NUL * (tarfile.BLOCKSIZE - rest) if rest else b""))\n'
             "        tar.offset = offset + (blocks + (1 if rest else 0)) * tarfile.BLOCKSIZE",
             "tar.fileobj.write(header + data + tarfile.NUL * (tarfile.BLOCKSIZE - rest))\n"
             "        tar.offset = offset + (blocks + 1) * tarfile.BLOCKSIZE", ("tests/test_writer.py",)),
    Mutation("writer: the index counts a whole-block member one block long", "shards/writer.py",
             "tar.offset = offset + (blocks + (1 if rest else 0)) * tarfile.BLOCKSIZE",
             "tar.offset = offset + (blocks + 1) * tarfile.BLOCKSIZE", ("tests/test_writer.py",)),
    Mutation("writer: index offsets point at the header", "shards/writer.py",
             "offset = tar.offset + len(header)  # data", "offset = tar.offset  # data", WRITER),
    Mutation("writer: the label is left out of KEY.json", "shards/writer.py",
             "meta = dict(meta, label=int(label))", "meta = dict(meta)", WRITER),
    Mutation("writer: member mtime not fixed (shards not byte-deterministic)", "shards/writer.py",
             "info.mtime = 0", "info.mtime = os.getpid()", WRITER),
    Mutation("writer: the sha256 skips part of each write", "shards/writer.py",
             "self.sha256.update(b)", "self.sha256.update(b[:512])", WRITER),
    Mutation("writer: the index's sample count is not checked", "shards/writer.py",
             "if int(head[1]) != len(samples):", "if False:", WRITER),
    # --- shards/stats.py ---------------------------------------------------------------------
    Mutation("stats: eigenvectors left in eigh's ascending order", "shards/stats.py",
             "eigval, eigvec = eigval[order], eigvec[:, order]", "pass", STATS),
    Mutation("stats: covariance without the mean subtracted", "shards/stats.py",
             "cov = (self.outer / n - np.outer(mu, mu)) / 255.0**2", "cov = (self.outer / n) / 255.0**2", STATS),
    Mutation("stats: eigenvector signs not fixed", "shards/stats.py",
             "eigvec = eigvec * np.where(eigvec.sum(axis=0) < 0, -1.0, 1.0)", "eigvec = eigvec", STATS),
    Mutation("stats: merge drops the per-pixel sums", "shards/stats.py",
             "self.pixel_sum += other.pixel_sum", "pass", STATS),
    Mutation("stats: mean image divided by 256", "shards/stats.py",
             "(self.pixel_sum / (self.images * 255.0))", "(self.pixel_sum / (self.images * 256.0))", STATS),
    Mutation("stats: std is the variance", "shards/stats.py",
             '"std": np.sqrt(np.diag(cov)).tolist()', '"std": np.diag(cov).tolist()', STATS),
    Mutation("stats: eigenvectors written as rows", "shards/stats.py",
             '"eigvec": eigvec.tolist()', '"eigvec": eigvec.T.tolist()', STATS),
    # --- preprocess/transform.py -------------------------------------------------------------
    Mutation("transform: 16-bit grey truncated, a >> 8 (issue 21)", "preprocess/transform.py",
             "grey = np.clip((a * 255 + 32767) // 65535, 0, 255).astype(np.uint8)",
             "grey = np.clip(a >> 8, 0, 255).astype(np.uint8)", TRANSFORM),
    Mutation("transform: the crop corner rounds up (issue 21; without test_geometry_is_exact)",
             "preprocess/transform.py",
             "return Geometry(W, H, (W - size) // 2, (H - size) // 2)",
             "return Geometry(W, H, (W - size + 1) // 2, (H - size + 1) // 2)",
             TRANSFORM + ("-k", "not test_geometry_is_exact")),
    Mutation("transform: crop axes swapped", "preprocess/transform.py",
             "return (g.left * fx, g.top * fy, x1, y1)", "return (g.top * fx, g.left * fy, x1, y1)", TRANSFORM),
    Mutation("transform: OpenCV's 2-tap kernel up to a reduction of 2.5", "preprocess/transform.py",
             "_CV_MIN_FACTOR = 2 / 3", "_CV_MIN_FACTOR = 0.4", TRANSFORM),
    Mutation("transform: the DCT scale left out of Pillow's box", "preprocess/transform.py",
             "box=crop_box(w, h, size, scale, (dw, dh))", "box=crop_box(w, h, size, 1.0, (dw, dh))", TRANSFORM),
    Mutation("transform: scale from the longer side", "preprocess/transform.py",
             "s = size / min(w, h)", "s = size / max(w, h)", TRANSFORM),
    Mutation("transform: libjpeg-turbo never strict (truncated data padded)", "preprocess/transform.py",
             "strict=not lenient", "strict=False", TRANSFORM),
    Mutation("transform: 4:4:4 chroma instead of 4:2:0", "preprocess/transform.py",
             'CHROMA_SUBSAMPLING = "420"', 'CHROMA_SUBSAMPLING = "444"', TRANSFORM),
    # --- pipeline/graph.py -------------------------------------------------------------------
    Mutation("graph: mirror ignored", "pipeline/graph.py", "mirror=mirror, mean=mean", "mirror=0, mean=mean", GRAPH),
    Mutation("graph: crop axes swapped", "pipeline/graph.py",
             "crop_pos_x=x0, crop_pos_y=y0", "crop_pos_x=y0, crop_pos_y=x0", GRAPH),
    Mutation("graph: the mean image not subtracted", "pipeline/graph.py",
             "images = images - mean_image_constant(graph)", "images = images", GRAPH),
    Mutation("graph: the lighting-folded mean not used", "pipeline/graph.py",
             '        mean = args["shift"]\n', "        pass\n", GRAPH),
    Mutation("graph: ten-crop views with x and y swapped", "pipeline/graph.py",
             "cut(x / STRIDE, y / STRIDE, m)", "cut(y / STRIDE, x / STRIDE, m)", GRAPH),
    Mutation("graph: the CPU's ROI decode (uint8 hand-off) crops at the centre", "pipeline/graph.py",
             'crop=(CROP, CROP),\n                                      crop_pos_x=args["x"], crop_pos_y=args["y"])',
             'crop=(CROP, CROP),\n                                      crop_pos_x=0.5, crop_pos_y=0.5)', GRAPH),
    # --- pipeline/draws.py -------------------------------------------------------------------
    Mutation("draws: the crop never starts at offset 31", "pipeline/draws.py",
             "integers(0, [STRIDE, STRIDE, 2]", "integers(0, [STRIDE - 1, STRIDE - 1, 2]", DRAWS),
    Mutation("draws: never mirrored", "pipeline/draws.py",
             "integers(0, [STRIDE, STRIDE, 2]", "integers(0, [STRIDE, STRIDE, 1]", DRAWS),
    Mutation("draws: lighting with eigenvector rows, not columns", "pipeline/draws.py",
             "return (np.asarray(alpha, np.float64) * eigval) @ eigvec.T",
             "return (np.asarray(alpha, np.float64) * eigval) @ eigvec", DRAWS),
    Mutation("draws: lighting sign flipped", "pipeline/draws.py",
             "return (np.asarray(alpha, np.float64) * eigval) @ eigvec.T",
             "return -(np.asarray(alpha, np.float64) * eigval) @ eigvec.T", DRAWS),
    Mutation("draws: every rank draws the same numbers", "pipeline/draws.py",
             "np.random.SeedSequence([seed, rank, epoch]).spawn(2)", "np.random.SeedSequence([seed, epoch]).spawn(2)",
             DRAWS),
    Mutation("draws: crops and lighting from one stream", "pipeline/draws.py",
             "crop_seq, light_seq = np.random.SeedSequence([seed, rank, epoch]).spawn(2)",
             "crop_seq = light_seq = np.random.SeedSequence([seed, rank, epoch])", DRAWS),
    Mutation("draws: the centre crop one pixel off", "pipeline/draws.py",
             "CENTRE = STRIDE // 2", "CENTRE = STRIDE // 2 + 1", DRAWS),
    Mutation("draws: ten-crop's mirrored corners in the unmirrored order", "pipeline/draws.py",
             "(STRIDE, 0, 1), (0, 0, 1), (STRIDE, STRIDE, 1), (0, STRIDE, 1)",
             "(0, 0, 1), (STRIDE, 0, 1), (0, STRIDE, 1), (STRIDE, STRIDE, 1)", DRAWS),
    # --- train/model.py ----------------------------------------------------------------------
    Mutation("model: fc8 reads column 1 twice (issue 21; test_model.py alone)", "train/model.py",
             "logits = self.fc8(torch.cat([a0, a1.to(d0, non_blocking=True)], 1))",
             "logits = self.fc8(torch.cat([a0, a0], 1))", ("tests/test_model.py",)),
    Mutation("model: column 2 ignores column 1 at conv3 (issue 21; test_model.py alone)", "train/model.py",
             "a0, a1 = _exchange(col0.features2, col1.features2, a0, a1, d0, d1)",
             "a0, a1 = col0.features2(torch.cat([a0, a1], 1)), col1.features2(torch.cat([a1, a1], 1))",
             ("tests/test_model.py",)),
    Mutation("model: column 1 ignores column 2 at conv3 (test_model.py alone)", "train/model.py",
             "a0, a1 = _exchange(col0.features2, col1.features2, a0, a1, d0, d1)",
             "a0, a1 = col0.features2(torch.cat([a0, a0], 1)), col1.features2(torch.cat([a0, a1], 1))",
             ("tests/test_model.py",)),
    Mutation("model: column 2 reads the columns in the other order", "train/model.py",
             "b1 = f1(torch.cat([a0.to(d1, non_blocking=True), a1], 1))",
             "b1 = f1(torch.cat([a1, a0.to(d1, non_blocking=True)], 1))", MODEL),
    Mutation("model: conv1 unpadded (54x54 maps)", "train/model.py",
             "kernel_size=11, stride=4, padding=2", "kernel_size=11, stride=4, padding=0", MODEL),
    Mutation("model: dropout's test-time halving left out", "train/model.py",
             "return x * (1.0 - self.p)", "return x", MODEL),
    Mutation("model: dropout doubles the kept units (nn.Dropout's form)", "train/model.py",
             "return x * keep\n", "return x * keep / (1.0 - self.p)\n", MODEL),
    Mutation("model: no LRN after conv2", "train/model.py",
             "return self.pool(self.lrn(torch.relu(self.conv2(x))))", "return self.pool(torch.relu(self.conv2(x)))",
             MODEL),
    Mutation("model: caffe biases of 1", "train/model.py",
             "layer.bias.fill_(0.1 if name in paper_ones else 0.0)",
             "layer.bias.fill_(1.0 if name in paper_ones else 0.0)", MODEL),
    # --- train/response_norm.py --------------------------------------------------------------
    Mutation("lrn: the backward's window not mirrored", "train/response_norm.py",
             "ws = _add_window(g * r, t, (size - 1) // 2, size // 2)",
             "ws = _add_window(g * r, t, size // 2, (size - 1) // 2)", LRN),
    Mutation("lrn: the backward's factor 2 left out", "train/response_norm.py",
             "value=-2.0 * alpha * beta", "value=-alpha * beta", LRN),
    Mutation("lrn: the centre term left out of the sum", "train/response_norm.py",
             "s = torch.addcmul(x.new_tensor(k), x, x, value=alpha)",
             "s = torch.addcmul(x.new_tensor(k), x, x, value=0.0)", LRN),
    Mutation("lrn: s^-1/4 instead of s^-3/4", "train/response_norm.py",
             "p.mul_(t)                                                # s^-3/4",
             "p.mul_(1.0)                                              # s^-3/4", LRN),
    Mutation("lrn: the module divides alpha by n (PyTorch's convention)", "train/response_norm.py",
             "return lrn(x, self.size, self.alpha, self.beta, self.k)",
             "return lrn(x, self.size, self.alpha / self.size, self.beta, self.k)", LRN),
    Mutation("lrn: half inputs computed in half", "train/response_norm.py",
             "compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype",
             "compute_dtype = x.dtype", LRN),
    # --- train/optim.py ----------------------------------------------------------------------
    Mutation("optim: weight decay not scaled by the rate (single)", "train/optim.py",
             "v.add_(w, alpha=-weight_decay * lr)", "v.add_(w, alpha=-weight_decay)", OPTIM),
    Mutation("optim: weight decay not scaled by the rate (foreach)", "train/optim.py",
             "torch._foreach_add_(vs, ws, alpha=-weight_decay * lr)", "torch._foreach_add_(vs, ws, alpha=-weight_decay)",
             OPTIM),
    Mutation("optim: torch.optim.SGD's form (rate outside the velocity)", "train/optim.py",
             "torch._foreach_add_(vs, gs, alpha=-lr)\n        torch._foreach_add_(ws, vs)",
             "torch._foreach_add_(vs, gs, alpha=-1.0)\n        torch._foreach_add_(ws, vs, alpha=lr)", OPTIM),
    Mutation("optim: biases decayed too", "train/optim.py",
             '(not_decayed if name.endswith("bias") or p.ndim <= 1 else decayed).append(p)', "decayed.append(p)",
             OPTIM),
    Mutation("optim: the velocity restarts every step", "train/optim.py",
             'if "momentum_buffer" not in state:', "if True:", OPTIM),
    Mutation("optim: no momentum (single)", "train/optim.py", "v.mul_(momentum)", "v.mul_(0.0)", OPTIM),
    Mutation("optim: foreach=False runs the foreach kernels", "train/optim.py",
             'update = _update_single if group["foreach"] is False else _update_foreach',
             "update = _update_foreach", OPTIM,
             accepted="equivalent: both update functions compute Section 5's rule (tested against the same "
                      "direct loop); the flag only picks the kernels"),
    # --- demo/sample_data.py (the learnability bar of tests/test_sample_data.py) ----------------
    Mutation("sample data: objects a third as large (a weaker class signal)", "demo/sample_data.py",
             "r = short * rng.uniform(0.30, 0.70) / 2", "r = short * rng.uniform(0.10, 0.23) / 2",
             ("tests/test_sample_data.py",)),
    Mutation("sample data: object colours jittered 5x as much", "demo/sample_data.py",
             "def _jitter_colour(rng, rgb, spread=14.0)", "def _jitter_colour(rng, rgb, spread=70.0)",
             ("tests/test_sample_data.py",)),
    # --- train/trainer.py --------------------------------------------------------------------
    # the trainer's checkpoint state and resume (train/resume.py, the trainer's since issue 20)
    Mutation("trainer: a resume leaves the RNG state as seeded", "train/resume.py",
             "set_rng_state(rng[t.rank] if isinstance(rng, list) else rng, t.devices)", "pass", TRAINER),
    Mutation("trainer: every rank resumes rank 0's RNG state", "train/resume.py",
             "set_rng_state(rng[t.rank] if isinstance(rng, list) else rng, t.devices)",
             "set_rng_state(rng[0] if isinstance(rng, list) else rng, t.devices)", TRAINER),
    Mutation("trainer: only this rank's RNG state saved", "train/resume.py",
             "if t.world > 1:  # every rank's own states", "if False:  # every rank's own states", TRAINER),
    Mutation("trainer: the plateau counts from chance, not 0.9 x chance", "train/trainer.py",
             "started_below=0.9 * chance", "started_below=chance", TRAINER),
    Mutation("trainer: the validation's new rate not applied", "train/trainer.py",
             'self._set_lr(self.schedule.on_validation(result["top1_error"]))',
             'self.schedule.on_validation(result["top1_error"])', TRAINER),
    Mutation("trainer: a mid-epoch resume does not skip the trained batches", "train/trainer.py",
             "for _ in range(self.batch_in_epoch):\n            next(it)",
             "for _ in range(0):\n            next(it)", TRAINER),
    Mutation("trainer: img/s counts one replica's images", "train/trainer.py",
             't["images"] * self.world / t["elapsed_s"]', 't["images"] / t["elapsed_s"]', TRAINER),
    Mutation("trainer: compute time not per step", "train/trainer.py",
             '"compute_ms": 1e3 * t["compute_s"] / t["steps"]', '"compute_ms": 1e3 * t["compute_s"]', TRAINER),
    Mutation("trainer: best.pt moves to a later equal error", "train/trainer.py",
             'improved = result["top1_error"] < self.best_error', 'improved = result["top1_error"] <= self.best_error',
             TRAINER),
)


def project_files(root):
    """The project's files as git sees them: tracked and untracked-but-not-ignored, present."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))})


def copy_project(root, dest):
    for f in project_files(root):
        os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(root, f), os.path.join(dest, f))


def run_tests(copy, tests, timeout):
    """(pytest's exit status, or "timeout"; seconds) for `tests` run in the copy."""
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")  # the copy's code, no stale .pyc
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return rc, time.perf_counter() - t0


def check(copy, m: Mutation, timeout):
    """(outcome, detail, seconds) of one mutation, the copy restored afterwards."""
    path = os.path.join(copy, m.path)
    with open(path) as f:
        original = f.read()
    n = original.count(m.old)
    if n != 1:
        return "stale", f"snippet found {n} times", 0.0
    with open(path, "w") as f:
        f.write(original.replace(m.old, m.new))
    try:
        rc, seconds = run_tests(copy, m.tests, timeout)
    finally:
        with open(path, "w") as f:
            f.write(original)
    if rc == 0:
        return "survived", "tests passed", seconds
    return "killed", "timeout" if rc == "timeout" else f"pytest exit {rc}", seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="WORD", help="the mutations whose name contains one of these")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of each test set on the unchanged copy")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run (default 900)")
    ap.add_argument("--report", metavar="FILE", help="also write the results as a Markdown table")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(w.lower() in m.name.lower() for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.path} -> {' '.join(m.tests)}")
        print(f"{len(chosen)} mutations")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutate-") as copy:
        copy_project(ROOT, copy)
        broken = set()
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):
                rc, seconds = run_tests(copy, tests, args.timeout)
                print(f"baseline  {'ok' if rc == 0 else f'FAILED ({rc})':<12} {seconds:6.1f} s  {' '.join(tests)}",
                      flush=True)
                if rc != 0:
                    broken.add(tests)
        for m in chosen:
            if m.tests in broken:
                outcome, detail, seconds = "untested", "its tests fail unchanged", 0.0
            else:
                outcome, detail, seconds = check(copy, m, args.timeout)
            if outcome == "survived" and m.accepted:
                outcome, detail = "accepted", m.accepted
            results.append((m, outcome, detail, seconds))
            print(f"{outcome:<9} {seconds:6.1f} s  {m.name} ({detail})", flush=True)
    counts = {k: sum(r[1] == k for r in results) for k in ("killed", "survived", "accepted", "stale", "untested")}
    total = sum(r[3] for r in results)
    print(f"\n{len(results)} mutations: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f" ({total / 60:.1f} min of tests)")
    for m, outcome, detail, _ in results:
        if outcome in ("survived", "stale", "untested", "accepted"):
            print(f"  {outcome}: {m.name} [{m.path}] {detail}")
    if args.report:
        with open(args.report, "w") as f:
            f.write("| mutation | file | tests | outcome | s |\n|---|---|---|---|---|\n")
            for m, outcome, detail, seconds in results:
                f.write(f"| {m.name} | `{m.path}` | {' '.join(m.tests)} | {outcome} ({detail}) | {seconds:.0f} |\n")
    return 1 if counts["survived"] or counts["untested"] else 0


if __name__ == "__main__":
    sys.exit(main())
