"""preprocess/progress.py: the one-line progress bar (tqdm on a terminal, a line every 30 s in a log)."""
import io
import re


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_a_tqdm_bar_with_images_rate_eta_and_errors():
    from preprocess.progress import Progress

    stream = Tty()
    bar = Progress(200, stream=stream)
    bar.update(50, 2)
    bar.update(200, 3)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rpreprocess:") and text.endswith("\n") and "\n" not in text[:-1]  # redrawn in place
    last = text.rstrip("\n").split("\r")[-1]
    assert re.fullmatch(r"preprocess: 100%\|[^|]+\| 200/200 \[\d\d:\d\d<\d\d:\d\d, +[\d.?]+img/s, errors=3\]", last), last
    quiet = Tty()
    bar = Progress(10, stream=quiet, enabled=False)
    bar.update(10, 0)
    bar.close()
    assert quiet.getvalue() == ""
    plain = Tty()
    bar = Progress(10, label="sample-data", stream=plain, show_errors=False)
    bar.update(10, 0)
    bar.close()
    assert "sample-data: 100%" in plain.getvalue() and "errors" not in plain.getvalue()


def test_in_a_log_one_plain_line_every_30_seconds(monkeypatch):
    import preprocess.progress as progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    log = io.StringIO()  # not a tty: no tqdm redraws, no carriage returns
    bar = progress.Progress(200, stream=log)
    for t, done in ((10, 20), (29.9, 60), (31, 100), (45, 120), (60, 150), (62, 160)):
        clock[0] = 1000.0 + t
        bar.update(done, 1)
    bar.close()
    assert log.getvalue() == ("preprocess:  50% 100/200 [00:31<00:31,  3.23img/s, errors=1]\n"
                              "preprocess:  80% 160/200 [01:02<00:15,  2.58img/s, errors=1]\n")
    quiet = io.StringIO()  # a short run prints nothing (the summary line says it all)
    bar = progress.Progress(10, stream=quiet)
    bar.update(10, 0)
    bar.close()
    assert quiet.getvalue() == ""
