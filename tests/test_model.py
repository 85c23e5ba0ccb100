"""The two-column AlexNet: sizes (Section 3.5), parameter count, column wiring, init (Section 5)."""
import math

import pytest
import torch
from torch import nn

from train.model import AlexNet, PaperDropout, count_parameters, input_norm_for
from train.optim import PaperSGD, param_groups
from train.response_norm import LRN

# Parameters from the paper's layer shapes (Section 3.5, Figure 2), weights + biases, at width 1.
# The columns' halves add up to these whole-layer counts.
PAPER_PARAMETERS = (
    11 * 11 * 3 * 96 + 96            # conv1: 96 kernels 11x11x3                 =     34,944
    + 5 * 5 * 48 * 256 + 256         # conv2: 256 kernels 5x5x48 (own column)    =    307,456
    + 3 * 3 * 256 * 384 + 384        # conv3: 384 kernels 3x3x256 (both columns) =    885,120
    + 3 * 3 * 192 * 384 + 384        # conv4: 384 kernels 3x3x192 (own column)   =    663,936
    + 3 * 3 * 192 * 256 + 256        # conv5: 256 kernels 3x3x192 (own column)   =    442,624
    + 6 * 6 * 256 * 4096 + 4096      # fc6: 4096 units on the 6x6x256 pool       = 37,752,832
    + 4096 * 4096 + 4096             # fc7                                       = 16,781,312
    + 4096 * 1000 + 1000             # fc8                                       =  4,097,000
)


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return AlexNet().eval()


def images(n, seed=0, scale=1.0):
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed)) * scale


def record_outputs(model, names):
    """Forward hooks keeping the output of the named submodules."""
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(name, out.detach().clone()))
    return seen


def test_parameter_count_width_1(full_model):
    assert PAPER_PARAMETERS == 60_965_224      # "60 million parameters" (Section 4)
    assert count_parameters(full_model) == PAPER_PARAMETERS


def test_sizes_at_width_1(full_model):
    """conv1 gives 55x55x96 = 290,400 neurons; pools give 27, 13 and 6 (Figure 2)."""
    sizes, pools = {}, []

    def keep(key):
        return lambda module, inputs, output: sizes.__setitem__(key, tuple(output.shape))

    handles = [full_model.columns[c].get_submodule(layer).register_forward_hook(keep(f"{layer}.{c}"))
               for c in (0, 1) for layer in ("conv1", "conv5")]
    handles.append(full_model.columns[0].pool.register_forward_hook(
        lambda module, inputs, output: pools.append(output.shape[-1])))
    with torch.no_grad():
        logits, features = full_model(images(1), return_features=True)
    for handle in handles:
        handle.remove()
    assert sizes["conv1.0"] == sizes["conv1.1"] == (1, 48, 55, 55)
    assert 2 * math.prod(sizes["conv1.0"][1:]) == 55 * 55 * 96 == 290_400
    assert sizes["conv5.0"] == (1, 128, 13, 13)
    assert pools == [27, 13, 6]
    assert logits.shape == (1, 1000) and features.shape == (1, 4096)
    assert full_model.conv1_weight().shape == (96, 3, 11, 11)


def test_output_shapes_and_features():
    model = AlexNet(num_classes=10, width=0.125).eval()
    with torch.no_grad():
        logits = model(images(2))
        logits2, features = model(images(2), return_features=True)
    assert logits.shape == (2, 10)
    assert torch.equal(logits, logits2)
    assert features.shape == (2, 2 * 256)          # fc7: 4096 * 0.125, both columns
    assert (features >= 0).all()                   # after ReLU
    assert model.config == dict(num_classes=10, width=0.125, init="caffe", input_norm="image", columns=2, lrn=True,
                                pool="overlapping")


@pytest.mark.parametrize("width", [0.5, 0.25, 0.125, 0.01])
def test_width_scales_every_layer_with_equal_halves(width):
    model = AlexNet(num_classes=7, width=width)
    a, b = model.columns
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        wa, wb = getattr(a, name).weight, getattr(b, name).weight
        assert wa.shape == wb.shape and wa.shape[0] >= 1
    assert a.conv1.out_channels == max(1, round(96 * width / 2))
    assert a.fc7.out_features == max(1, round(4096 * width / 2))
    assert model.fc8.in_features == 2 * a.fc7.out_features and model.fc8.out_features == 7


