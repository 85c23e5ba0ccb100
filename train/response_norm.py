"""Local response normalisation, the paper's formula (Section 3.3), with a fast CPU path.

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2) ^ beta

over the channels i = 0..N-1 of an (N, C, *) tensor, at each position; the paper's constants
are k=2, n=5, alpha=1e-4, beta=0.75.

Mapping to PyTorch: ``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` computes
``k + (alpha / size) * sum``, i.e. it divides alpha by n. The paper's LRN is therefore
``nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)``: for the paper's constants,
``nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``.

Window: ``size // 2`` channels before and ``(size - 1) // 2`` after channel i, clipped at the
edges (no wrap-around), as nn.LocalResponseNorm does; for odd n (the paper's n=5) this is the
paper's i-n/2 .. i+n/2 exactly.

On CUDA tensors, ``lrn`` uses ``train.lrn_triton.lrn_triton`` when that module imports (a fused
Triton kernel with the same signature); otherwise, and on CPU, it uses ``_LRNFunction``: a
hand-written forward and backward built from a few whole-tensor ops, several times cheaper
than autograd through nn.LocalResponseNorm's pad + avg_pool3d + pow + div graph.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["lrn", "LRN"]

_triton_lrn = None        # the Triton kernel once imported; False once the import failed


def _add_window(total: torch.Tensor, v: torch.Tensor, before: int, after: int,
                alpha: float = 1.0) -> torch.Tensor:
    """total[:, i] += alpha * sum of v[:, j] for j in i-before..i+after, j != i, clipped at the edges.

    One in-place add of a shifted channel slice per neighbour: no padding buffer, any layout.
    """
    for d in range(1, before + 1):
        total[:, d:].add_(v[:, :-d], alpha=alpha)
    for d in range(1, after + 1):
        total[:, :-d].add_(v[:, d:], alpha=alpha)
    return total


def _forward(x, size, alpha, beta, k, need_grad):
    """y = x * s^-beta, s = k + alpha * window_sum(x^2); also (p, r) = (s^-beta, y / s) if needed.

    Each line is one pass over the tensor; three tensors are allocated (two if no gradient).
    """
    s = torch.addcmul(x.new_tensor(k), x, x, value=alpha)       # k + alpha x_i^2 (centre term)
    sq = x * x
    _add_window(s, sq, size // 2, (size - 1) // 2, alpha)        # + alpha x_j^2 of the neighbours
    if beta == 0.75:                                             # the paper's beta: rsqrt, not pow
        t = s.rsqrt_()                                           # s^-1/2
        p = torch.rsqrt(t, out=sq)                               # s^1/4
        t.mul_(t)                                                # s^-1
        p.mul_(t)                                                # s^-3/4
        y = x * p
        return y, ((p, t.mul_(y)) if need_grad else None)        # r = y / s
    p = torch.pow(s, -beta, out=sq)
    y = x * p
    return y, ((p, torch.div(y, s, out=s)) if need_grad else None)


class _LRNFunction(torch.autograd.Function):
    """y = x * s^-beta with s_i = k + alpha * sum_{j in W(i)} x_j^2.

    dL/dx_j = g_j s_j^-beta + sum_{i: j in W(i)} g_i x_i (-beta) s_i^(-beta-1) alpha 2 x_j
            = g_j p_j - 2 alpha beta x_j * sum_{i in W'(j)} g_i r_i,  p = s^-beta, r = y / s,
    where W'(j) = {i : j in W(i)} is the window mirrored: (size-1)//2 channels before and
    size//2 after (W itself for odd size). Saved for backward: x (kept alive by the preceding
    ReLU anyway), p and r.
    """

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        y, saved = _forward(x, size, alpha, beta, k, need_grad=True)
        ctx.save_for_backward(x, *saved)
        ctx.constants = (size, alpha, beta)
        return y

    @staticmethod
    def backward(ctx, g):
        x, p, r = ctx.saved_tensors
        size, alpha, beta = ctx.constants
        t = g * r
        ws = _add_window(g * r, t, (size - 1) // 2, size // 2)   # window sum of g r
        grad = torch.mul(g, p, out=t)
        grad.addcmul_(x, ws, value=-2.0 * alpha * beta)
        return grad, None, None, None, None


def _lrn_reference_path(x, size, alpha, beta, k):
    """The CPU/fallback path: custom autograd when a gradient is needed, else forward only."""
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(compute_dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        y = _LRNFunction.apply(xc, size, alpha, beta, k)
    else:
        y, _ = _forward(xc, size, alpha, beta, k, need_grad=False)
    return y.to(x.dtype)


def _load_triton():
    global _triton_lrn
    if _triton_lrn is None:
        try:
            from train.lrn_triton import lrn_triton
            _triton_lrn = lrn_triton
        except Exception:                        # no Triton, no kernel file, no compiler
            _triton_lrn = False
    return _triton_lrn


def check_lrn_args(x: torch.Tensor, size: int) -> None:
    """ValueError unless x is (N, C, *) and size >= 1 (the checks of both public lrn functions)."""
    if x.dim() < 2:
        raise ValueError(f"lrn expects (N, C, *) input, got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"lrn size must be >= 1, got {size}")


def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
        k: float = 2.0) -> torch.Tensor:
    """The paper's local response normalisation over dim 1 of ``x`` (N, C, *), any layout.

    Equals ``nn.LocalResponseNorm(size, alpha * size, beta, k)(x)`` (PyTorch divides alpha by
    size; the paper does not). float16/bfloat16 inputs are computed in float32 on the CPU path
    (squares of 0-255-scale activations overflow float16) and returned in their own dtype.
    """
    check_lrn_args(x, size)
    if x.is_cuda:
        kernel = _load_triton()
        if kernel:
            return kernel(x, size, alpha, beta, k)
    return _lrn_reference_path(x, size, alpha, beta, k)


class LRN(nn.Module):
    """Module form of :func:`lrn`, with the paper's constants as defaults (Section 3.3)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
