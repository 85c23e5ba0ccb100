"""Timing that does not stall the device (docs/DESIGN.md, "Profile"): CUDA events on a GPU, read
after one synchronisation, and perf_counter on the CPU, where every step is synchronous."""
import time

import torch


class Clock:
    """Marks between batches. As in training, the host queues work ahead of the device, so on a
    GPU a mark is an event recorded on the current stream; `intervals()` gives the seconds
    between consecutive marks."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self):
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def reset(self):
        self.marks = []


class StepTimes:
    """Data time and compute time over a logging window of training steps.

    Data time is the host's wait for the next batch (the input pipeline is late); compute time is
    the steps' time on the device: between CUDA events around each step on a GPU, wall time on the
    CPU. `window()` reads them (one synchronisation on a GPU) and starts the next window.
    """

    def __init__(self, device):
        self.device = device
        self._start()

    def _start(self):
        self.data_s, self.images, self.steps = 0.0, 0, 0
        self.clocks = []
        self.wall = time.perf_counter()

    def waited(self, seconds, images):
        self.data_s += seconds
        self.images += images
        self.steps += 1

    def step_clock(self) -> Clock:
        """A clock to mark at the start and the end of one step."""
        clock = Clock(self.device)
        self.clocks.append(clock)
        return clock

    def window(self) -> dict:
        """{"data_s", "compute_s", "elapsed_s", "images", "steps"} since the last window."""
        compute = sum(sum(c.intervals()) for c in self.clocks)
        row = {"data_s": self.data_s, "compute_s": compute, "elapsed_s": time.perf_counter() - self.wall,
               "images": self.images, "steps": self.steps}
        self._start()
        return row
