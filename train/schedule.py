"""Learning-rate schedules of Section 5.

"The heuristic which we followed was to divide the learning rate by 10 when the validation error
rate stopped improving with the current learning rate. The learning rate was initialized at 0.01
and reduced three times prior to termination."
"""


class _Schedule:
    """What a checkpoint keeps of a schedule: its attributes, as a plain dict."""

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, d):
        vars(self).update(d)


class PlateauSchedule(_Schedule):
    """Divide the rate by 10 after `patience` validations without improvement, at most `drops` times.

    "Stopped improving" presumes it had started: validations count towards `patience` only once
    an error below `started_below` has been seen (the trainer passes 0.9 x the chance error).
    A run's first steps often sit at chance (the loss flat at ln C, docs/PERFORMANCE.md); on a
    small dataset an epoch is a few steps, and counting those epochs would cut the rate three
    times before learning began.
    """

    def __init__(self, lr, drops=3, patience=2, min_delta=1e-4, started_below=1.0):
        self.lr, self.drops, self.patience, self.min_delta = lr, drops, patience, min_delta
        self.started_below = started_below
        self.started = False
        self.best = float("inf")
        self.bad = 0
        self.dropped = 0

    def on_epoch(self, epoch):
        return self.lr

    def on_validation(self, error):
        self.started = self.started or error < self.started_below
        if not self.started:
            self.best = min(self.best, error)
        elif error < self.best - self.min_delta:
            self.best, self.bad = error, 0
        else:
            self.bad += 1
            if self.bad >= self.patience and self.dropped < self.drops:
                self.lr /= 10
                self.dropped += 1
                self.bad = 0
        return self.lr


class StepSchedule(_Schedule):
    """Divide the rate by 10 at fixed epochs (a reproducible stand-in for the manual heuristic)."""

    def __init__(self, lr, steps=(30, 60, 80)):
        self.base, self.steps = lr, tuple(steps)
        self.lr = lr

    def on_epoch(self, epoch):
        self.lr = self.base * 0.1 ** sum(epoch >= s for s in self.steps)
        return self.lr

    def on_validation(self, error):
        return self.lr


def make_schedule(name, lr, drops=3, patience=2, steps=(30, 60, 80), started_below=1.0):
    if name == "plateau":
        return PlateauSchedule(lr, drops=drops, patience=patience, started_below=started_below)
    if name == "step":
        return StepSchedule(lr, steps=steps)
    raise ValueError(f"--schedule must be 'plateau' or 'step', not {name!r}")
