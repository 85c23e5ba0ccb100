"""Timing that does not stall the device (docs/DESIGN.md, "Profile"): CUDA events on a GPU, read
after one synchronisation, and perf_counter on the CPU, where every step is synchronous."""
import time

from pipeline.stages import Clock  # noqa: F401 (the one clock: the loader timer's and the trainer's)


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
