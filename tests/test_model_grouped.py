"""AlexNet(conv="grouped") against the split form (the paper's two columns as separate layers)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import train.model as M
from train.model import AlexNet
from train.optim import PaperSGD, param_groups
from train.response_norm import LRN, lrn

NUM_CLASSES, WIDTH = 10, 0.25


def make(seed=0, init="kaiming", **kw):
    """Kaiming's init keeps the input's scale through the layers: logits of a few units, not the
    caffe init's ~0.01 at this width, and LRN (Section 3.3) matters at the 0-255 scale."""
    torch.manual_seed(seed)
    return AlexNet(NUM_CLASSES, width=WIDTH, init=init, **kw)


def images(n, seed=0, scale=50.0):
    """0-255-scale input minus a mean (what "image" normalisation feeds the paper's net)."""
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed)) * scale


def run(model, x, conv):
    model.conv = conv
    return model(x, return_features=True)


def assert_close(a, b, scale=None, what=""):
    scale = a.abs().max() if scale is None else scale
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(scale)), (what, (a - b).abs().max())


@pytest.mark.parametrize("lrn_on", [True, False])
@pytest.mark.parametrize("pool", ["overlapping", "traditional"])
@pytest.mark.parametrize("init", ["kaiming", "caffe"])
def test_eval_logits_and_features_match_split(lrn_on, pool, init):
    model = make(lrn=lrn_on, pool=pool, init=init).eval()
    x = images(3)
    with torch.no_grad():
        split, f_split = run(model, x, "split")
        grouped, f_grouped = run(model, x, "grouped")
    assert grouped.shape == (3, NUM_CLASSES) and f_grouped.shape == f_split.shape == (3, 1024)
    assert_close(split, grouped)
    assert_close(f_split, f_grouped)


def test_channels_last_matches_split():
    model = make().eval()
    x = images(2)
    with torch.no_grad():
        split, f_split = run(model, x, "split")
        model.to(memory_format=torch.channels_last)
        grouped, f_grouped = run(model, x.contiguous(memory_format=torch.channels_last), "grouped")
    assert_close(split, grouped)
    assert_close(f_split, f_grouped)


def test_lrn_per_column_in_every_layout():
    """The view paths (NCHW, channels-last) and the fallback (a channel slice) all equal LRN on
    each column's half alone."""
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2, 24, 7, 7, generator=gen)) * 30
    want = torch.cat([lrn(x[:, :12]), lrn(x[:, 12:])], 1)
    for layout in (x, x.contiguous(memory_format=torch.channels_last),
                   torch.cat([x, x], 1)[:, 24:]):            # neither layout: the chunk path
        got = M._lrn_columns(LRN(), LRN(), layout)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    assert M._lrn_columns(LRN(), LRN(), x.contiguous(memory_format=torch.channels_last)).is_contiguous(
        memory_format=torch.channels_last)
    # across the boundary a joined LRN would differ: channels 10..13 see the other column
    joined = lrn(x)
    assert not torch.allclose(joined[:, 10:14], want[:, 10:14], rtol=1e-3)
    assert torch.allclose(joined[:, :10], want[:, :10]) and torch.allclose(joined[:, 14:], want[:, 14:])


def test_lrn_does_not_cross_the_columns(monkeypatch):
    """A grouped forward whose LRN ran over the joined channels (the wrong reference) differs
    from the split form; the real grouped form matches it."""
    model = make().eval()
    x = images(2)
    with torch.no_grad():
        split, _ = run(model, x, "split")
        grouped, _ = run(model, x, "grouped")
        monkeypatch.setattr(M, "_lrn_columns", lambda lrn0, lrn1, a: lrn0(a))
        wrong, _ = run(model, x, "grouped")
    assert_close(split, grouped)
    assert not torch.allclose(split, wrong, rtol=1e-3, atol=1e-3 * float(split.abs().max()))


def gradients(model, x, y, conv):
    model.conv = conv
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def no_dropout(model):
    for column in model.columns:
        column.dropout.p = 0
    return model.train()


def test_training_gradients_and_sgd_step_match_split():
    model = no_dropout(make())
    x, y = images(2), torch.tensor([1, 7])
    split, grouped = gradients(model, x, y, "split"), gradients(model, x, y, "grouped")
    assert split.keys() == grouped.keys() == dict(model.named_parameters()).keys()
    for name in split:
        assert grouped[name].abs().max() > 0, name
        assert_close(split[name], grouped[name], what=name)

    nets = {"split": model, "grouped": copy.deepcopy(model)}
    for conv, net in nets.items():
        net.conv = conv
        opt = PaperSGD(param_groups(net), lr=0.01, momentum=0.9, weight_decay=5e-4)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    after = {conv: dict(net.named_parameters()) for conv, net in nets.items()}
    for name, w in after["split"].items():
        assert_close(w.detach(), after["grouped"][name].detach())


