"""A one-line progress bar on stderr: images done, img/s, ETA, errors.

On a terminal the line is redrawn in place (at most 5 times a second); in a log file (not a
tty) a full line is written every 30 seconds, so short runs print only their summary.
"""
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, label: str = "preprocess", stream=None, enabled: bool = True,
                 show_errors: bool = True):
        self.total, self.label, self.show_errors = total, label, show_errors
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self._last_draw = 0.0 if self.tty else self.start
        self._drawn = False

    def line(self, done: int, errors: int) -> str:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_text = _duration(eta) if eta == eta else "?"
        pct = 100.0 * done / self.total if self.total else 100.0
        text = f"{self.label}: {done:,}/{self.total:,} images ({pct:.0f}%)  {rate:,.0f} img/s  ETA {eta_text}"
        return text + (f"  errors {errors:,}" if self.show_errors else "")

    def update(self, done: int, errors: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= 0.2 or done == self.total:
                self.stream.write("\r" + self.line(done, errors) + "\033[K")
                self.stream.flush()
                self._last_draw, self._drawn = now, True
        elif now - self._last_draw >= 30:
            self.stream.write(self.line(done, errors) + "\n")
            self.stream.flush()
            self._last_draw = now

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
