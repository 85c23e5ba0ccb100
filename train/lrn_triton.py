"""Fused Triton kernels for the paper's local response normalisation (Section 3.3).

    b_i = a_i / s_i^beta,   s_i = k + alpha * sum_{j in W(i)} a_j^2,
    W(i) = [i - size//2, i + (size-1)//2] clipped to [0, C-1]

(alpha is NOT divided by size: this equals ``nn.LocalResponseNorm(size, alpha*size, beta, k)``.)

``lrn_triton(x, size, alpha, beta, k)`` is a ``torch.autograd.Function`` with one Triton kernel
for the forward and one for the backward. Both work on any (N, C, *) tensor whose spatial dims
flatten to one stride -- NCHW-contiguous, channels-last (NHWC memory), and channel slices of
either (one column of a two-column activation) -- without copies: a program owns a tile of
BLOCK_P consecutive pixels of one image x all C channels (C padded to a power of two; grid =
pixel blocks x images), addressed with the tensor's own strides, so in channels-last each
pixel's channels are one contiguous run and in NCHW each channel's pixels are, and the compiler
sees the contiguous axis (no division in the addressing) and coalesces/vectorises along it. Arithmetic is float32 whatever the storage dtype (fp32, fp16, bf16); the
output has the input's dtype and memory format.

Forward, one pass: the window sum of squares is built from ``size`` loads of the tile shifted
by -size//2 .. (size-1)//2 channels (masked at the edges = the clipping); the shifted loads hit
L1/L2, so DRAM sees x read once and y written once.

Backward, one pass, nothing saved but x (which the ReLU before keeps alive anyway):

    dL/dx_c = g_c p_c - 2 alpha beta x_c * sum_{i: c in W(i)} r_i,
    p = s^-beta,  r = g x s^(-beta-1) = g x p / s,

s is recomputed from x by the same shifted loads (cheaper than writing and re-reading a saved
scale: saving s costs 4 B/element written + read against the 2 B/element of re-reading bf16 x,
which mostly hits cache). r is computed once per element, in registers, and its mirrored
window sum is taken with ``tl.gather`` along the channel axis of the tile (warp shuffles or
shared memory; no extra DRAM traffic, and one s^-beta per element rather than one per window
position -- the pow is the expensive part: recomputing r at every shifted position costs
``size`` times the special-function work). A fallback variant (``CONFIG["bwd_gather"] = False``) does
exactly that recomputation with shifted loads only; it is used when C is too large for one tile
(``CONFIG["max_gather_c"]``).

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (the tests do this); nothing in the launch
path calls torch.cuda.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from train.response_norm import check_lrn_args

__all__ = ["lrn_triton", "LRNTritonFunction", "CONFIG"]

# Tuning knobs (the benchmark may change them). Tile = BLOCK_P pixels x next_pow2(C) channels.
CONFIG = {
    # forward: shifted loads (gather=False) measured a little faster than squaring once and
    # shifting in registers; backward: the register shift (gather=True) is 3-10x faster than
    # recomputing r at every window position. Tile sizes from a sweep on an H200 (bf16,
    # channels-last, batch 256, conv1/conv2 of one column).
    "fwd_tile_elems": 4096,    # BLOCK_P * BLOCK_C target
    "fwd_num_warps": 8,
    "fwd_gather": False,
    "bwd_tile_elems": 2048,
    "bwd_num_warps": 8,
    "bwd_gather": True,
    "max_block_p": 256,
    "min_block_p": 8,
    "max_gather_c": 1024,      # above this many (padded) channels the backward recomputes
}


@triton.jit
def _pow_neg(s, BETA_IS_075: tl.constexpr, beta):
    """(s^-beta, s^(-beta-1)) for s > 0, with two special-function ops (MUFU) either way."""
    if BETA_IS_075:
        r = tl.rsqrt(s)                            # s^-0.5
        p = r * tl.sqrt(r)                         # s^-0.75
        q = p * (r * r)                            # s^-1.75
    else:
        p = tl.exp2(-beta * tl.log2(s))
        q = p / s
    return p, q


@triton.jit
def _window_squares(xrow, ch, pmask, C, sxc, BEFORE: tl.constexpr, AFTER: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(sum of x_j^2 over j in [c - BEFORE, c + AFTER] within 0..C-1, x_c) for the channels `ch`,
    from shifted loads (the shifted tiles hit cache: memory sees x once)."""
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    xc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in tl.static_range(BEFORE + AFTER + 1):
        d = i - BEFORE
        j = ch + d
        m = pmask[:, None] & ((j >= 0) & (j < C))[None, :]
        v = tl.load(xrow + j[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
        acc += v * v
        if d == 0:
            xc = v
    return acc, xc


@triton.jit
def _shifted_sum(v, ch, LO: tl.constexpr, HI: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum of v[:, c + e] for e in [-LO, HI] inside the tile, by gathers along the channel axis
    (the tile holds all channels: BLOCK_C >= C, padded channels are 0)."""
    acc = v
    for i in tl.static_range(LO + HI + 1):
        e = i - LO
        if e != 0:
            j = ch + e
            idx = tl.minimum(tl.maximum(j, 0), BLOCK_C - 1)
            idx2 = tl.broadcast_to(idx[None, :], (BLOCK_P, BLOCK_C))
            acc += tl.where(((j >= 0) & (j < BLOCK_C))[None, :], tl.gather(v, idx2, 1), 0.0)
    return acc


@triton.jit
def _setup(X, C, HW, sxn, sxp, alpha, beta, k, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """What both kernels start from: alpha, beta, k as float32 (torch.compile passes Python floats
    as fp64), then this program's tile: image n, its pixels hw (int64), the channels ch, the pixel
    mask, the pixel x channel mask, and x's row pointers (one per pixel)."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)      # pixels of image n: contiguous run
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask = pix < HW
    hw = pix.to(tl.int64)
    cmask = pmask[:, None] & (ch < C)[None, :]
    xrow = X + (n * sxn + hw * sxp)[:, None]
    return (tl.cast(alpha, tl.float32), tl.cast(beta, tl.float32), tl.cast(k, tl.float32),
            n, hw, ch, pmask, cmask, xrow)


@triton.jit
def _lrn_fwd_kernel(X, Y, C, HW,
                    sxn, sxc, sxp, syn, syc, syp,
                    alpha, beta, k,
                    BEFORE: tl.constexpr, AFTER: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    USE_GATHER: tl.constexpr, BETA_IS_075: tl.constexpr):
    alpha, beta, k, n, hw, ch, pmask, cmask, xrow = _setup(X, C, HW, sxn, sxp, alpha, beta, k, BLOCK_P, BLOCK_C)
    if USE_GATHER:
        # the tile holds all channels (BLOCK_C >= C, one channel block): square once, shift
        # the squares in registers
        xc = tl.load(xrow + ch[None, :] * sxc, mask=cmask, other=0.0).to(tl.float32)
        acc = _shifted_sum(xc * xc, ch, BEFORE, AFTER, BLOCK_P, BLOCK_C)
    else:
        acc, xc = _window_squares(xrow, ch, pmask, C, sxc, BEFORE, AFTER, BLOCK_P, BLOCK_C)
    s = k + alpha * acc
    p, _ = _pow_neg(s, BETA_IS_075, beta)
    y = xc * p
    yptr = Y + (n * syn + hw * syp)[:, None] + ch[None, :] * syc
    tl.store(yptr, y.to(Y.dtype.element_ty), mask=cmask)


@triton.jit
def _lrn_bwd_kernel(X, G, DX, C, HW,
                    sxn, sxc, sxp, sgn, sgc, sgp, sdn, sdc, sdp,
                    alpha, beta, k,
                    BEFORE: tl.constexpr, AFTER: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    USE_GATHER: tl.constexpr, BETA_IS_075: tl.constexpr):
    alpha, beta, k, n, hw, ch, pmask, cmask, xrow = _setup(X, C, HW, sxn, sxp, alpha, beta, k, BLOCK_P, BLOCK_C)
    grow = G + (n * sgn + hw * sgp)[:, None]
    gc = tl.load(grow + ch[None, :] * sgc, mask=cmask, other=0.0).to(tl.float32)
    if USE_GATHER:
        # own channels: s, p = s^-beta, r = g x s^(-beta-1); then the mirrored window sum of r
        # by shifting r along the channel axis of the tile (BLOCK_C >= C, one channel block)
        acc, xc = _window_squares(xrow, ch, pmask, C, sxc, BEFORE, AFTER, BLOCK_P, BLOCK_C)
        s = k + alpha * acc
        p, pq = _pow_neg(s, BETA_IS_075, beta)
        r = gc * xc * pq                          # 0 on padded channels (g = x = 0 there)
        ws = _shifted_sum(r, ch, AFTER, BEFORE, BLOCK_P, BLOCK_C)  # window W'(c) = [c-AFTER, c+BEFORE]
    else:
        # recompute r_j at every position j of the mirrored window from shifted loads
        ws = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        xc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        p = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for i in tl.static_range(BEFORE + AFTER + 1):
            e = i - AFTER
            j = ch + e
            jm = pmask[:, None] & ((j >= 0) & (j < C))[None, :]
            acc, xj = _window_squares(xrow, j, pmask, C, sxc, BEFORE, AFTER, BLOCK_P, BLOCK_C)
            sj = k + alpha * acc
            pj, qj = _pow_neg(sj, BETA_IS_075, beta)
            if e == 0:
                gj = gc
                xc = xj
                p = pj
            else:
                gj = tl.load(grow + j[None, :] * sgc, mask=jm, other=0.0).to(tl.float32)
            ws += gj * xj * qj
    dx = gc * p - (2.0 * alpha * beta) * xc * ws
    dptr = DX + (n * sdn + hw * sdp)[:, None] + ch[None, :] * sdc
    tl.store(dptr, dx.to(DX.dtype.element_ty), mask=cmask)


# ----------------------------------------------------------------------------- launch helpers

def _flat_strides(t: torch.Tensor):
    """(stride_n, stride_c, stride_pixel) if t's dims 2.. flatten to one stride, else None."""
    if t.dim() == 2:
        return t.stride(0), t.stride(1), 1
    dims = [(sz, st) for sz, st in zip(t.shape[2:], t.stride()[2:]) if sz != 1]
    for (sz_a, st_a), (sz_b, st_b) in zip(dims, dims[1:]):
        if st_a != sz_b * st_b:
            return None
    return t.stride(0), t.stride(1), (dims[-1][1] if dims else 1)


def _as_flat(t: torch.Tensor, like: torch.Tensor | None = None):
    """t and its flat strides; copies t (in like's / its suggested memory format) if needed."""
    st = _flat_strides(t)
    if st is None:
        fmt = torch.contiguous_format
        ref = like if like is not None else t
        if ref.dim() == 4 and ref.stride(1) == 1 and ref.shape[1] > 1:
            fmt = torch.channels_last
        t = t.contiguous(memory_format=fmt)
        st = _flat_strides(t)
        if st is None:                                         # e.g. odd 5-D strides
            t = t.contiguous()
            st = _flat_strides(t)
    return t, st


def _empty_out(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)                  # preserve_format: same strides for dense x
    if _flat_strides(out) is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    return out


def _launch_params(C: int, HW: int, which: str):
    cp = triton.next_power_of_2(max(C, 1))
    use_gather = CONFIG[which + "_gather"] and cp <= CONFIG["max_gather_c"]
    block_c = cp if use_gather else min(cp, 256)
    block_p = CONFIG[which + "_tile_elems"] // block_c
    block_p = max(CONFIG["min_block_p"], min(CONFIG["max_block_p"], block_p))
    block_p = triton.next_power_of_2(block_p)
    # no wider than an image's pixels (small maps: 6x6, 13x13)
    block_p = max(CONFIG["min_block_p"], min(block_p, triton.next_power_of_2(HW)))
    nw = CONFIG[which + "_num_warps"] or (4 if block_p * block_c <= 4096 else 8)
    return use_gather, block_p, block_c, nw


def _geometry(x: torch.Tensor, *strides):
    """(N, C, HW) and the strides rearranged for the kernels' (pixel block, image) grid.

    A program covers BLOCK_P consecutive pixels of one image, so the pixel offsets form a
    contiguous run (hw * stride_pixel, no division) that the compiler can coalesce and vectorise
    in either layout. With one pixel per image ((N, C) inputs, or 1x1 maps) the images are
    the pixel axis instead: one "image" of N pixels with stride stride_n.
    """
    n, c = x.shape[0], x.shape[1]
    hw = 1
    for s in x.shape[2:]:
        hw *= s
    if hw == 1 and n > 1:
        return 1, c, n, [(0, sc, sn) for sn, sc, _ in strides]
    return n, c, hw, list(strides)


def _on_device(x: torch.Tensor):
    """Make x's GPU the current device for a launch (column 2 lives on the second GPU). Under
    torch.compile the generated code sets the device itself."""
    import contextlib

    if not x.is_cuda or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.cuda.device(x.device)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The forward kernel alone (no autograd)."""
    x, sx = _as_flat(x)
    y = _empty_out(x)
    if y.numel() == 0:
        return y
    N, C, HW, (sx, sy) = _geometry(x, sx, _flat_strides(y))
    gather, bp, bc, nw = _launch_params(C, HW, "fwd")
    grid = (triton.cdiv(HW, bp), N, triton.cdiv(C, bc))
    with _on_device(x):  # Triton launches on the current device and stream, not the tensor's
        _lrn_fwd_kernel[grid](x, y, C, HW, *sx, *sy,
                              float(alpha), float(beta), float(k),
                              BEFORE=size // 2, AFTER=(size - 1) // 2,
                              BLOCK_P=bp, BLOCK_C=bc, USE_GATHER=gather,
                              BETA_IS_075=(beta == 0.75), num_warps=nw)
    return y


def lrn_backward(x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float) -> torch.Tensor:
    """dL/dx from x and dL/dy (no autograd)."""
    x, sx = _as_flat(x)
    g, sg = _as_flat(g, like=x)
    dx = _empty_out(x)
    if dx.numel() == 0:
        return dx
    N, C, HW, (sx, sg, sd) = _geometry(x, sx, sg, _flat_strides(dx))
    gather, bp, bc, nw = _launch_params(C, HW, "bwd")
    grid = (triton.cdiv(HW, bp), N, triton.cdiv(C, bc))
    with _on_device(x):
        _lrn_bwd_kernel[grid](x, g, dx, C, HW, *sx, *sg, *sd,
                              float(alpha), float(beta), float(k),
                              BEFORE=size // 2, AFTER=(size - 1) // 2,
                              BLOCK_P=bp, BLOCK_C=bc, USE_GATHER=gather,
                              BETA_IS_075=(beta == 0.75), num_warps=nw)
    return dx


class LRNTritonFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, size, alpha, beta, k):
        ctx.constants = (size, alpha, beta, k)
        ctx.save_for_backward(x)
        return lrn_forward(x, size, alpha, beta, k)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        size, alpha, beta, k = ctx.constants
        dx = None
        if ctx.needs_input_grad[0]:
            dx = lrn_backward(x, g, size, alpha, beta, k)
        return dx, None, None, None, None


_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)


def lrn_triton(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
               k: float = 2.0) -> torch.Tensor:
    """The paper's LRN over dim 1 of x (N, C, *) with the fused Triton kernels.

    Equals ``nn.LocalResponseNorm(size, alpha * size, beta, k)(x)``. fp32/fp16/bf16 are
    computed in fp32 and returned in x's dtype; other dtypes go through PyTorch's op.
    """
    check_lrn_args(x, size)
    if x.dtype not in _SUPPORTED or (x.shape[0] > 65535 and x[0, 0].numel() > 1):
        # (images are the grid's second axis, at most 65535 of them)
        x3 = x.unsqueeze(-1) if x.dim() == 2 else x
        y = torch.nn.functional.local_response_norm(x3, size, alpha * size, beta, k)
        return y.squeeze(-1) if x.dim() == 2 else y
    return LRNTritonFunction.apply(x, int(size), float(alpha), float(beta), float(k))
