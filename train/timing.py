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
    the steps' time on the device: between marks around each step (CUDA events on a GPU, wall
    time on the CPU). `window()` reads them (one synchronisation on a GPU) and starts the next.
    """

    def __init__(self, device):
        self.clock = Clock(device)
        self._start()

    def _start(self):
        self.data_s, self.images, self.steps = 0.0, 0, 0
        self.clock.reset()
        self.wall = time.perf_counter()

    def begin(self, waited: float, images: int) -> None:
        """A step starts, after the host waited `waited` seconds for its `images`."""
        self.data_s += waited
        self.images += images
        self.steps += 1
        self.clock.mark()

    def end(self) -> None:
        """The step's work is queued."""
        self.clock.mark()

    def window(self) -> dict:
        """{"data_s", "compute_s", "elapsed_s", "images", "steps"} since the last window."""
        compute = sum(self.clock.intervals()[0::2])  # begin -> end of each step
        row = {"data_s": self.data_s, "compute_s": compute, "elapsed_s": time.perf_counter() - self.wall,
               "images": self.images, "steps": self.steps}
        self._start()
        return row
