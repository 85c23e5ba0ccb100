"""GPU benchmark: the fused Triton LRN against nn.LocalResponseNorm, alone and in AlexNet training.

    python scripts/bench_gpu_model.py                          # H100/H200: the full comparison
    python scripts/bench_gpu_model.py --json bench.json --steps 10 --windows 3
    python scripts/bench_gpu_model.py --sweep                  # + the kernels' tile/variant sweep
    python scripts/bench_gpu_model.py --device cpu --batch-size 4 --steps 2   # smoke test

Measures, in one run, on synthetic input (bf16 autocast, channels-last on CUDA):

(a) LRN alone, forward and forward+backward, on one column's conv1 (B x 48 x 55 x 55) and
    conv2 (B x 128 x 27 x 27) activations: nn.LocalResponseNorm(size, alpha*size, beta, k),
    train.response_norm's torch-ops path, and train.lrn_triton.
(b) Training steps (forward, backward, PaperSGD step) of train.model.AlexNet(width, init="paper")
    with its LRN layers (train.response_norm.LRN modules) swapped for: nn.LocalResponseNorm (eager; the
    baseline), train.response_norm's torch-ops path, the Triton kernels (eager), the Triton kernels under
    torch.compile, and no LRN at all (for context). Then the full net with its own LRN modules
    (train.response_norm.LRN: the Triton kernels on CUDA) in AlexNet(conv="split") against
    conv="grouped" (--conv), eager, under torch.compile and under torch.compile(mode=
    "reduce-overhead", CUDA graphs; --cuda-graphs). img/s: median over --windows timing
    windows of --steps steps each, after --warmup steps, timed with CUDA events.
(c) The two-device placement on one GPU: AlexNet(devices=(d, d)) against devices=(d,): the same
    weights give the same logits, before and after one training step.
(d) conv="grouped" against conv="split" (fp32, TF32 off): the same weights give the same logits
    (eval) and the same gradients (training, dropout off).

Every variant runs inside try/except: a failure is printed and recorded, and the rest go on.
Prints a table and the ratios triton-eager / nn-eager, best / nn-eager, grouped / split (eager,
compiled, reduce-overhead) and reduce-overhead / default compile; --json writes a record.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.step import autocast_for  # noqa: E402
from train.step import train_step  # noqa: E402

SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0          # the paper's constants (Section 3.3)


# ----------------------------------------------------------------------------- helpers

def log(*a):
    print(*a, flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class Timer:
    """Milliseconds of a block: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, dev):
        self.dev = dev

    def __enter__(self):
        if self.dev.type == "cuda":
            self.a = torch.cuda.Event(enable_timing=True)
            self.b = torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            self.b.record()
            self.b.synchronize()
            self.ms = self.a.elapsed_time(self.b)
        else:
            self.ms = (time.perf_counter() - self.t) * 1e3


def timed(fn, dev, iters, windows, warmup):
    """Median ms per call of fn() over `windows` windows of `iters` calls, after warm-up."""
    for _ in range(warmup):
        fn()
    sync(dev)
    per = []
    for _ in range(windows):
        with Timer(dev) as t:
            for _ in range(iters):
                fn()
        per.append(t.ms / iters)
    return statistics.median(per), per


def triton_available(dev):
    """The Triton kernel can run here: on CUDA, or on the CPU through TRITON_INTERPRET=1."""
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "CPU without TRITON_INTERPRET=1"
    try:
        from train.lrn_triton import lrn_triton  # noqa: F401
        return True, ""
    except Exception as e:                                   # no triton, no compiler
        return False, f"{type(e).__name__}: {e}"


def free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- LRN impls

def impl_nn(x, size, alpha, beta, k):
    """nn.LocalResponseNorm's maths: PyTorch divides alpha by size, so pass alpha * size."""
    return F.local_response_norm(x, size, alpha * size, beta, k)


