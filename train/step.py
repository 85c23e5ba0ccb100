"""The one training step of Section 5, and the model and optimiser it runs, built from a
`TrainConfig` (docs/DESIGN.md, "Trainer"). The trainer runs it; `alexnet profile` times it."""
import contextlib

import torch
import torch.nn.functional as F

from train.config import TrainConfig
from train.model import AlexNet
from train.optim import PaperSGD, param_groups


def autocast_for(device, amp):
    """bf16 autocast on CUDA when `amp`, else nothing: the training step's, evaluation's and the
    benchmarks' one mixed-precision context."""
    if amp and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format_for(cfg: TrainConfig, device) -> torch.memory_format:
    """channels-last on CUDA when the run asks for it (cuDNN's fast layout), contiguous otherwise."""
    cuda = torch.device(device).type == "cuda"
    return torch.channels_last if (cuda and cfg.channels_last) else torch.contiguous_format


def build_model(cfg: TrainConfig, num_classes: int, devices=None, rank: int = 0) -> AlexNet:
    """The run's AlexNet: the same initial weights on every replica (seeded by cfg.seed), then the
    torch RNG reseeded per rank so that dropout masks differ between replicas."""
    torch.manual_seed(cfg.seed)
    model = AlexNet(num_classes, devices=devices, width=cfg.width, init=cfg.init, input_norm=cfg.input_norm,
                    columns=cfg.columns, lrn=cfg.lrn, pool=cfg.pool, conv=cfg.conv)
    torch.manual_seed(cfg.seed + 1000 * rank + 1)
    first = devices[0] if devices else "cpu"
    return model.to(memory_format=memory_format_for(cfg, first))


def compiled(net: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """`net` under torch.compile in the run's mode when cfg.compile, else `net` itself."""
    if not cfg.compile:
        return net
    return torch.compile(net, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)


def uses_cuda_graphs(cfg: TrainConfig) -> bool:
    """Whether `compiled` replays CUDA graphs (train_step then marks each step): both
    "reduce-overhead" and "max-autotune" turn on inductor's cudagraphs."""
    return cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune")


def input_dtype_for(cfg: TrainConfig, device) -> torch.dtype:
    """What the loader hands the step: bfloat16 with the uint8 hand-off under bf16 autocast on
    CUDA (written once by the hand-off's fused op: no second cast pass), float32 otherwise."""
    cuda = torch.device(device).type == "cuda"
    return torch.bfloat16 if (cfg.handoff == "uint8" and cfg.amp and cuda) else torch.float32


class StepStream:
    """The training step on a high-priority CUDA stream (cfg.step_stream): when the loader's
    DALI kernels and the step's kernels are both ready, the GPU schedules the step's first, so
    the loader fills the gaps instead of taking turns with the model (docs/PERFORMANCE.md).

    Use `with stream():` around a step: the step stream first waits for the current stream (on
    which the batch was handed over, DALI's DLPack hand-off and the uint8 hand-off's fused op),
    and the current stream waits for the step at the end, so later work on it (the next batch's
    hand-off, reading the losses) is ordered after the step. No host synchronisation.
    A no-op on the CPU or when off."""

    def __init__(self, device, enabled: bool):
        device = torch.device(device)
        self.stream = torch.cuda.Stream(device, priority=-1) if enabled and device.type == "cuda" else None

    @contextlib.contextmanager
    def __call__(self):
        if self.stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> PaperSGD:
    """Section 5's SGD: momentum, weight decay on the weights only, the run's initial rate."""
    return PaperSGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


def train_step(net, optimizer, images, labels, device, amp: bool, cuda_graphs: bool = False) -> torch.Tensor:
    """Forward (bf16 autocast on CUDA when `amp`), cross-entropy in float32, backward, update.
    Returns the loss as a device tensor: reading it would synchronise, so callers batch reads.
    `cuda_graphs` (a net compiled with CUDA graphs, `uses_cuda_graphs`) marks each call as a new step, so
    the replayed graphs may reuse their buffers: the loss is computed outside them and stays valid."""
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with autocast_for(device, amp):
        logits = net(images)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss
