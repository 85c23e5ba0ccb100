"""preprocess/progress.py: the one-line progress bar."""
import io


def test_progress_line_and_tty_redraw():
    from preprocess.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress(200, stream=stream)
    bar.update(50, 2)
    bar.update(200, 3)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\rpreprocess: 50/200 images (25%)") and "img/s" in text and "ETA" in text
    assert "200/200 images (100%)" in text and "errors 3" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a tty: short runs print nothing (the summary line says it all)
    Progress(10, stream=quiet).update(10, 0)
    assert quiet.getvalue() == ""
