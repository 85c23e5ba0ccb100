"""kill -9 and SIGTERM of a training process mid-run, once its third checkpoint exists
(docs/FAULTS.md): resumed, the run ends with the weights of an uninterrupted one, its metrics
without a duplicated step."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trainkit import tiny_shards

ARGS = ["--width", "0.125", "--init", "kaiming", "--batch-size", "8", "--epochs", "12", "--device", "cpu",
        "--log-every", "1", "--checkpoint-every", "3", "--lr", "0.001"]


def _train(shards, run, *extra, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "alexnet_cli", "train", shards, "--out", str(run), "--threads", "1", *ARGS, *extra]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    return p


def _weights(run):
    state = torch.load(os.path.join(run, "last.pt"), weights_only=False)
    return state["model"], state["step"]


def _steps(run):
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "top1_error" not in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    shards = tiny_shards(root / "shards")
    _train(shards, root / "full")
    return shards, root / "full"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_training_resumes_to_the_same_weights(uninterrupted, tmp_path, sig):
    shards, full = uninterrupted
    run = tmp_path / "run"
    p = _train(shards, run, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once a few checkpoints exist, mid-run
        if len([f for f in os.listdir(run) if f.startswith("checkpoint-")]) >= 3 if run.exists() else False:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    p.wait(timeout=60)
    assert p.returncode != 0, "the run ended before it could be killed"
    killed_at = _weights(run)[1]
    assert 0 < killed_at < 48
    _train(shards, run, "--resume")
    a, steps_a = _weights(full)
    b, steps_b = _weights(run)
    assert steps_a == steps_b == 48
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after {sig.name} and resume")
    steps = [s for s, _ in _steps(run)]
    assert steps == list(range(1, 49)), "a step is missing or written twice"
    assert _steps(run) == _steps(full)
    assert not (run / ".lock").exists()
