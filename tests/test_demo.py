"""The README's main command, end to end: `alexnet demo` must learn well above chance on 2 CPU cores."""
import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_cli import main as cli


@pytest.mark.slow
def test_demo_end_to_end_learns(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--device", "cpu", "--epochs", "12"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "summary" in r.output and "validation top-1 error" in r.output

    # every stage left its output
    assert (out / "shards" / "manifest.json").exists()
    errors = [json.loads(line) for line in open(out / "shards" / "errors.jsonl") if line.strip()]
    assert any("truncated" in e.get("path", "") or "truncat" in e.get("reason", "").lower() for e in errors)
    for png in ("kernels", "predictions", "neighbours", "curves"):
        with Image.open(out / "figures" / f"{png}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 100
    assert (out / "profile.png").exists()

    # the proof that it learns: 10 classes, chance is 90 % top-1 error
    rows = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
    val = [row for row in rows if "top1_error" in row]
    assert len(val) == 12
    assert val[-1]["top1_error"] < 0.7, [round(v["top1_error"], 3) for v in val]
    assert val[-1]["top1_error"] < val[0]["top1_error"]

    # running it again reuses what is complete
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), "--device", "cpu", "--epochs", "12"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "already there, reused" in r.output and "already trained, reused" in r.output
    assert os.path.exists(out / "run" / "last.pt")