def test_state_dict_loads_in_either_form():
    grouped = make(seed=1, conv="grouped").eval()
    split = make(seed=2).eval()
    assert grouped.state_dict().keys() == split.state_dict().keys()
    assert "conv" not in grouped.config and grouped.config == split.config
    split.load_state_dict(grouped.state_dict(), strict=True)
    x = images(2)
    with torch.no_grad():
        assert_close(grouped(x), split(x))
        other = make(seed=3, conv="grouped").eval()
        other.load_state_dict(split.state_dict(), strict=True)
        assert_close(split(x), other(x))
    assert other.conv == "grouped" and split.conv == "split"


def test_one_column_net_accepts_grouped_unchanged():
    model = make(columns=1).eval()
    x = images(2)
    with torch.no_grad():
        split = run(model, x, "split")
        grouped = run(model, x, "grouped")
    assert torch.equal(split[0], grouped[0]) and torch.equal(split[1], grouped[1])


def test_unknown_conv_is_an_error_naming_the_option():
    with pytest.raises(ValueError, match=r"conv='depthwise' is not one of split, grouped"):
        make(conv="depthwise")
    model = make()
    with pytest.raises(ValueError, match="conv="):
        model.conv = "Grouped"
    assert model.conv == "split"


def test_grouped_needs_one_device():
    with pytest.raises(ValueError, match=r"conv='grouped' needs both columns on one device"):
        make(devices=("cpu", "meta"), conv="grouped")
    with pytest.raises(ValueError, match=r"conv='grouped' needs both columns on one device"):
        M._check_conv("grouped", (torch.device("cuda", 0), torch.device("cuda", 1)))
    M._check_conv("grouped", (torch.device("cpu"), torch.device("cpu")))
    model = make(devices=("cpu", "cpu"), conv="grouped")     # a pair naming one device is fine
    model.columns[1].to("meta")                                # moved later: forward refuses
    with pytest.raises(ValueError, match=r"conv='grouped' needs both columns on one device"):
        model(images(1))


def test_grouped_training_drops_half_of_fc6_and_fc7():
    """Section 4.2 in the grouped form: each fc6/fc7 unit's output is zeroed with p = 0.5 (of
    the units that were positive), in both columns' halves."""
    model = make().train()
    model.conv = "grouped"
    seen = []
    model.columns[0].dropout.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model(images(4))
    assert len(seen) == 2                                      # fc6, then fc7: both columns joined
    for inp, out in seen:
        assert inp.shape == (4, 1024)
        for half in (slice(0, 512), slice(512, 1024)):
            alive = inp[:, half] > 0
            kept = (out[:, half][alive] != 0).float().mean().item()
            assert alive.sum() > 200 and 0.4 < kept < 0.6
            assert torch.equal(out[:, half][out[:, half] != 0], inp[:, half][out[:, half] != 0])


def test_columns_with_different_dropout_keep_their_own():
    model = make().train()
    model.conv = "grouped"
    model.columns[1].dropout.p = 0
    outs = []
    model.fc8.register_forward_hook(lambda mod, inp, out: outs.append(inp[0]))
    with torch.no_grad():
        _, features = model(images(4), return_features=True)
    assert torch.equal(outs[0][:, 512:], features[:, 512:])   # column 2 keeps every unit
    assert (outs[0][:, :512][features[:, :512] > 0] == 0).float().mean() > 0.4


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gpu_grouped_matches_split_with_the_triton_lrn(layout, monkeypatch):
    """On CUDA the LRN is the Triton kernel, fed the (2N, C, H, W) or (2NHW, C, 1) views of
    `_lrn_columns`: the grouped net against the split one, logits and gradients, TF32 off."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = make(init="kaiming").cuda().to(memory_format=layout)
    for column in model.columns:
        column.dropout.p = 0.0
    x = images(4).cuda().contiguous(memory_format=layout)
    y = torch.arange(4, device="cuda")
    grads = {}
    for conv in ("split", "grouped"):
        model.zero_grad(set_to_none=True)
        logits, features = run(model, x, conv)
        F.cross_entropy(logits, y).backward()
        grads[conv] = (logits.detach(), features.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l0, f0, g0), (l1, f1, g1) = grads["split"], grads["grouped"]
    # cuDNN picks other algorithms (other summation orders) for grouped convolutions: 1e-3 of
    # each tensor's largest value, as tests/test_model.py allows between GPU placements
    for a, b, what in [(l0, l1, "logits"), (f0, f1, "features")] + [(g0[k], g1[k], k) for k in g0]:
        assert (a - b).abs().max() <= 1e-3 * a.abs().max(), what
