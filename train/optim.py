"""Section 5's update rule, with the learning rate inside the velocity.

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

``torch.optim.SGD`` keeps ``v <- momentum * v + grad + weight_decay * w`` and steps
``w <- w - lr * v``: the same while the rate is constant, but after a rate drop it scales the
whole accumulated velocity by the new rate at once, where the paper's velocity carries the old
rate's steps and decays them away over ~1/(1-momentum) steps.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["PaperSGD", "param_groups"]


class PaperSGD(Optimizer):
    """SGD with momentum and weight decay as the paper writes it (Section 5).

    Args:
        params: parameters or parameter groups; see :func:`param_groups` for the paper's
            split (weights decayed, biases not).
        lr: epsilon, the learning rate (the paper starts at 0.01 and divides by 10 on plateaus).
        momentum: 0.9 in the paper.
        weight_decay: 0.0005 in the paper, for the weights. The paper's formula writes it for
            "weight w" generally; the cuda-convnet layer files the paper points to for the
            details set a weight cost on weights only, with none on biases, so
            :func:`param_groups` gives biases ``weight_decay=0``. A group without its own
            ``weight_decay`` gets this value (parameters passed as one list all decay).
        foreach: use the multi-tensor ``torch._foreach_*`` kernels (default: yes).

    The velocity ``v`` starts at zero and is kept as ``state[p]["momentum_buffer"]``, so
    ``state_dict()``/``load_state_dict()`` resume the update exactly.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, foreach: bool | None = None):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"PaperSGD {name} must be >= 0, got {value}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, velocities = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PaperSGD does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                velocities.append(state["momentum_buffer"])
            update = _update_single if group["foreach"] is False else _update_foreach
            update(params, grads, velocities, group["lr"], group["momentum"], group["weight_decay"])
        return loss


def _update_single(params, grads, velocities, lr, momentum, weight_decay):
    for w, g, v in zip(params, grads, velocities):
        v.mul_(momentum)
        if weight_decay:
            v.add_(w, alpha=-weight_decay * lr)
        v.add_(g, alpha=-lr)
        w.add_(v)


def _update_foreach(params, grads, velocities, lr, momentum, weight_decay):
    # _foreach ops want each list on one device and dtype (the columns may be on two GPUs).
    groups = defaultdict(lambda: ([], [], []))
    for w, g, v in zip(params, grads, velocities):
        ws, gs, vs = groups[(w.device, w.dtype)]
        ws.append(w)
        gs.append(g)
        vs.append(v)
    for ws, gs, vs in groups.values():
        torch._foreach_mul_(vs, momentum)
        if weight_decay:
            torch._foreach_add_(vs, ws, alpha=-weight_decay * lr)
        torch._foreach_add_(vs, gs, alpha=-lr)
        torch._foreach_add_(ws, vs)


def param_groups(model: nn.Module, weight_decay: float = 5e-4) -> list[dict]:
    """[weights with ``weight_decay``, biases with 0]: the paper's decay applied as cuda-convnet
    did (a weight cost on weights only). Parameters that do not require grad are left out."""
    decayed, not_decayed = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_decayed if name.endswith("bias") or p.ndim <= 1 else decayed).append(p)
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": not_decayed, "weight_decay": 0.0}]
