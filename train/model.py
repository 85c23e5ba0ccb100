"""The paper's two-column AlexNet (Section 3.5, Figure 2), placeable on one or two devices.

Each column is the half of the network one GTX 580 held. The columns exchange activations only
where the paper's do: conv3 and fc6/fc7 see both columns' outputs, and fc8 (one 4096 -> classes
layer, as in the two-GPU code) reads both fc7 halves on the first device. Every layer is a plain
nn.Conv2d / nn.Linear (two per layer, one per column; no grouped convolutions), so hooks,
summaries and other tools see the paper's layers.

On one device, ``AlexNet(conv="grouped")`` runs each layer of both columns as one op (a grouped
convolution or one matrix product over the columns' concatenated weights): the same parameters,
the same maths, fewer and larger kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.config import COLUMNS, CONVS, INITS, INPUT_NORMS, POOLS, input_norm_for
from train.response_norm import LRN

__all__ = ["AlexNet", "Column", "PaperDropout", "column_sizes", "count_parameters", "input_norm_for", "parameter_count"]

# Channels of the whole network at width 1 (both columns together), Section 3.5.
CONV_CHANNELS = (96, 256, 384, 384, 256)
FC_HIDDEN = 4096
POOLED_SIZE = 6          # spatial size after the third max-pool: 55 -> 27 -> 13 -> 6
# The inits, input normalisations and conv forms, and which input each init is built for, live in
# train.config (no torch there, so the CLI can offer them as choices without loading torch).


def _per_column(full: int, width: float) -> int:
    """Channels of one column: half of ``full * width``, rounded, at least 1."""
    return max(1, int(round(full * width / 2)))


class PaperDropout(nn.Module):
    """Dropout as Section 4.2 writes it: in training each unit's output is set to zero with
    probability ``p`` and the kept ones pass unchanged; at test time every output is multiplied
    by ``1 - p`` (0.5 in the paper), "a reasonable approximation to taking the geometric mean".

    ``nn.Dropout`` instead divides the kept units by ``1 - p`` in training and leaves test outputs
    alone: the same ratio of train to test, but twice the paper's training activity flows into
    the next layer (fc8's input doubles, so do its gradients, and SGD with weight decay then takes
    other steps).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training:
            return x * (1.0 - self.p)
        if self.p == 0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Column(nn.Module):
    """One column of Figure 2: `channels` (conv1..conv5) and `hidden` (fc6, fc7) are this
    column's; `columns` is how many there are, since conv3, fc6 and fc7 take every column's
    maps. `lrn` and `pool` are the Section 3.3 and 3.4 choices (see AlexNet)."""

    def __init__(self, channels, hidden, columns=2, lrn=True, pool="overlapping"):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        # Padding 2 gives the paper's 55x55 conv1 maps from a 224x224 input:
        # floor((224 + 2*2 - 11) / 4) + 1 = floor(54.25) + 1 = 55 (unpadded, 227 would do too).
        self.conv1 = nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)               # own column only
        self.conv3 = nn.Conv2d(columns * c2, c3, kernel_size=3, padding=1)     # every column's conv2
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)               # own column only
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)               # own column only
        self.fc6 = nn.Linear(columns * c5 * POOLED_SIZE ** 2, hidden)          # every column's pool5
        self.fc7 = nn.Linear(columns * hidden, hidden)                         # every column's fc6
        # Section 3.3, or nothing for its ablation
        self.lrn = LRN(size=5, alpha=1e-4, beta=0.75, k=2.0) if lrn else nn.Identity()
        # Section 3.4: z = 3, s = 2 overlaps; z = s = 2 is "traditional local pooling". Both
        # give 55 -> 27 -> 13 -> 6, so the rest of the net is the same.
        self.pool = nn.MaxPool2d(kernel_size=3 if pool == "overlapping" else 2, stride=2)
        self.dropout = PaperDropout(0.5)                                       # Section 4.2

    def features1(self, x):
        """conv1 -> ReLU -> LRN -> pool -> conv2 -> ReLU -> LRN -> pool, within the column."""
        x = self.pool(self.lrn(torch.relu(self.conv1(x))))
        return self.pool(self.lrn(torch.relu(self.conv2(x))))

    def features2(self, both):
        """conv3 (on every column's maps) -> conv4 -> conv5 -> pool, flattened."""
        x = torch.relu(self.conv3(both))
        x = torch.relu(self.conv4(x))
        x = self.pool(torch.relu(self.conv5(x)))
        return torch.flatten(x, 1)         # a copy for channels-last maps, in C, H, W order

    def hidden6(self, both):
        return self.dropout(torch.relu(self.fc6(both)))

    def hidden7(self, both):
        """fc7 after ReLU, before and after dropout (in eval mode, dropout halves it)."""
        h = torch.relu(self.fc7(both))
        return h, self.dropout(h)


