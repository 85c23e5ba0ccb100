"""The fused Triton LRN (train/lrn_triton.py) against nn.LocalResponseNorm(size, alpha*size, beta, k).

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set
here before triton is imported), so the CPU tests keep their tensors tiny. The tests marked
``gpu`` run the compiled kernels at the paper's conv1/conv2 sizes and are skipped without CUDA.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # The interpreter must be chosen before triton.language is imported (and triton cannot be
    # imported twice in one process): if something in this session imported it already
    # without the interpreter, these tests cannot run here. Run this file on its own then.
    if "triton.language" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run "
                    "tests/test_lrn_triton.py in a process of its own", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from torch import nn  # noqa: E402

LT = importlib.import_module("train.lrn_triton")
lrn_triton = LT.lrn_triton

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
gpu = pytest.mark.gpu  # skipped without a GPU by tests/conftest.py

PAPER = (5, 1e-4, 0.75, 2.0)                 # size, alpha, beta, k (Section 3.3)
ODD = [(3, 2e-2, 0.6, 1.5), (4, 1e-2, 0.9, 0.5), (1, 5e-2, 0.75, 1.0), (7, 3e-3, 1.2, 2.5)]


def reference(x, size, alpha, beta, k):
    """The paper's LRN through PyTorch's module, in float64 (alpha is divided by size there)."""
    if x.dim() == 2:                        # nn.LocalResponseNorm wants (N, C, *) with a *
        return reference(x.unsqueeze(-1), size, alpha, beta, k).squeeze(-1)
    return nn.LocalResponseNorm(size, alpha * size, beta, k)(x.double())


def activations(shape, scale=20.0, seed=0, fmt=torch.contiguous_format, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=gen)) * scale    # ReLU outputs, zeros included
    return x.to(DEV, dtype).contiguous(memory_format=fmt)


def check(x, params, g=None, rtol=1e-5):
    """Forward and input gradient of lrn_triton against the float64 reference."""
    size, alpha, beta, k = params
    xt = x.detach().clone().requires_grad_()
    y = lrn_triton(xt, size, alpha, beta, k)
    assert y.dtype == x.dtype and y.shape == x.shape
    if g is None:
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device, x.dtype)
    y.backward(g)
    xr = x.detach().double().requires_grad_()
    yr = reference(xr, size, alpha, beta, k)
    yr.backward(g.double())
    for got, want in ((y, yr), (xt.grad, xr.grad)):
        err = (got.double() - want).abs().max().item()
        assert err <= rtol * want.abs().max().item() + 1e-30, (err, want.abs().max().item())
    return y, xt.grad


@pytest.mark.parametrize("shape", [(2, 48, 7, 9), (2, 16, 5, 5)])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("params", [PAPER] + ODD[:2], ids=["paper", "odd3", "even4"])
def test_matches_nn_lrn_fp32(shape, fmt, params):
    x = activations(shape, fmt=fmt)
    y, dx = check(x, params)
    # the output and the gradient keep the input's memory format
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("params", ODD[2:], ids=["size1", "size7"])
def test_window_sizes_at_the_edges(params):
    check(activations((1, 6, 3, 2)), params)              # the window wider than the channels


@pytest.mark.parametrize("bwd_gather", [True, False], ids=["gather", "recompute"])
@pytest.mark.parametrize("fwd_gather", [True, False], ids=["fgather", "fshift"])
def test_kernel_variants(monkeypatch, fwd_gather, bwd_gather):
    monkeypatch.setitem(LT.CONFIG, "fwd_gather", fwd_gather)
    monkeypatch.setitem(LT.CONFIG, "bwd_gather", bwd_gather)
    for fmt in (torch.contiguous_format, torch.channels_last):
        check(activations((2, 12, 3, 5), fmt=fmt, seed=3), PAPER)


def test_several_channel_blocks(monkeypatch):
    """C larger than one tile: the channel axis is split into blocks with halo loads."""
    monkeypatch.setitem(LT.CONFIG, "max_gather_c", 16)
    x = activations((1, 300, 2, 1), fmt=torch.channels_last, seed=4)
    check(x, PAPER)
    check(activations((1, 300, 1, 2), seed=5), ODD[0])


def test_paper_scale_and_zero_input():
    # 0-255-scale activations: the squares are ~1e5, far past fp16's range; alpha*sum ~ k
    check(activations((1, 10, 3, 3), scale=300.0, seed=6), PAPER)
    x = torch.zeros(1, 5, 2, 2, device=DEV)
    y, dx = check(x, PAPER, g=torch.ones_like(x))
    assert torch.equal(y, x)
    torch.testing.assert_close(dx, torch.full_like(x, 2.0 ** -0.75))


def test_column_slice_of_a_wider_tensor():
    """One column's channels of a channels-last tensor: strided channels, no copy needed."""
    both = activations((2, 20, 4, 3), fmt=torch.channels_last, seed=7)
    for half in (both[:, :10], both[:, 10:]):
        assert not half.is_contiguous() and not half.is_contiguous(memory_format=torch.channels_last)
        check(half, PAPER)