def impl_torch_ops(x, size, alpha, beta, k):
    import importlib
    L = importlib.import_module("train.response_norm")
    return L._lrn_reference_path(x, size, alpha, beta, k)


def impl_triton(x, size, alpha, beta, k):
    from train.lrn_triton import lrn_triton
    return lrn_triton(x, size, alpha, beta, k)


def impl_identity(x, size, alpha, beta, k):
    return x


class SwapLRN(nn.Module):
    """Stands in for a train.response_norm.LRN module, calling `impl` with the same constants."""

    def __init__(self, impl, size, alpha, beta, k):
        super().__init__()
        self.impl, self.size, self.alpha, self.beta, self.k = impl, size, alpha, beta, k
        self.calls = 0

    def forward(self, x):
        if not torch.compiler.is_compiling():     # (a counter dynamo would guard on)
            self.calls += 1
        return self.impl(x, self.size, self.alpha, self.beta, self.k)


def swap_lrn(model, impl):
    """Replace every train.response_norm.LRN (or other *LRN*/LocalResponseNorm) module; returns the swaps."""
    from train.response_norm import LRN
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            is_lrn = isinstance(child, (LRN, nn.LocalResponseNorm)) or "LRN" in type(child).__name__
            if is_lrn and not isinstance(child, SwapLRN):
                size = getattr(child, "size", SIZE)
                alpha = getattr(child, "alpha", ALPHA)
                if isinstance(child, nn.LocalResponseNorm):     # it stores alpha * size
                    alpha = alpha / size
                s = SwapLRN(impl, size, alpha, getattr(child, "beta", BETA), getattr(child, "k", K))
                setattr(parent, name, s)
                swaps.append(s)
    return swaps


# ----------------------------------------------------------------------------- (a) LRN alone

def bench_lrn(args, dev, dtype, results):
    ok_triton, why = triton_available(dev)
    B = args.lrn_batch or args.batch_size
    shapes = [("conv1", (B, 48, 55, 55)), ("conv2", (B, 128, 27, 27))]
    if dev.type != "cuda":
        shapes = [(n, (min(B, 2),) + s[1:]) for n, s in shapes]
    impls = [("nn.LocalResponseNorm", impl_nn), ("train.response_norm torch-ops", impl_torch_ops)]
    if ok_triton:
        impls.append(("triton", impl_triton))
    else:
        log(f"  triton skipped: {why}")
    if args.compile_lrn and dev.type == "cuda":
        impls.append(("nn.LRN compiled", None))
    fmts = [("nhwc", torch.channels_last)] + ([("nchw", torch.contiguous_format)] if args.nchw else [])
    log(f"\n(a) LRN alone, {dtype}, median ms (fwd | fwd+bwd), effective GB/s of fwd+bwd "
        "(5 tensor passes)")
    log(f"  {'shape':7} {'layout':5} {'impl':22} {'fwd ms':>9} {'f+b ms':>9} {'GB/s':>7} {'max|dy|':>9} {'max|dx|':>9}")
    for sname, shape in shapes:
        for fname, fmt in fmts:
            gen = torch.Generator(device="cpu").manual_seed(0)
            x0 = (torch.relu(torch.randn(shape, generator=gen)) * 30).to(dev, dtype).contiguous(memory_format=fmt)
            g = torch.randn(shape, generator=gen).to(dev, dtype).contiguous(memory_format=fmt)
            ref = None
            for iname, fn in impls:
                rec = dict(section="lrn", shape=list(shape), layout=fname, impl=iname, dtype=str(dtype))
                try:
                    if fn is None:
                        torch._dynamo.reset()
                        fn = torch.compile(impl_nn)
                    x = x0.detach().requires_grad_()

                    def fwd():
                        with torch.no_grad():
                            return fn(x0, SIZE, ALPHA, BETA, K)

                    def fwdbwd():
                        x.grad = None
                        y = fn(x, SIZE, ALPHA, BETA, K)
                        y.backward(g)

                    it = args.lrn_iters
                    fms, _ = timed(fwd, dev, it, args.windows, 2)
                    bms, _ = timed(fwdbwd, dev, it, args.windows, 2)
                    fwdbwd()
                    y = fn(x0, SIZE, ALPHA, BETA, K).detach().float()
                    dx = x.grad.detach().float()
                    if ref is None:
                        ref = (y, dx)
                    dy = (y - ref[0]).abs().max().item()
                    ddx = (dx - ref[1]).abs().max().item()
                    gbs = 5 * x0.numel() * x0.element_size() / (bms * 1e-3) / 1e9
                    rec.update(fwd_ms=fms, fwd_bwd_ms=bms, gb_per_s=gbs, max_abs_dy_vs_nn=dy,
                               max_abs_dx_vs_nn=ddx, max_abs_y=ref[0].abs().max().item(),
                               max_abs_dx=ref[1].abs().max().item())
                    log(f"  {sname:7} {fname:5} {iname:22} {fms:9.3f} {bms:9.3f} {gbs:7.0f} {dy:9.2e} {ddx:9.2e}")
                except Exception as e:
                    rec["error"] = f"{type(e).__name__}: {e}"
                    log(f"  {sname:7} {fname:5} {iname:22} FAILED {rec['error'][:300]}")
                    if args.verbose:
                        traceback.print_exc()
                results.append(rec)
            del x0, g, ref
            free(dev)


