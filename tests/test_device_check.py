"""scripts/device-check.sh, rehearsed on the CPU at tiny sizes (SMOKE=1 DEVICE=cpu): a GPU is
lent for minutes, so the script must run right the first time. Every step must finish with
rc=0 and print what the GPU run is for."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable,
           "COMPILE": "--no-compile", "BUDGET": "400", "SHARDS_DIR": str(tmp_path / "shards")}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device-check.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=450)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (out / "device-check.log").read_text()
    steps = ["pytest-gpu", "bench-pipeline", "profile-stages", "profile-e2e", "bench-model"]
    for step in steps:
        assert f"== {step} (limit" in log, step
        assert (out / f"{step}.log").read_text().rstrip().endswith("rc=0"), (out / f"{step}.log").read_text()[-2000:]
    assert "skipped (budget spent)" not in log
    assert "shards built" in log
    bench = (out / "bench-pipeline.log").read_text()
    for name in ("after", "fp16", "hw0", "prefetch4", "bare+source", "/ bare anchor:"):
        assert name in bench, name
    assert "the input is bound by:" in (out / "profile-stages.log").read_text()
    assert "data wait over epochs 2+" in (out / "profile-e2e.log").read_text()
    assert "conv=grouped eager" in (out / "bench-model.log").read_text()
    assert (out / "stages.png").stat().st_size > 10_000 and (out / "profile.png").stat().st_size > 10_000
    summary = json.loads((out / "device-check.json").read_text())
    assert set(summary) >= {"gpu", "bench-pipeline", "profile-stages", "profile-e2e", "bench-model"}