def test_conv1_weight_is_column_1_then_column_2():
    model = AlexNet(width=0.25)
    w = model.conv1_weight()
    assert w.shape == (24, 3, 11, 11)
    assert torch.equal(w[:12], model.columns[0].conv1.weight)
    assert torch.equal(w[12:], model.columns[1].conv1.weight)


@pytest.mark.parametrize("src,dst", [(1, 0), (0, 1)])
def test_columns_meet_only_at_conv3_fc6_fc7_and_fc8(src, dst):
    """Both ways (column `src` changed, column `dst` watched): a change before conv3 leaves the
    other column's conv2 alone and reaches its conv3; a change of conv3 leaves the other's
    conv3-conv5 alone and reaches its fc6; fc6 reaches the other's fc7, not its fc6; and every
    change, fc7's included, reaches the logits (fc8 reads both columns' fc7)."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=5, width=0.125, init="kaiming").eval()
    names = [f"columns.{c}.{layer}" for c in (0, 1) for layer in ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7")]
    seen = record_outputs(model, names + ["fc8"])
    x = images(2)
    mine, other = f"columns.{src}", f"columns.{dst}"

    def change(layer):
        """Outputs before and after scaling column `src`'s `layer` weights by -1.5."""
        with torch.no_grad():
            model(x)
            before = dict(seen)
            model.get_submodule(f"{mine}.{layer}").weight.mul_(-1.5)
            model(x)
        return before, dict(seen)

    def same(a, b, name):
        return torch.equal(a[name], b[name])

    def moved(a, b, name):
        return not torch.allclose(a[name], b[name])

    before, after = change("conv1")                     # column src's conv2 input changes
    assert same(before, after, f"{other}.conv2") and moved(before, after, f"{mine}.conv2")
    assert moved(before, after, f"{other}.conv3") and moved(before, after, "fc8")

    before, after = change("conv3")
    for layer in ("conv2", "conv3", "conv4", "conv5"):
        assert same(before, after, f"{other}.{layer}"), layer
    assert moved(before, after, f"{mine}.conv4") and moved(before, after, f"{other}.fc6")
    assert moved(before, after, "fc8")

    before, after = change("fc6")
    assert same(before, after, f"{other}.fc6") and moved(before, after, f"{other}.fc7")
    assert moved(before, after, "fc8")

    before, after = change("fc7")                       # only fc8 reads fc7
    assert same(before, after, f"{other}.fc7") and moved(before, after, f"{mine}.fc7")
    assert moved(before, after, "fc8")


def check_normal_init(model, weight_std, bias):
    """Every layer's weights ~ N(0, weight_std[name]) and biases == bias[name] (0 if absent)."""
    for column in model.columns:
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            layer = getattr(column, name)
            std = weight_std.get(name, 0.01)
            assert abs(layer.weight.std().item() - std) < 0.05 * std, name
            assert abs(layer.weight.mean().item()) < 0.05 * std, name
            assert torch.all(layer.bias == bias.get(name, 0.0)), name
    assert abs(model.fc8.weight.std().item() - 0.01) < 5e-4
    assert torch.all(model.fc8.bias == 0)


def test_paper_init():
    """Section 5 literally: weights N(0, 0.01) in every layer; biases 1 in conv2, conv4, conv5, fc6, fc7."""
    torch.manual_seed(0)
    model = AlexNet(init="paper")
    check_normal_init(model, {}, {name: 1.0 for name in ("conv2", "conv4", "conv5", "fc6", "fc7")})
    assert model.config["input_norm"] == "image"


def test_caffe_init_is_the_default():
    """Section 5 as Caffe's bvlc_alexnet runs it: biases 0.1 where the paper has 1, fc6/fc7 N(0, 0.005)."""
    torch.manual_seed(0)
    model = AlexNet()
    assert model.config["init"] == "caffe" and model.config["input_norm"] == "image"
    check_normal_init(model, {"fc6": 0.005, "fc7": 0.005},
                      {name: 0.1 for name in ("conv2", "conv4", "conv5", "fc6", "fc7")})


