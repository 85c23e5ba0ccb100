"""train.response_norm against a direct loop over the paper's formula (Section 3.3) and nn.LocalResponseNorm."""
import numpy as np
import pytest
import torch

from train.response_norm import LRN, lrn

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)      # k=2, n=5, alpha=1e-4, beta=0.75


def lrn_loop(a, size, alpha, beta, k):
    """b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta, channel by
    channel, window term by window term (n/2 rounds down before i and, for even n, up to
    (n-1)/2 after, as nn.LocalResponseNorm; for odd n both are the paper's n/2)."""
    a = np.asarray(a, dtype=np.float64)
    channels = a.shape[1]
    b = np.empty_like(a)
    for i in range(channels):
        total = np.zeros_like(a[:, 0])
        for j in range(max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2) + 1):
            total += a[:, j] ** 2
        b[:, i] = a[:, i] / (k + alpha * total) ** beta
    return b


def relu_maps(shape, scale=100.0, seed=0, dtype=torch.float32):
    """ReLU-like activations at the paper's 0-255 input scale (so the normalisation bites)."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [1, 3, 5, 7, 12])   # fewer channels than n: edges everywhere
def test_matches_direct_loop_paper_constants(layout, channels):
    x = relu_maps((2, channels, 5, 4)).contiguous(memory_format=layout)
    y = lrn(x, **PAPER)
    np.testing.assert_allclose(y.numpy(), lrn_loop(x.numpy(), **PAPER), rtol=2e-6, atol=1e-5)
    assert y.is_contiguous(memory_format=layout)
    # The normalisation is not a no-op at this scale: some outputs shrink by > 2x.
    assert (y < x / 2).any()


@pytest.mark.parametrize("layout", LAYOUTS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 9])
def test_matches_direct_loop_other_sizes(layout, size):
    x = relu_maps((3, 8, 3, 5), scale=3.0, seed=size, dtype=torch.float64)
    x = x.contiguous(memory_format=layout)
    y = lrn(x, size=size, alpha=0.05, beta=0.6, k=1.5)
    np.testing.assert_allclose(y.numpy(), lrn_loop(x.numpy(), size, 0.05, 0.6, 1.5), rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [3, 4, 5])
def test_equals_torch_lrn_with_alpha_times_size(layout, size):
    x = relu_maps((4, 10, 6, 7), seed=1).contiguous(memory_format=layout).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    torch_lrn = torch.nn.LocalResponseNorm(size, alpha=1e-4 * size, beta=0.75, k=2.0)
    y, y_ref = lrn(x, size, 1e-4, 0.75, 2.0), torch_lrn(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-6)


def test_torch_lrn_without_the_mapping_differs():
    """Passing the paper's alpha straight to nn.LocalResponseNorm is a different function."""
    x = relu_maps((2, 8, 4, 4))
    assert not torch.allclose(lrn(x, **PAPER), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x))


def test_three_dimensional_input():
    x = relu_maps((2, 9, 11), seed=2)
    np.testing.assert_allclose(lrn(x, **PAPER).numpy(), lrn_loop(x.numpy(), **PAPER), rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("size,beta", [(5, 0.75), (5, 0.6), (4, 0.75), (3, 1.0)])
def test_gradcheck_float64(layout, size, beta):
    x = relu_maps((2, 6, 3, 3), scale=4.0, seed=3, dtype=torch.float64)
    x = x.contiguous(memory_format=layout).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn(t, size, 0.05, beta, 2.0), (x,))


def test_gradcheck_paper_constants_large_activity():
    x = relu_maps((1, 7, 2, 3), scale=150.0, seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: lrn(t, **PAPER), (x,), atol=1e-8)


def test_no_grad_path_equals_grad_path():
    x = relu_maps((2, 8, 5, 5))
    with torch.no_grad():
        y_inference = lrn(x)
    y_train = lrn(x.clone().requires_grad_())
    assert torch.equal(y_inference, y_train.detach())


def test_half_input_computed_in_float32_returns_half():
    x = relu_maps((2, 6, 4, 4), scale=200.0)        # squares overflow float16
    y = lrn(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), lrn(x.half().float()), rtol=1e-3, atol=1e-3)


def test_module_equals_function_and_torch_mapping():
    x = relu_maps((2, 7, 5, 5), seed=5)
    m = LRN()
    assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 2.0)
    assert torch.equal(m(x), lrn(x))
    torch.testing.assert_close(m(x), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(x))
    assert torch.equal(LRN(3, 0.1, 0.5, 1.0)(x), lrn(x, 3, 0.1, 0.5, 1.0))
    assert "alpha=0.0001" in repr(m)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="N, C"):
        lrn(torch.ones(5))
    with pytest.raises(ValueError, match="size"):
        lrn(torch.ones(1, 3, 2, 2), size=0)


@pytest.mark.gpu
@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = relu_maps((4, 48, 27, 27), seed=6).requires_grad_()
    xc = x.detach().cuda().requires_grad_()
    g = torch.randn_like(x)
    y, yc = lrn(x), lrn(xc)
    y.backward(g)
    yc.backward(g.cuda())
    torch.testing.assert_close(yc.cpu(), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-3, atol=1e-5)