def test_odd_strides_and_ranks():
    x = activations((2, 9, 4, 5), seed=8)
    check(x.transpose(2, 3), PAPER)                    # H and W do not flatten: copied
    check(x[:, :, ::2], ODD[0])                        # strided rows
    check(activations((3, 9, 7), seed=9), PAPER)       # N, C, L
    check(activations((4, 9), seed=10), ODD[1])        # N, C
    check(activations((2, 9, 2, 3, 2), seed=11), PAPER)  # N, C, D, H, W
    check(activations((1, 7, 1, 1), seed=12), PAPER)


def test_gradient_in_another_layout():
    x = activations((2, 8, 3, 4), fmt=torch.channels_last, seed=13)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(DEV)   # NCHW
    check(x, PAPER, g=g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage(dtype):
    """fp16/bf16 in and out, fp32 inside: within the output dtype's rounding."""
    x = activations((2, 10, 3, 3), scale=200.0, seed=14, dtype=dtype,
                    fmt=torch.channels_last)
    check(x, PAPER, rtol=1e-2)


def test_empty_and_errors():
    x = torch.empty(0, 8, 3, 3, device=DEV, requires_grad=True)
    y = lrn_triton(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    with pytest.raises(ValueError, match=r"lrn expects \(N, C, \*\) input, got shape \(3,\)"):
        lrn_triton(torch.ones(3, device=DEV))
    with pytest.raises(ValueError, match="lrn size must be >= 1, got 0"):
        lrn_triton(torch.ones(1, 3, device=DEV), size=0)


def test_float64_falls_back_to_pytorch():
    x = activations((1, 6, 2, 2), seed=15).double()
    torch.testing.assert_close(lrn_triton(x), reference(x, *PAPER))


# ----------------------------------------------------------------------------- GPU, real sizes

@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(128, 48, 55, 55), (128, 128, 27, 27)], ids=["conv1", "conv2"])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_paper_sizes(shape, fmt, dtype):
    torch.manual_seed(0)
    x = (torch.relu(torch.randn(shape, device="cuda")) * 30).to(dtype).contiguous(memory_format=fmt)
    g = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    xt = x.detach().clone().requires_grad_()
    y = lrn_triton(xt, *PAPER)
    y.backward(g)
    xr = x.detach().float().requires_grad_()
    yr = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(xr)
    yr.backward(g.float())
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    assert xt.grad.dtype == dtype and xt.grad.is_contiguous(memory_format=fmt)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in ((y, yr), (xt.grad, xr.grad)):
        err = (got.float() - want).abs().max().item()
        assert err <= tol * want.abs().max().item(), err


@gpu
@pytest.mark.gpu
def test_gpu_autocast_and_dispatch_from_train_lrn():
    from train.response_norm import lrn
    x = (torch.relu(torch.randn(8, 48, 13, 13, device="cuda")) * 30).contiguous(
        memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert lrn_triton(x.bfloat16()).dtype == torch.bfloat16   # runs in the input's dtype
        assert lrn_triton(x).dtype == torch.float32
    torch.testing.assert_close(lrn(x), reference(x, *PAPER).float(), rtol=1e-5, atol=1e-5)
    ref = nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)
    torch.testing.assert_close(lrn_triton(x), ref(x), rtol=1e-5, atol=1e-5)


@gpu
@pytest.mark.gpu
def test_gpu_torch_compile_traces_the_kernels():
    """torch.compile sees through the autograd.Function into the Triton kernels (no graph break)."""
    torch._dynamo.reset()
    x = (torch.relu(torch.randn(4, 48, 13, 13, device="cuda")) * 30).to(torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    g = torch.randn_like(x)
    f = torch.compile(lambda t: torch.relu(lrn_triton(t * 1.0)), fullgraph=True)
    got, want = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    f(got).backward(g)
    torch.relu(lrn_triton(want)).backward(g)
    torch.testing.assert_close(got.grad, want.grad, rtol=1e-2, atol=1e-2)