def sweep_kernels(args, dev, dtype, results):
    """Time each tile/variant setting of the kernels alone (forward; backward from lrn_backward)."""
    ok, why = triton_available(dev)
    if not ok or dev.type != "cuda":
        log(f"\n(sweep) skipped: {why or 'needs CUDA'}")
        return
    from train import lrn_triton as LT
    saved = dict(LT.CONFIG)
    B = args.lrn_batch or args.batch_size
    log("\n(sweep) kernel settings, median ms")
    try:
        for sname, shape in (("conv1", (B, 48, 55, 55)), ("conv2", (B, 128, 27, 27))):
            fmts = [("nhwc", torch.channels_last)] + ([("nchw", torch.contiguous_format)] if args.nchw else [])
            for fname, fmt in fmts:
                x = (torch.relu(torch.randn(shape, device=dev)) * 30).to(dtype).contiguous(memory_format=fmt)
                g = torch.randn(shape, device=dev).to(dtype).contiguous(memory_format=fmt)
                for tile in (2048, 4096, 8192):
                    for nw in (4, 8):
                        for gather in (False, True):
                            LT.CONFIG.update(saved, fwd_tile_elems=tile, bwd_tile_elems=tile,
                                             fwd_num_warps=nw, bwd_num_warps=nw,
                                             fwd_gather=gather, bwd_gather=gather)
                            row = dict(section="sweep", shape=list(shape), layout=fname, tile=tile,
                                       num_warps=nw, gather=gather)
                            try:
                                f, _ = timed(lambda: LT.lrn_forward(x, SIZE, ALPHA, BETA, K), dev,
                                             args.lrn_iters, args.windows, 2)
                                b, _ = timed(lambda: LT.lrn_backward(x, g, SIZE, ALPHA, BETA, K), dev,
                                             args.lrn_iters, args.windows, 2)
                                row.update(fwd_ms=f, bwd_ms=b)
                                log(f"  {sname} {fname} tile={tile:5d} warps={nw} gather={gather!s:5} "
                                    f"fwd {f:.3f}  bwd {b:.3f}")
                            except Exception as e:
                                row["error"] = f"{type(e).__name__}: {e}"
                                log(f"  {sname} {fname} tile={tile} warps={nw} gather={gather} FAILED {row['error'][:200]}")
                            results.append(row)
                del x, g
                free(dev)
    finally:
        LT.CONFIG.clear()
        LT.CONFIG.update(saved)


# ----------------------------------------------------------------------------- (b) the model

