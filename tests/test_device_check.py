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
    assert back == ["bench-model.json", "device-check.json", "device-check.log", "logs.tar.gz", "profile.png",
                    "stages.png"], back
    logs = tmp_path / "logs"
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert {"./bench-pipeline.log", "./profile-e2e.log", "./shards.log"} <= set(tar.getnames())
    steps = ["pytest-gpu", "bench-pipeline", "profile-stages", "profile-e2e", "bench-model"]
    for step in steps:
        assert f"== {step} (limit" in log, step
        assert (logs / f"{step}.log").read_text().rstrip().endswith("rc=0"), (logs / f"{step}.log").read_text()[-2000:]
    assert "skipped (budget spent)" not in log
    assert "shards built" in log
    bench = (logs / "bench-pipeline.log").read_text()
    for name in ("after", "fp16", "hw0", "prefetch4", "bare+source", "/ bare anchor:"):
        assert name in bench, name
    assert "the input is bound by:" in (logs / "profile-stages.log").read_text()
    assert "data wait over epochs 2+" in (logs / "profile-e2e.log").read_text()
    assert "conv=grouped eager" in (logs / "bench-model.log").read_text()
    assert (out / "stages.png").stat().st_size > 10_000 and (out / "profile.png").stat().st_size > 10_000
    summary = json.loads((out / "device-check.json").read_text())
    assert set(summary) >= {"gpu", "bench-pipeline", "profile-stages", "profile-e2e", "bench-model"}
    rows = {r["variant"]: r["img_per_s"] for r in summary["bench-model-rows"]}
    assert rows["conv=split eager"] > 0 and rows["conv=grouped eager"] > 0, rows
