"""PaperSGD against a direct loop over Section 5's update rule, across a learning-rate drop."""
import copy

import pytest
import torch
from torch import nn

from train.model import AlexNet
from train.optim import PaperSGD, param_groups

RATES = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]     # one drop by 10x after three steps
WEIGHT_DECAY = 5e-4


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def gradients(model, step):
    model.zero_grad()
    x, y = batch(step)
    nn.functional.cross_entropy(model(x), y).backward()


def run_direct_loop(model, rates):
    """v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v, weights decayed, biases not."""
    v = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    history = []
    for step, eps in enumerate(rates):
        gradients(model, step)
        with torch.no_grad():
            for name, w in model.named_parameters():
                wd = 0.0 if name.endswith("bias") else WEIGHT_DECAY
                v[name] = 0.9 * v[name] - wd * eps * w - eps * w.grad
                w += v[name]
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def run_optimizer(model, opt, rates, start=0):
    """Steps start, start+1, ... with the given rates; the parameters after each step."""
    history = []
    for step, eps in enumerate(rates, start=start):
        for group in opt.param_groups:
            group["lr"] = eps
        gradients(model, step)
        opt.step()
        history.append([p.detach().clone() for p in model.parameters()])
    return history


def same(a, b):
    return all(torch.allclose(x, y, rtol=1e-12, atol=1e-14) for x, y in zip(a, b))


@pytest.mark.parametrize("foreach", [None, True, False])
def test_matches_direct_loop_across_a_rate_drop(foreach):
    reference = run_direct_loop(small_model(), RATES)
    model = small_model()
    ours = run_optimizer(model, PaperSGD(param_groups(model, WEIGHT_DECAY), lr=RATES[0], foreach=foreach), RATES)
    assert all(same(a, b) for a, b in zip(ours, reference))


def test_torch_sgd_agrees_before_the_drop_and_differs_after():
    reference = run_direct_loop(small_model(), RATES)
    model = small_model()
    sgd = torch.optim.SGD(param_groups(model, WEIGHT_DECAY), lr=RATES[0], momentum=0.9)
    theirs = run_optimizer(model, sgd, RATES)
    assert all(same(a, b) for a, b in zip(theirs[:3], reference[:3]))       # constant rate
    assert not any(same(a, b) for a, b in zip(theirs[3:], reference[3:]))   # after the drop
    # The difference is not rounding: SGD shrinks the carried velocity 10x at once.
    gap = max((a - b).abs().max().item() for a, b in zip(theirs[3], reference[3]))
    assert gap > 1e-4


def test_first_step_and_velocity_state():
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = PaperSGD([w], lr=0.5, momentum=0.9, weight_decay=0.1)
    w.grad = torch.tensor([0.2, 0.4], dtype=torch.float64)
    opt.step()
    v1 = -0.1 * 0.5 * torch.tensor([1.0, -2.0]) - 0.5 * torch.tensor([0.2, 0.4])
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], v1.double())
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64) + v1.double())


def test_state_dict_round_trip_resumes_exactly():
    model = small_model()
    opt = PaperSGD(param_groups(model, WEIGHT_DECAY), lr=RATES[0])
    run_optimizer(model, opt, RATES[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    straight = run_optimizer(model, opt, RATES[3:], start=3)

    resumed_model = small_model()
    resumed_model.load_state_dict(saved_model)
    resumed_opt = PaperSGD(param_groups(resumed_model, WEIGHT_DECAY), lr=1.0)
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.param_groups[0]["lr"] == RATES[2]
    history = run_optimizer(resumed_model, resumed_opt, RATES[3:], start=3)
    assert all(torch.equal(x, y) for a, b in zip(history, straight) for x, y in zip(a, b))


def test_param_groups_decay_weights_not_biases():
    model = AlexNet(num_classes=10, width=0.125)
    decayed, not_decayed = param_groups(model, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and not_decayed["weight_decay"] == 0.0
    assert len(decayed["params"]) == 2 * 7 + 1 and all(p.ndim >= 2 for p in decayed["params"])
    assert len(not_decayed["params"]) == 2 * 7 + 1 and all(p.ndim == 1 for p in not_decayed["params"])
    opt = PaperSGD(param_groups(model, 5e-4))
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9


def test_mixed_dtypes_and_missing_grads():
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(2, dtype=torch.float64))
    c = nn.Parameter(torch.ones(4))                      # no gradient: left untouched
    opt = PaperSGD([a, b, c], lr=0.1, weight_decay=0.0)
    a.grad, b.grad = torch.ones(3), torch.ones(2, dtype=torch.float64)
    opt.step()
    opt.step()
    # v1 = -0.1, v2 = 0.9 * -0.1 - 0.1 = -0.19; w = 1 - 0.1 - 0.19 = 0.71
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.71))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.71, dtype=torch.float64))
    assert torch.equal(c.detach(), torch.ones(4)) and c not in opt.state


def test_rejects_negative_settings():
    with pytest.raises(ValueError, match="lr"):
        PaperSGD([nn.Parameter(torch.ones(1))], lr=-1.0)
