"""A one-line progress bar on stderr: images done, img/s, ETA, errors, in tqdm's look (as the
trainer's bar).

On a terminal it is a tqdm bar redrawn in place (at most 5 times a second); in a log file (not a
tty) the same text without the bar is written as a full line every 30 seconds instead of tqdm's
redraws, so short runs print only their summary.
"""
import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 30  # seconds between lines when the output is not a terminal


class Progress:
    def __init__(self, total: int, label: str = "preprocess", stream=None, enabled: bool = True,
                 show_errors: bool = True):
        self.total, self.label, self.show_errors = total, label, show_errors
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = self._last_line = time.perf_counter()
        self._errors = None
        self._bar = None
        if self.enabled and self.tty:
            self._bar = tqdm(total=total, desc=label, unit="img", file=self.stream, mininterval=0.2,
                             dynamic_ncols=True)

    def _postfix(self, errors: int):
        return f"errors={errors:,}" if self.show_errors else None

    def line(self, done: int, errors: int) -> str:
        """The bar's text without the bar: label, percent, images done, elapsed<ETA, img/s, errors."""
        return tqdm.format_meter(done, self.total, time.perf_counter() - self.start, ncols=0,
                                 prefix=self.label, unit="img", postfix=self._postfix(errors))

    def update(self, done: int, errors: int) -> None:
        """`done` images so far (of `total`), `errors` of them failed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._bar is not None:
            if self.show_errors and errors != self._errors:
                self._errors = errors
                self._bar.set_postfix_str(self._postfix(errors), refresh=False)
            self._bar.update(done - self._bar.n)
        elif now - self._last_line >= LOG_EVERY_S:
            self.stream.write(self.line(done, errors) + "\n")
            self.stream.flush()
            self._last_line = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
