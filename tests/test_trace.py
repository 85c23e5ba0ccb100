"""train/trace.py: the fed steps' kernels sorted into the model's and the loader's, per batch and
per image, and their overlap, checked on a hand-made Chrome trace with known intervals; and the
real profiler's trace on the CPU."""
import json

import pytest
import torch

from train.trace import STEP_RANGE, summarise, trace_steps


def kernel(name, ts, dur, corr):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def launch(ts, corr, tid=1):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 1, "tid": tid,
            "args": {"correlation": corr}}


def test_kernels_sorted_by_who_launched_them_and_their_overlap():
    events = [
        {"ph": "X", "cat": "user_annotation", "name": STEP_RANGE, "ts": 0, "dur": 50, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": STEP_RANGE, "ts": 100, "dur": 50, "tid": 1},
        launch(10, 1), launch(20, 2), launch(110, 3),        # inside the steps: the model's
        launch(60, 4), launch(30, 5, tid=7),                  # between steps, and on DALI's thread: the loader's
        kernel("conv", 100, 40, 1), kernel("gemm", 140, 20, 2), kernel("lrn", 300, 10, 3),
        kernel("dali::crop", 150, 30, 4), kernel("nvjpeg", 400, 6, 5),
    ]
    s = summarise(events, steps=2, images=8)
    assert s["model_gpu_ms"] == pytest.approx((40 + 20 + 10) / 1e3 / 2)
    assert s["loader_gpu_ms"] == pytest.approx((30 + 6) / 1e3 / 2)
    assert s["loader_gpu_us_per_image"] == pytest.approx(36 / 8)
    # model busy [100,160) ∪ [300,310); loader [150,180) ∪ [400,406): both at once [150,160)
    assert s["overlap_ms"] == pytest.approx(10 / 1e3 / 2)
    assert [k["name"] for k in s["loader_kernels"]] == ["dali::crop", "nvjpeg"]


def test_no_kernels_is_said_not_invented():
    s = summarise([], steps=3, images=12, cuda=False)
    assert "model_gpu_ms" not in s and s["steps"] == 3


def test_trace_of_cpu_steps_is_a_chrome_trace(tmp_path):
    net = torch.nn.Linear(4, 2)
    batches = [(torch.randn(3, 4), torch.tensor([0, 1, 0])) for _ in range(5)]
    seen = []

    def step(x, y):
        seen.append(len(x))
        torch.nn.functional.cross_entropy(net(x), y).backward()

    path = tmp_path / "t.json"
    s = trace_steps(step, batches, path, "cpu", skip=2)
    assert s["steps"] == 3 and s["images"] == 9 and len(seen) == 5 and s["path"] == str(path)
    names = {e.get("name") for e in json.loads(path.read_text())["traceEvents"]}
    assert STEP_RANGE in names and "aten::addmm" in names
