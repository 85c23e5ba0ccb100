"""Whether a run's network fits its device, decided before anything is allocated: `alexnet train
--width 1000` asked for a 614 GB tensor and died with a traceback; now it is one line, exit 2."""
import os

# bytes per parameter while training: fp32 weights, gradients, the momentum of Section 5's SGD
# and the update's temporaries (train.optim.PaperSGD), 4 bytes each
TRAIN_BYTES_PER_PARAMETER = 16


def device_memory(device) -> int:
    """Bytes of memory of `device`: a GPU's own, or for the CPU the machine's (or its cgroup's
    limit, when lower)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def check_fits(num_classes: int, width: float, columns: int, devices) -> None:
    """ValueError naming --width when training AlexNet at `width` needs more memory than any of
    its column devices (None: the CPU) has, counted from the layer sizes alone."""
    from train.model import parameter_count

    devices = list(devices) if devices else ["cpu"]
    n = parameter_count(num_classes, width, columns)
    need = TRAIN_BYTES_PER_PARAMETER * n / len(devices)  # two devices hold a column each
    have = min(device_memory(d) for d in devices)
    if need > have:
        where = " and ".join(str(d) for d in devices)
        raise ValueError(f"--width {width:g}: AlexNet has {n:,} parameters at this width, which need about "
                         f"{need / 1e9:,.0f} GB per device to train (weights, gradients, momentum), more than the "
                         f"{have / 1e9:,.0f} GB of {where}; choose a smaller --width")
