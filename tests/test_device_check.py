"""scripts/device-check.sh, rehearsed on the CPU at tiny sizes (SMOKE=1 DEVICE=cpu): a GPU is
lent for minutes, so the script must run right the first time. Every step must finish with
rc=0 and print what the GPU run is for."""
import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable,
           "COMPILE": "--no-compile", "SHARDS_DIR": str(tmp_path / "shards"), "LOGS": str(tmp_path / "logs")}  # the default budget
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device-check.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=450)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "device-check.log").read_text()
    back = sorted(p.name for p in out.iterdir())  # the device returns at most 8 files
    assert back == ["bench-fed.json", "bench-pipeline.json", "device-check.log", "logs.tar.gz", "profile.json",
                    "stages.png", "traces.tar.gz"], back
    logs = tmp_path / "logs"
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"./bench-fed.log", "./bench-pipeline.log", "./profile-stages.log", "./shards.log"} <= set(tar.getnames())
    with tarfile.open(out / "traces.tar.gz") as tar:  # Chrome traces of today's loader and the combined remedy
        assert set(tar.getnames()) == {"base.json", "u8+cpu45+s.json"}
    for step in ["pytest-gpu", "bench-fed", "bench-pipeline", "profile-stages"]:
        assert f"== {step} (limit" in log, step
        assert (logs / f"{step}.log").read_text().rstrip().endswith("rc=0"), (logs / f"{step}.log").read_text()[-2000:]
    assert "skipped (budget spent)" not in log
    assert "shards built" in log
    fed = json.loads((out / "bench-fed.json").read_text())
    assert fed["complete"] and [r["variant"] for r in fed["variants"]] == ["base", "u8+cpu45+s"]
    for row in fed["variants"]:
        assert "error" not in row, row
        assert row["alone"] > 0 and row["fed"] > 0 and row["fed_ratio"] == row["fed"] / row["model"]
        assert row["trace"]["steps"] == 8
    profile = json.loads((out / "profile.json").read_text())
    assert list(profile["stages"]) == ["read", "decode", "crop", "mean_image", "lighting", "torch"]
    assert profile["fed_ratio"] == profile["end_to_end"]["img_s"] / profile["model"]["img_s"]
    assert "== one-truth: bench_pipeline training loader" in log  # the three figures, side by side
    assert (out / "stages.png").stat().st_size > 10_000