def column_sizes(width: float, columns: int):
    """(conv1..conv5 channels, fc6/fc7 units) of each column. Two columns split every layer in
    half (Section 3.2). The one-GPU net of Section 3.2 has "half as many kernels in each
    convolutional layer", except the last, and full-size fully-connected layers (its footnote 2:
    so that both nets have about the same number of parameters)."""
    if columns == 2:
        return tuple(_per_column(c, width) for c in CONV_CHANNELS), _per_column(FC_HIDDEN, width)
    convs = tuple(_per_column(c, width) for c in CONV_CHANNELS[:4]) + (max(1, round(CONV_CHANNELS[4] * width)),)
    return convs, max(1, round(FC_HIDDEN * width))


def parameter_count(num_classes: int = 1000, width: float = 1.0, columns: int = 2) -> int:
    """The parameters of ``AlexNet(num_classes, width=width, columns=columns)``, counted from the
    layer sizes without building it (so a net too large for its device is refused before any
    allocation: train.capacity)."""
    (c1, c2, c3, c4, c5), hidden = column_sizes(width, columns)
    column = (3 * 11 * 11 * c1 + c1 + c1 * 5 * 5 * c2 + c2 + columns * c2 * 3 * 3 * c3 + c3
              + c3 * 3 * 3 * c4 + c4 + c4 * 3 * 3 * c5 + c5
              + columns * c5 * POOLED_SIZE ** 2 * hidden + hidden + columns * hidden * hidden + hidden)
    return columns * column + columns * hidden * num_classes + num_classes


class AlexNet(nn.Module):
    """The paper's network (Figure 2): ``AlexNet(num_classes, devices, width, init, input_norm,
    columns, lrn, pool, conv)``.

    Args:
        num_classes: outputs of fc8 (1000 for ImageNet).
        devices: None (CPU); one device or a 1-tuple (both columns on it, the same maths); or a
            pair (column 1 on ``devices[0]``, column 2 on ``devices[1]``; logits on devices[0]).
        width: multiplies every layer's channels and hidden units (1.0 is the paper's).
        init: "caffe" (the default: Section 5 with biases 0.1 instead of 1 and N(0, 0.005) for
            fc6/fc7, as Caffe's replication), "paper" (Section 5 literally: N(0, 0.01) weights;
            biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere; with nn.Dropout its loss
            spiked and fc7 died at batch 128; with Section 4.2's dropout it learned but left
            6x as many fc7 units dead, docs/PERFORMANCE.md) or "kaiming" (Kaiming-normal, zero
            biases, for unit-scale input: the small-run recipe).
        input_norm: what the loaders feed it, "image" (0-255 minus the mean image, the paper's)
            or "channel" (unit scale); None picks :func:`input_norm_for` the init. The model
            does not apply it: it is recorded in ``config`` (and so in every checkpoint) for the
            loaders of training, validation, ``eval``, ``figures`` and ``profile``.
        columns: 2 (the paper's net) or 1 (Section 3.2's one-GPU net, see :func:`column_sizes`;
            it lives on ``devices[0]``).
        lrn: False drops the response normalisation (the Section 3.3 ablation).
        pool: "overlapping" (z = 3, s = 2, the paper's) or "traditional" (z = s = 2, Section 3.4).
        conv: how the two columns run, not what they are (not in ``config``; the parameters and
            the state dict are the same either way, so a checkpoint loads in both, and
            ``model.conv`` may be changed at any time). "split" (the default): every layer is
            its two columns' own nn.Conv2d / nn.Linear calls. "grouped": one op per layer over
            both columns' concatenated weights (conv2, conv4, conv5 with ``groups=2``; conv1,
            conv3, fc6, fc7 with both columns' kernels stacked), LRN still within each column;
            the gradients reach each column's own parameters. It needs both columns on one
            device, and the forward hooks of the per-column conv/linear modules do not fire in
            it. A one-column net (columns=1) has nothing to group and runs as it is.
    """

    def __init__(self, num_classes: int = 1000, devices=None, width: float = 1.0,
                 init: str = "caffe", input_norm: str | None = None, columns: int = 2, lrn: bool = True,
                 pool: str = "overlapping", conv: str = "split"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        input_norm = input_norm or input_norm_for(init)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r} is not one of {', '.join(INPUT_NORMS)}")
        if columns not in COLUMNS:
            raise ValueError(f"columns={columns!r} is not one of {COLUMNS}")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {', '.join(POOLS)}")
        self.config = dict(num_classes=num_classes, width=width, init=init, input_norm=input_norm,
                           columns=columns, lrn=bool(lrn), pool=pool)
        channels, hidden = column_sizes(width, columns)
        self.columns = nn.ModuleList([Column(channels, hidden, columns, lrn, pool) for _ in range(columns)])
        self.fc8 = nn.Linear(columns * hidden, num_classes)
        _init_weights(self, init)
        d0, d1 = _placement(devices)
        for column, d in zip(self.columns, (d0, d1)):
            column.to(d)
        self.fc8.to(d0)
        self.conv = conv                 # an execution choice, like channels-last: not in config

    @property
    def devices(self) -> tuple[torch.device, ...]:
        """Where the columns are now (so ``model.to(...)`` afterwards is respected)."""
        return tuple(c.conv1.weight.device for c in self.columns)

    @property
    def conv(self) -> str:
        """"split" or "grouped" (see the class docstring); checked when set and in forward."""
        return self._conv_form

    @conv.setter
    def conv(self, value: str):
        _check_conv(value, self.devices)
        self._conv_form = value

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (N x num_classes, on devices[0]); with ``return_features``, also the fc7
        activity (N x 4096 at width 1, after ReLU, before dropout), the paper's last hidden layer
        used for its nearest-neighbour figure (Section 6.1)."""
        if len(self.columns) == 1:
            logits, features = self._one_column(x)
        elif self._conv_form == "grouped":
            logits, features = self._grouped(x)
        else:
            logits, (f0, f1) = self._two_columns(x)
            if return_features:  # joined only when asked: not on every training step
                features = torch.cat([f0, f1.to(f0.device, non_blocking=True)], 1)
        return (logits, features) if return_features else logits

    def _one_column(self, x):
        col = self.columns[0]
        a = col.features2(col.features1(x.to(self.devices[0], non_blocking=True)))
        f, a = col.hidden7(col.hidden6(a))
        return self.fc8(a), f

    def _two_columns(self, x):
        d0, d1 = self.devices
        col0, col1 = self.columns
        a0 = col0.features1(x.to(d0, non_blocking=True))
        a1 = col1.features1(x.to(d1, non_blocking=True))
        a0, a1 = _exchange(col0.features2, col1.features2, a0, a1, d0, d1)   # conv3 sees both
        a0, a1 = _exchange(col0.hidden6, col1.hidden6, a0, a1, d0, d1)       # fc6 sees both
        (f0, a0), (f1, a1) = _exchange(col0.hidden7, col1.hidden7, a0, a1, d0, d1)
        logits = self.fc8(torch.cat([a0, a1.to(d0, non_blocking=True)], 1))
        return logits, (f0, f1)

    def _grouped(self, x):
        """_two_columns' maths with one op per layer for both columns (conv="grouped"). Every
        joined tensor holds column 0's channels (units) first, as _exchange's concatenations."""
        _check_conv("grouped", self.devices)
        col0, col1 = self.columns
        x = x.to(self.devices[0], non_blocking=True)
        a = torch.relu(_conv(x, col0.conv1, col1.conv1))                  # both read the image
        a = col0.pool(_lrn_columns(col0.lrn, col1.lrn, a))                # LRN per column (3.3)
        a = torch.relu(_conv(a, col0.conv2, col1.conv2, groups=2))        # own column only
        a = col0.pool(_lrn_columns(col0.lrn, col1.lrn, a))
        a = torch.relu(_conv(a, col0.conv3, col1.conv3))                  # every column's conv2
        a = torch.relu(_conv(a, col0.conv4, col1.conv4, groups=2))
        a = col0.pool(torch.relu(_conv(a, col0.conv5, col1.conv5, groups=2)))
        a = torch.relu(_linear(torch.flatten(a, 1), col0.fc6, col1.fc6))  # every column's pool5
        a = _dropout_columns(col0.dropout, col1.dropout, a)               # Section 4.2
        features = torch.relu(_linear(a, col0.fc7, col1.fc7))             # every column's fc6
        return self.fc8(_dropout_columns(col0.dropout, col1.dropout, features)), features

    def conv1_weight(self) -> torch.Tensor:
        """The conv1 kernels (96 x 3 x 11 x 11 at width 1): column 1's, then column 2's (Figure
        3's top and bottom halves), on devices[0]."""
        w = [c.conv1.weight.detach() for c in self.columns]
        return torch.cat([v.to(w[0].device) for v in w], 0)


def _exchange(f0, f1, a0, a1, d0, d1):
    """Apply column 0's ``f0`` and column 1's ``f1`` each to both columns' activations."""
    b0 = f0(torch.cat([a0, a1.to(d0, non_blocking=True)], 1))
    b1 = f1(torch.cat([a0.to(d1, non_blocking=True), a1], 1))
    return b0, b1


def _check_conv(conv, devices):
    """ValueError unless ``conv`` is one of CONVS and "grouped" has one device to run on."""
    if conv not in CONVS:
        raise ValueError(f"conv={conv!r} is not one of {', '.join(CONVS)}")
    if conv == "grouped" and len(set(devices)) > 1:
        raise ValueError(f"conv='grouped' needs both columns on one device; they are on "
                         f"{', '.join(map(str, devices))}: use conv='split' for two devices")


def _conv(x, m0, m1, groups=1):
    """One F.conv2d for both columns' layer: m0's kernels, then m1's (Section 3.5). groups=1:
    each reads all of x; groups=2: each reads its own column's half of x's channels. torch.cat
    of the parameters sends each column's gradient back to its own weights."""
    weight = torch.cat([m0.weight, m1.weight])
    bias = torch.cat([m0.bias, m1.bias])
    return F.conv2d(x, weight, bias, m0.stride, m0.padding, m0.dilation, groups)


def _linear(x, m0, m1):
    """One F.linear for both columns' fully-connected layer over the one joined input x."""
    return F.linear(x, torch.cat([m0.weight, m1.weight]), torch.cat([m0.bias, m1.bias]))


def _alike(m0, m1) -> bool:
    """The two columns' modules compute the same thing (they do unless one was changed)."""
    return type(m0) is type(m1) and m0.extra_repr() == m1.extra_repr()


def _lrn_columns(lrn0, lrn1, x):
    """Section 3.3's LRN within each column of the joined (N, 2C, H, W) maps x: a channel's
    window of 5 must not reach across from column 0's C channels into column 1's. Where the
    halves can be viewed as separate rows of C channels (NCHW: 2N images; channels-last: 2NHW
    pixels), one call covers both; otherwise each column's half on its own."""
    if isinstance(lrn0, nn.Identity) and isinstance(lrn1, nn.Identity):   # lrn=False
        return x
    n, c, h, w = x.shape
    if _alike(lrn0, lrn1) and x.is_contiguous():
        return lrn0(x.view(2 * n, c // 2, h, w)).reshape(n, c, h, w)
    if _alike(lrn0, lrn1) and x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w * 2, c // 2, 1)   # a view of NHWC memory
        return lrn0(rows).reshape(n, h, w, c).permute(0, 3, 1, 2)
    x0, x1 = x.chunk(2, 1)
    return torch.cat([lrn0(x0), lrn1(x1)], 1)


def _dropout_columns(d0, d1, x):
    """Each column's dropout on its half of the joined units x; one call when they agree."""
    if _alike(d0, d1):
        return d0(x)
    x0, x1 = x.chunk(2, 1)
    return torch.cat([d0(x0), d1(x1)], 1)


def _placement(devices):
    if devices is None:
        return torch.device("cpu"), torch.device("cpu")
    if isinstance(devices, (str, torch.device, int)):
        devices = (devices,)
    devices = tuple(torch.device(d) for d in devices)
    if len(devices) == 1:
        return devices[0], devices[0]
    if len(devices) == 2:
        return devices
    raise ValueError(f"devices must be None, one device or two, got {len(devices)}: {devices}")


def _init_weights(model: AlexNet, init: str):
    """Section 5 ("paper"), its Caffe replication ("caffe") or Kaiming-normal ("kaiming").

    Why "caffe" is the default at full size (measured, docs/PERFORMANCE.md): with the paper's
    biases of 1, every fc7 unit starts positive and large, so fc8's input has a big common mode
    (4096 units of about 1); fc8's gradient is that input times the softmax error, and at step 0
    its relative size was 11.5 (0.06-0.5 elsewhere). With lr 0.01 the logits jump to a std of ~26
    within five steps, and the correction drives the fc7 units negative: the share of positive
    fc7 activations fell from 0.65 to 0.003 by step 20, and the loss sat at ln C. Biases of 0.1
    and smaller fc6/fc7 weights, as in Caffe's bvlc_alexnet ("initialization to 1 gave flat
    loss"), keep fc8's input small. Those figures were taken with nn.Dropout; Section 4.2's
    dropout (no 2x in training) halves fc8's input, and with it the literal init learned on the
    demo data too, but left 9.4 % of fc7 dead against 1.5 % for "caffe" (one seed each).
    """
    paper_ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}      # the paper's biases of 1
    layers = [(name, layer) for column in model.columns for name, layer in column.named_children()
              if isinstance(layer, (nn.Conv2d, nn.Linear))] + [("fc8", model.fc8)]
    with torch.no_grad():
        for name, layer in layers:
            if init == "paper":
                layer.weight.normal_(0.0, 0.01)
                layer.bias.fill_(1.0 if name in paper_ones else 0.0)
            elif init == "caffe":
                layer.weight.normal_(0.0, 0.005 if name in ("fc6", "fc7") else 0.01)
                layer.bias.fill_(0.1 if name in paper_ones else 0.0)
            else:
                # Kaiming's derivation (fan-in, so every layer's forward signal keeps unit scale)
                # needs unit-variance input: the loaders give "channel" normalisation for this init.
                gain = "linear" if name == "fc8" else "relu"        # no ReLU after fc8
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity=gain)
                layer.bias.zero_()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those requiring grad if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