def test_input_norm_follows_the_init_unless_given():
    assert input_norm_for("kaiming") == "channel" and input_norm_for("paper") == input_norm_for("caffe") == "image"
    assert AlexNet(4, width=0.125, init="kaiming").config["input_norm"] == "channel"
    assert AlexNet(4, width=0.125, init="kaiming", input_norm="image").config["input_norm"] == "image"
    with pytest.raises(ValueError, match="input_norm='raw'"):
        AlexNet(4, width=0.125, input_norm="raw")


def test_kaiming_init():
    """Fan-in Kaiming-normal everywhere (unit-scale input: the loaders' "channel" normalisation)."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=100, width=0.5, init="kaiming")
    col = model.columns[0]
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        w = getattr(col, name).weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1), name
    for name in ("fc6", "fc7"):
        w = getattr(col, name).weight
        assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[1]), rel=0.05), name
    assert model.fc8.weight.std().item() == pytest.approx(math.sqrt(1 / model.fc8.in_features), rel=0.05)
    assert all(torch.all(b == 0) for n, b in model.named_parameters() if n.endswith("bias"))


def test_unknown_init_is_an_error_naming_the_option():
    with pytest.raises(ValueError, match="init='xavier'"):
        AlexNet(init="xavier")
    with pytest.raises(ValueError, match="devices"):
        AlexNet(width=0.125, devices=("cpu", "cpu", "cpu"))


@pytest.mark.parametrize("devices", ["cpu", torch.device("cpu"), ("cpu",), ("cpu", "cpu")])
def test_device_placements_give_the_same_output(devices):
    torch.manual_seed(0)
    reference = AlexNet(num_classes=6, width=0.125).eval()
    model = AlexNet(num_classes=6, width=0.125, devices=devices).eval()
    model.load_state_dict(reference.state_dict())
    x = images(2, seed=1, scale=50.0)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.devices == (torch.device("cpu"),) * 2


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = AlexNet(num_classes=6, width=0.125, init="kaiming").eval()
    x = images(2, seed=2)
    with torch.no_grad():
        y = model(x)
        model.to(memory_format=torch.channels_last)
        y_cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = AlexNet(num_classes=6, width=0.125, init="kaiming")
    x = images(2, seed=3)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))
    assert sum(isinstance(m, PaperDropout) and m.p == 0.5 for m in model.modules()) == 2   # one per column
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_dropout_scales_as_section_4_2():
    """Training: each output is zero with probability 1/2, else unchanged (no 2x); test: all x 0.5."""
    torch.manual_seed(0)
    drop = PaperDropout(0.5)
    x = torch.rand(200, 500) + 0.5                     # no zeros of its own
    y = drop.train()(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])               # nn.Dropout would give 2x here
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(drop.eval()(x), x * 0.5)
    # in the model: fc7's output into fc8 at test time is half of fc7's activity
    model = AlexNet(num_classes=6, width=0.125, init="kaiming").eval()
    col = model.columns[0]
    both = torch.rand(3, col.fc7.in_features)
    with torch.no_grad():
        h, out = col.hidden7(both)
    assert torch.equal(out, h * 0.5) and torch.equal(h, torch.relu(col.fc7(both)))


@pytest.fixture
def one_thread():
    """One intra-op thread: steadier than two on a shared 2-core machine (~4 s here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_width_quarter_learns_a_tiny_task_with_kaiming_init(one_thread):
    """Four classes told apart by colour, unit-scale input: the loss falls from ~ln 4 to near 0
    within 25 steps at the small-run recipe's lr (the real learning bar is in test_demo.py)."""
    torch.manual_seed(0)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    g = torch.Generator().manual_seed(1)
    model = AlexNet(num_classes=4, width=0.25, init="kaiming")
    opt = PaperSGD(param_groups(model, 5e-4), lr=0.01)
    losses = []
    for _ in range(25):
        y = torch.randint(0, 4, (16,), generator=g)
        x = 0.5 * torch.randn(16, 3, 224, 224, generator=g) + 0.5 * colours[y][:, :, None, None]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0
    assert min(losses) < 0.05 and sum(losses[-8:]) / 8 < 0.3, losses


@pytest.mark.gpu
def test_gpu_placements_match_cpu():
    torch.manual_seed(0)
    reference = AlexNet(num_classes=6, width=0.25).eval()
    x = images(2, seed=4, scale=50.0)
    with torch.no_grad():
        expected = reference(x)
    placements = [("cuda:0",)] + ([("cuda:0", "cuda:1")] if torch.cuda.device_count() > 1 else [])
    for devices in placements:
        model = AlexNet(num_classes=6, width=0.25, devices=devices).eval()
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            y = model(x)
        assert y.device == torch.device(devices[0])
        torch.testing.assert_close(y.cpu(), expected, rtol=1e-3, atol=1e-3)


# --- the Section 3 ablations ------------------------------------------------------------------
def _layer_shapes(model):
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_one_column_net_is_section_3_2s_one_gpu_net():
    """Half the kernels in conv1-conv4, conv5 and fc6/fc7 at full size (footnote 2), one column
    whose conv3 sees only its own conv2; about the two-column net's parameter count."""
    one, two = AlexNet(1000, columns=1), AlexNet(1000)
    shapes = _layer_shapes(one)
    assert shapes["columns.0.conv1.weight"] == (48, 3, 11, 11)
    assert shapes["columns.0.conv2.weight"] == (128, 48, 5, 5)
    assert shapes["columns.0.conv3.weight"] == (192, 128, 3, 3)
    assert shapes["columns.0.conv4.weight"] == (192, 192, 3, 3)
    assert shapes["columns.0.conv5.weight"] == (256, 192, 3, 3)
    assert shapes["columns.0.fc6.weight"] == (4096, 256 * 6 * 6)
    assert shapes["columns.0.fc7.weight"] == (4096, 4096)
    assert shapes["fc8.weight"] == (1000, 4096) and len(one.columns) == 1
    # counted from the shapes above, and the paper's "approximately the same number"
    convs = [(48, 3, 11), (128, 48, 5), (192, 128, 3), (192, 192, 3), (256, 192, 3)]
    expected = sum(o * i * k * k + o for o, i, k in convs) + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert count_parameters(one) == expected == 59_798_312
    assert count_parameters(two) == 60_965_224 and abs(count_parameters(one) / count_parameters(two) - 1) < 0.02
    with torch.no_grad():
        logits, features = one.eval()(images(1), return_features=True)
    assert logits.shape == (1, 1000) and features.shape == (1, 4096)
    assert one.conv1_weight().shape == (48, 3, 11, 11)


def test_no_lrn_and_traditional_pooling_keep_every_shape():
    base = AlexNet(10, width=0.125, init="kaiming")
    for kw, changed in (({"lrn": False}, "lrn"), ({"pool": "traditional"}, "pool")):
        torch.manual_seed(0)
        model = AlexNet(10, width=0.125, init="kaiming", **kw)
        assert _layer_shapes(model) == _layer_shapes(base) and model.config[changed] == kw[changed]
    no_lrn = AlexNet(10, width=0.125, lrn=False)
    assert not any(isinstance(m, LRN) for m in no_lrn.modules())
    pools = [m for m in AlexNet(10, width=0.125, pool="traditional").modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert pools and all((p.kernel_size, p.stride) == (2, 2) for p in pools)


def test_traditional_pooling_is_max_over_adjacent_2x2_blocks():
    """z = s = 2 against a direct loop: the maximum of each non-overlapping 2x2 block."""
    model = AlexNet(10, width=0.125, pool="traditional")
    x = torch.randn(1, 3, 9, 9)
    got = model.columns[0].pool(x)
    want = torch.empty(1, 3, 4, 4)
    for i in range(4):
        for j in range(4):
            want[..., i, j] = x[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax(dim=(-1, -2))
    assert torch.equal(got, want)


def test_ablation_settings_round_trip_through_a_checkpoint(tmp_path):
    from train.checkpoint import model_from_checkpoint, save_checkpoint

    for kw in ({"columns": 1}, {"lrn": False}, {"pool": "traditional"}):
        model = AlexNet(4, width=0.125, init="kaiming", **kw)
        run = tmp_path / "-".join(map(str, kw.values()))
        run.mkdir()
        path = save_checkpoint(str(run), {"model": model.state_dict(), "model_config": model.config, "step": 1})
        back, _ = model_from_checkpoint(path)
        assert back.config == model.config
        x = images(2)
        with torch.no_grad():
            assert torch.equal(back(x), model.eval()(x))


def test_bad_ablation_values_name_the_option():
    with pytest.raises(ValueError, match="columns=3"):
        AlexNet(10, columns=3)
    with pytest.raises(ValueError, match="pool='max'"):
        AlexNet(10, pool="max")
