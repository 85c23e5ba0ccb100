"""The README's "Use the loader in your own training loop" code runs as written (on the CPU,
on tiny shards, with a smaller batch)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_readme_loader_loop_runs(tmp_path):
    from trainkit import tiny_shards

    text = (ROOT / "README.md").read_text()
    section = text.split("## Use the loader in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    shards = tiny_shards(tmp_path / "shards")
    code = code.replace('"/data/shards", "cuda"', f'{shards!r}, "cpu"').replace("batch_size=128", "batch_size=8")
    assert shards in code and "batch_size=8" in code
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["epoch"] == 1 and scope["images"].shape[1:] == (3, 224, 224) and scope["labels"].dtype.is_signed