def make_model(args, dev, devices=None, seed=0, conv="split"):
    from train.model import AlexNet
    torch.manual_seed(seed)
    if devices is None:
        devices = None if dev.type == "cpu" else (str(dev),)
    model = AlexNet(num_classes=1000, devices=devices, width=args.width, init="paper", conv=conv)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model):
    from train.optim import PaperSGD, param_groups
    return PaperSGD(param_groups(model), lr=0.01, momentum=0.9, weight_decay=5e-4)


def synthetic_batch(args, dev, batch):
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = (torch.randn(batch, 3, 224, 224, generator=gen) * 50).to(dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
    return x, y


def bench_model_variant(args, dev, name, impl, compile_model, results, extra_note="",
                        conv="split", compile_mode=None):
    """One training-step timing. impl=None keeps the model's own LRN modules; compile_mode is
    torch.compile's mode (None: the default); conv is AlexNet's conv form."""
    rec = dict(section="model", variant=name, batch_size=args.batch_size, steps=args.steps,
               windows=args.windows, warmup=args.warmup, compile=compile_model, note=extra_note,
               conv=conv, compile_mode=(compile_mode or "default") if compile_model else None)
    model = net = opt = None
    cuda_graphs = compile_model and compile_mode == "reduce-overhead"
    try:
        model = make_model(args, dev, conv=conv)
        swaps = [] if impl is None else swap_lrn(model, impl)
        rec["lrn_modules_swapped"] = len(swaps)
        if impl is not None and not swaps:
            raise RuntimeError("found no LRN module to swap in the model")
        opt = make_optimizer(model)
        net = model
        if compile_model:
            torch._dynamo.reset()
            net = torch.compile(model, **({} if compile_mode is None else dict(mode=compile_mode)))
        x, y = synthetic_batch(args, dev, args.batch_size)     # the same tensors every step
        model.train()
        losses = []

        def step():  # the trainer's own step (it marks each step for CUDA graphs)
            return train_step(net, opt, x, y, dev, args.amp, cuda_graphs)

        t0 = time.perf_counter()
        losses.append(step().item())                        # the first step (compiles if asked)
        sync(dev)
        rec["first_step_s"] = time.perf_counter() - t0
        rec["first_loss"] = losses[0]
        ms, per = timed(step, dev, args.steps, args.windows, max(0, args.warmup - 1))
        last = step().item()
        rec.update(ms_per_step=ms, img_per_s=args.batch_size / (ms * 1e-3),
                   img_per_s_windows=[args.batch_size / (m * 1e-3) for m in per],
                   last_loss=last, finite=bool(math.isfinite(last)),
                   lrn_calls=sum(s.calls for s in swaps))
        if dev.type == "cuda":
            rec["max_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        log(f"  {name:38} {rec['img_per_s']:10.0f} img/s  {ms:8.2f} ms/step  "
            f"first step {rec['first_step_s']:6.1f} s  loss0 {losses[0]:.5f}")
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        log(f"  {name:38} FAILED {rec['error'][:400]}")
        if args.verbose:
            traceback.print_exc()
    finally:
        del model, net, opt
        if compile_model:
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        free(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
    results.append(rec)
    return rec


def bench_model(args, dev, results):
    ok_triton, why = triton_available(dev)
    do_compile = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    log(f"\n(b) AlexNet(width={args.width}, init='paper') training step, batch {args.batch_size}, "
        f"{'bf16 autocast' if args.amp and dev.type == 'cuda' else 'fp32'}, "
        f"{'channels-last' if dev.type == 'cuda' else 'contiguous'}; "
        f"img/s median of {args.windows} windows x {args.steps} steps")
    variants = [("nn.LocalResponseNorm eager", impl_nn, False, ""),
                ("train.response_norm torch-ops eager", impl_torch_ops, False, "")]
    if ok_triton:
        variants.append(("triton eager", impl_triton, False, ""))
        if do_compile:
            variants.append(("triton + torch.compile", impl_triton, True, ""))
    else:
        log(f"  triton variants skipped: {why}")
    if do_compile and args.extra:
        variants.append(("nn.LocalResponseNorm + torch.compile", impl_nn, True, ""))
    variants.append(("no LRN (identity, context only)", impl_identity, False, ""))
    if do_compile and args.extra:
        variants.append(("no LRN + torch.compile", impl_identity, True, ""))
    only = set(args.variants or [])
    # the conv forms first: with a time limit (scripts/device-check.sh), the rows come first
    out = bench_conv_forms(args, dev, do_compile, only, results)
    for name, impl, comp, note in variants:
        if only and not any(o in name for o in only):
            continue
        rec = bench_model_variant(args, dev, name, impl, comp, results, note)
        if comp and "error" in rec and impl is impl_triton:
            # fall back: let dynamo break the graph around the kernel call
            disabled = torch.compiler.disable(impl_triton)
            rec = bench_model_variant(args, dev, "triton (graph break) + torch.compile", disabled,
                                      True, results, "lrn_triton under torch.compiler.disable")
        out[rec["variant"]] = rec
    return out


def conv_variants(args, dev, do_compile, forms):
    """(name, conv, compile, mode) of the split/grouped rows, mode by mode so the forms sit together."""
    modes = [(False, None, "eager")]
    if do_compile:
        modes.append((True, None, "+ torch.compile"))
        if args.cuda_graphs == "on" and dev.type == "cuda":
            modes.append((True, "reduce-overhead", "+ compile reduce-overhead"))
        elif args.cuda_graphs == "on":
            log("  reduce-overhead rows skipped: CUDA graphs need a CUDA device")
    elif args.cuda_graphs == "on":
        log("  compiled and reduce-overhead rows skipped: torch.compile is off here (--compile)")
    return [(f"conv={conv} {label}", conv, comp, mode) for comp, mode, label in modes for conv in forms]


def bench_conv_forms(args, dev, do_compile, only, results):
    """The full net with its own LRN (Triton on CUDA) as AlexNet(conv="split") and "grouped"."""
    forms = args.conv
    if not forms:
        return {}
    log(f"  the model's own LRN modules, AlexNet(conv=...) in {' and '.join(forms)} form:")
    out = {}
    for name, conv, comp, mode in conv_variants(args, dev, do_compile, forms):
        if only and not any(o in name for o in only):
            continue
        out[name] = bench_model_variant(args, dev, name, None, comp, results, "model LRN", conv, mode)
    return out


def ratios(model_recs):
    base = model_recs.get("nn.LocalResponseNorm eager", {}).get("img_per_s")
    if not base:
        return {}
    r = {}
    tri = model_recs.get("triton eager", {}).get("img_per_s")
    if tri:
        r["triton_eager_over_nn_eager"] = tri / base
    real = {n: v["img_per_s"] for n, v in model_recs.items()
            if v.get("img_per_s") and "no LRN" not in n}
    if real:
        best = max(real, key=real.get)
        r["best_variant"] = best
        r["best_over_nn_eager"] = real[best] / base
    ident = model_recs.get("no LRN (identity, context only)", {}).get("img_per_s")
    if ident:
        r["no_lrn_over_nn_eager"] = ident / base
    return r


def conv_ratios(model_recs):
    """grouped / split per mode, and reduce-overhead / default compile per form (img/s)."""
    def speed(name):
        return model_recs.get(name, {}).get("img_per_s")

    pairs = {f"grouped_over_split_{key}": (f"conv=grouped {label}", f"conv=split {label}")
             for key, label in (("eager", "eager"), ("compiled", "+ torch.compile"),
                                ("reduce_overhead", "+ compile reduce-overhead"))}
    pairs.update({f"reduce_overhead_over_compile_{conv}": (f"conv={conv} + compile reduce-overhead",
                                                           f"conv={conv} + torch.compile")
                  for conv in ("split", "grouped")})
    return {key: speed(a) / speed(b) for key, (a, b) in pairs.items() if speed(a) and speed(b)}


# ----------------------------------------------------------------------------- (c) placement

def rel_diff(a, b):
    """max |a - b| relative to max |a|."""
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions in full precision (for the equality checks)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def guarded(args, dev, results, rec, body):
    """body(rec), its failure recorded in rec and printed, not raised; then the memory freed
    and rec appended to results."""
    try:
        body(rec)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        log(f"  FAILED {rec['error'][:400]}")
        if args.verbose:
            traceback.print_exc()
    free(dev)
    results.append(rec)
    return rec


def check_two_device(args, dev, results):
    log("\n(c) AlexNet(devices=(d, d)) against devices=(d,) on one device")

    def body(rec):
        d = str(dev)
        single = make_model(args, dev, devices=(d,) if dev.type == "cuda" else None, seed=0)
        pair = make_model(args, dev, devices=(d, d), seed=1)
        pair.load_state_dict(single.state_dict())
        x, y = synthetic_batch(args, dev, min(args.batch_size, 16))
        with no_tf32():
            def logits(m):
                m.eval()
                with torch.no_grad():
                    return m(x).float()

            def train_step(m):
                m.train()
                opt = make_optimizer(m)
                torch.manual_seed(123)                      # the same dropout masks
                with autocast_for(dev, args.amp):
                    loss = F.cross_entropy(m(x).float(), y)
                loss.backward()
                opt.step()
                return loss.item()

            a, b = logits(single), logits(pair)
            rel0 = rel_diff(a, b)
            la, lb = train_step(single), train_step(pair)
            a, b = logits(single), logits(pair)
            rel1 = rel_diff(a, b)
        ok = rel0 < 1e-4 and rel1 < 1e-3 and abs(la - lb) <= 1e-3 * max(1.0, abs(la))
        rec.update(rel_diff_before=rel0, rel_diff_after_step=rel1, loss_single=la, loss_pair=lb,
                   match=bool(ok), devices=[str(t) for t in pair.devices])
        log(f"  logits rel diff {rel0:.2e} before, {rel1:.2e} after one step; "
            f"loss {la:.6f} vs {lb:.6f}: {'MATCH' if ok else 'MISMATCH'}")
        del single, pair

    return guarded(args, dev, results, dict(section="two_device"), body)


def check_grouped(args, dev, results):
    """(d) The same weights in conv="split" and "grouped" form: logits (eval) and every
    parameter's gradient (training with dropout off), fp32 without TF32."""
    log("\n(d) AlexNet(conv='grouped') against conv='split', the same weights, fp32, TF32 off")

    def body(rec):
        model = make_model(args, dev, seed=0)
        for column in model.columns:
            column.dropout.p = 0                            # the same (no) masks in both forms
        x, y = synthetic_batch(args, dev, min(args.batch_size, 16))
        out = {}
        with no_tf32():
            for conv in ("split", "grouped"):
                model.conv = conv
                with torch.no_grad():
                    logits = model.eval()(x).float()
                model.train().zero_grad(set_to_none=True)
                F.cross_entropy(model(x).float(), y).backward()
                out[conv] = logits, {n: p.grad.float() for n, p in model.named_parameters()}
        (a, ga), (b, gb) = out["split"], out["grouped"]
        rel_logits = rel_diff(a, b)
        rel_grads = {n: rel_diff(ga[n], gb[n]) for n in ga}
        worst = max(rel_grads, key=rel_grads.get)
        ok = rel_logits < 1e-4 and rel_grads[worst] < 1e-3
        rec.update(rel_diff_logits=rel_logits, rel_diff_grads=rel_grads, match=bool(ok))
        log(f"  logits rel diff {rel_logits:.2e}; largest gradient rel diff {rel_grads[worst]:.2e} "
            f"({worst}): {'MATCH' if ok else 'MISMATCH'}")
        del model, out, ga, gb

    return guarded(args, dev, results, dict(section="grouped_check"), body)


# ----------------------------------------------------------------------------- main

class Results(list):
    """The records so far; with --json each one appended rewrites the file (complete: false), so
    a run stopped by a time limit still leaves every row it measured."""

    def __init__(self, args, env, t_start):
        super().__init__()
        self.args, self.env, self.t_start = args, env, t_start

    def append(self, rec):
        super().append(rec)
        if self.args.json:
            self.write(ratios={}, complete=False)

    def write(self, ratios, complete):
        a = self.args
        rec = dict(environment=self.env, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                   results=list(self), ratios=ratios, wall_s=time.perf_counter() - self.t_start, complete=complete)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, a.json)


def conv_forms(text):
    """--conv: a comma list of split/grouped, or none."""
    forms = [f.strip() for f in text.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in forms if f not in ("split", "grouped")]
    if bad:
        raise argparse.ArgumentTypeError(f"--conv: {', '.join(bad)} not split or grouped")
    return forms


def environment(dev):
    env = dict(python=platform.python_version(), torch=torch.__version__, device=str(dev),
               triton_interpret=os.environ.get("TRITON_INTERPRET"))
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(gpu=p.name, sms=p.multi_processor_count, gpu_mem_gib=p.total_memory / 2 ** 30,
                   cuda=torch.version.cuda)
    return env


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing window")
    ap.add_argument("--windows", type=int, default=3, help="timing windows (median is reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    ap.add_argument("--lrn-batch", type=int, default=0, help="batch of the LRN micro-benchmark (default: --batch-size)")
    ap.add_argument("--lrn-iters", type=int, default=20)
    ap.add_argument("--nchw", action="store_true", help="also time the LRN alone in NCHW layout")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 instead of bf16 autocast")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile variants (auto: on CUDA only)")
    ap.add_argument("--compile-lrn", action="store_true", help="also time nn.LRN under torch.compile alone")
    ap.add_argument("--extra", action="store_true", help="also nn.LRN + compile and no-LRN + compile")
    ap.add_argument("--sweep", action="store_true", help="also sweep the Triton kernels' settings")
    ap.add_argument("--variants", nargs="*", help="only model variants whose name contains one of these")
    ap.add_argument("--conv", type=conv_forms, default="split,grouped",
                    help="AlexNet conv forms of the model-LRN rows of (b): split,grouped, one, or none")
    ap.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                    help="also the torch.compile(mode='reduce-overhead') rows (CUDA, with compile)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("lrn", "model", "two-device", "grouped"))
    ap.add_argument("--json", type=Path, help="write the record here")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if (dev.type == "cuda" and args.amp) else torch.float32
    t_start = time.perf_counter()
    env = environment(dev)
    log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results = Results(args, env, t_start)
    model_recs = {}
    if "lrn" not in args.skip:
        bench_lrn(args, dev, dtype, results)
    if args.sweep:
        sweep_kernels(args, dev, dtype, results)
    if "model" not in args.skip:
        try:
            model_recs = bench_model(args, dev, results)
        except Exception as e:
            log(f"  model benchmark FAILED {type(e).__name__}: {e}")
            results.append(dict(section="model", error=f"{type(e).__name__}: {e}"))
    if "two-device" not in args.skip:
        check_two_device(args, dev, results)
    if "grouped" not in args.skip:
        check_grouped(args, dev, results)

    r = {**ratios(model_recs), **conv_ratios(model_recs)}
    log("\nsummary (training img/s)")
    for name, rec in model_recs.items():
        v = rec.get("img_per_s")
        log(f"  {name:40} {('%10.0f' % v) if v else '    failed'}")
    if r:
        for key, v in r.items():
            log(f"  {key:40} {v if isinstance(v, str) else f'{v:.2f}x'}")
        if "best_over_nn_eager" in r:
            log(f"  goal >= 3x best/nn-eager: {'met' if r['best_over_nn_eager'] >= 3 else 'not met'}")
    wall = time.perf_counter() - t_start
    log(f"wall time {wall:.1f} s")
    if args.json:
        results.write(ratios=r, complete=True)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
