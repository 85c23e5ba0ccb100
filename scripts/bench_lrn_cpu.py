"""CPU forward+backward time of train.response_norm against torch.nn.LocalResponseNorm, same inputs.

    python scripts/bench_lrn_cpu.py                       # conv1-sized, batch 32, both layouts
    python scripts/bench_lrn_cpu.py --batch 32 128 --repeats 7 --threads 2

Prints the median fwd+bwd milliseconds of each over --repeats runs (after one warm-up), the
ratio (nn.LocalResponseNorm / train.response_norm, higher is better) and the largest difference of the
outputs and of the input gradients.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.response_norm import lrn  # noqa: E402

SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0      # the paper's constants (Section 3.3)


def fwd_bwd_ms(fn, x, g, repeats):
    times = []
    for i in range(repeats + 1):               # the first run is a warm-up
        xi = x.detach().requires_grad_()
        t0 = time.perf_counter()
        y = fn(xi)
        y.backward(g)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:]), y.detach(), xi.grad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 55, 55], metavar=("C", "H", "W"),
                    help="per-image activation shape (default: one column's conv1 output)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = torch.nn.LocalResponseNorm(SIZE, alpha=ALPHA * SIZE, beta=BETA, k=K)
    ours = lambda t: lrn(t, SIZE, ALPHA, BETA, K)      # noqa: E731
    print(f"threads={args.threads} repeats={args.repeats} (median ms, forward+backward)")
    print(f"{'shape':>20} {'layout':>14} {'nn.LRN':>9} {'train.lrn':>9} {'ratio':>6} {'max|dy|':>9} {'max|dx|':>9}")
    for n in args.batch:
        shape = (n, *args.shape)
        # ReLU output at the paper's 0-255 input scale: non-negative, tens to hundreds.
        x = torch.relu(torch.randn(shape) * 50)
        g = torch.randn(shape)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl, gl = x.contiguous(memory_format=layout), g.contiguous(memory_format=layout)
            t_ref, y_ref, gx_ref = fwd_bwd_ms(ref, xl, gl, args.repeats)
            t_our, y_our, gx_our = fwd_bwd_ms(ours, xl, gl, args.repeats)
            name = "channels_last" if layout is torch.channels_last else "contiguous"
            print(f"{'x'.join(map(str, shape)):>20} {name:>14} {t_ref:9.1f} {t_our:9.1f} "
                  f"{t_ref / t_our:6.2f} {(y_ref - y_our).abs().max().item():9.2e} "
                  f"{(gx_ref - gx_our).abs().max().item():9.2e}")


if __name__ == "__main__":
    main()
