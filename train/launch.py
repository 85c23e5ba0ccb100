"""Where this process runs: its place among the processes `torchrun` started (read from the
environment once, here) and the devices its model's two columns live on (docs/DESIGN.md,
"Trainer"). Every command that places a model (train, eval, figures, profile, the demo) resolves
its devices through `resolve_devices`.
"""
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Launch:
    """This process's rank among `world` replicas, and among the `local_world` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Launch":
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE (a single process without them)."""
        return cls(rank=int(env.get("RANK", 0)), world=int(env.get("WORLD_SIZE", 1)),
                   local_rank=int(env.get("LOCAL_RANK", 0)), local_world=int(env.get("LOCAL_WORLD_SIZE", 1)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def threads(self) -> int:
        """This process's share of the machine's cores, for its DALI worker threads."""
        from pipeline.plan import default_threads

        return default_threads(self.local_world)


def parse_devices(value: Optional[str]) -> Optional[Tuple[str, ...]]:
    """'cuda:0,cuda:1' -> ('cuda:0', 'cuda:1'); None or '' -> None. One or two devices."""
    if not value:
        return None
    devs = tuple(d.strip() for d in value.split(",") if d.strip())
    if len(devs) not in (1, 2):
        raise ValueError("--devices: give one or two devices, e.g. cuda:0,cuda:1")
    return devs


def resolve_devices(device: str = "auto", devices: Optional[Tuple[str, ...]] = None, launch: Launch = Launch()):
    """(the columns' devices, or None for the CPU; the torch.device of the input and the logits).

    `device` is auto | cpu | cuda; `devices` places the columns explicitly (one or two GPUs).
    With L processes on a machine of n GPUs, process r takes a pair of GPUs (2r, 2r+1; Section
    3.2) when n >= 2L, else one GPU when n >= L: the same choice on every rank. Raises ValueError
    with a one-line message naming the option when the request cannot be met.
    """
    import torch

    if device not in DEVICE_CHOICES:
        raise ValueError(f"--device {device}: choose one of {', '.join(DEVICE_CHOICES)}")
    kind = device
    if kind == "auto":
        kind = "cuda" if (devices or torch.cuda.is_available()) else "cpu"
    if kind == "cpu" and not devices:
        return None, torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda / --devices: no CUDA GPU is visible (use --device cpu)")
    n = torch.cuda.device_count()
    if devices:
        if launch.local_world > 1:
            raise ValueError("--devices names the GPUs of one process; under torchrun leave it out "
                             "(process r then uses GPUs 2r and 2r+1)")
        devices = tuple(str(torch.device(d)) for d in devices)
        bad = [d for d in devices if torch.device(d).type != "cuda" or (torch.device(d).index or 0) >= n]
        if bad:
            raise ValueError(f"--devices {','.join(devices)}: {', '.join(bad)} is not one of the {n} visible GPU(s)")
        return devices, torch.device(devices[0])
    r, L = launch.local_rank, launch.local_world
    if n >= 2 * L:
        devices = (f"cuda:{2 * r}", f"cuda:{2 * r + 1}")
    elif n >= L:
        devices = (f"cuda:{r}",)
    else:
        raise ValueError(f"{L} processes on this machine but only {n} GPU(s) visible")
    return devices, torch.device(devices[0])
