"""A real torch.compile of the two-column AlexNet on the CPU (inductor, default mode), trained for
a few steps by the trainer's own step: the losses and weights are eager's, to float tolerance.

The other compile tests (tests/test_profile.py) mock torch.compile; this one builds the graphs
(forward and backward, the LRN's custom autograd function and Section 4.2's dropout included),
so a model change that dynamo cannot trace or inductor compiles wrongly fails here.
"""
import copy
import logging

import pytest
import torch

from train.config import TrainConfig
from train.model import AlexNet
from train.optim import PaperSGD, param_groups
from train.step import compiled, train_step

STEPS = 3
# Found by this test (torch 2.13.0+cpu): inductor's CPU code gives wrong gradients for conv1-conv5
# of this net at width 0.125 from batch 4 on (batch 1-2 and width 0.25 are right; eval mode
# too, so not dropout; the same with F.local_response_norm in place of train.response_norm, so
# not this project's LRN; torch._inductor.config.max_fusion_size = 1 avoids it: a fusion bug).
# Strict: when a torch upgrade fixes it, this case passes and the mark must go.
MISCOMPILED = pytest.mark.xfail(strict=True, reason="torch 2.13 inductor (CPU) miscompiles the backward at "
                                                    "width 0.125, batch >= 4")


def run(net, model, batches):
    """STEPS training steps of `net` (whose parameters are `model`'s); the losses."""
    opt = PaperSGD(param_groups(model, 5e-4), lr=0.01)
    losses = []
    for step, (x, y) in enumerate(batches):
        torch.manual_seed(100 + step)  # the same dropout masks in both runs (fallback_random)
        losses.append(train_step(net, opt, x, y, torch.device("cpu"), amp=False).item())
    return losses


@pytest.fixture
def quiet_compiler():
    """Two threads, inductor drawing dropout's random numbers from eager's generator, and no
    DEBUG trace logs (pytest's log capture turns them on and makes compiling ~4x slower)."""
    threads = torch.get_num_threads()
    trace = logging.getLogger("torch.__trace")
    level = trace.level
    torch.set_num_threads(2)
    trace.setLevel(logging.WARNING)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()
    trace.setLevel(level)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [2, pytest.param(4, marks=MISCOMPILED)])
def test_compiled_model_trains_like_eager(quiet_compiler, batch):
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    eager = AlexNet(num_classes=10, width=0.125, init="kaiming").train()
    model = copy.deepcopy(eager)
    net = compiled(model, TrainConfig(shards="unused", compile=True))  # compile_mode "default"
    assert net is not model
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch, 3, 224, 224, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(STEPS)]
    want = run(eager, eager, batches)
    got = run(net, model, batches)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"], dict(counters)
    assert len(set(want)) == STEPS  # the losses move: the steps took effect
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (got, want)
    for (name, a), b in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=name)
