"""Where a process runs: the one device resolver (train/launch.py)."""
import pytest
import torch

@pytest.mark.parametrize("gpus, local_world, rank, expected", [
    (8, 4, 3, ("cuda:6", "cuda:7")),  # a pair of GPUs per process (Section 3.2)
    (8, 8, 5, ("cuda:5",)),           # too few for pairs: one GPU each, the same on every rank
    (2, 1, 0, ("cuda:0", "cuda:1")),
    (1, 1, 0, ("cuda:0",)),
])
def test_device_layout_is_the_same_on_every_rank(monkeypatch, gpus, local_world, rank, expected):
    from train.launch import Launch, resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    devices, first = resolve_devices("cuda", None, Launch(local_rank=rank, local_world=local_world))
    assert devices == expected and first == torch.device(expected[0])


def test_device_layout_errors(monkeypatch):
    from train.launch import Launch, resolve_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="only 2 GPU"):
        resolve_devices("cuda", None, Launch(local_world=4))
    with pytest.raises(ValueError, match="torchrun"):
        resolve_devices("auto", ("cuda:0", "cuda:1"), Launch(local_world=2))
    with pytest.raises(ValueError, match="cuda:5"):
        resolve_devices("auto", ("cuda:0", "cuda:5"))
    with pytest.raises(ValueError, match="--device gpu"):
        resolve_devices("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_devices("auto") == (None, torch.device("cpu"))
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_devices("cuda")


def test_launch_reads_torchrun_environment_once():
    from train.launch import Launch

    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    launch = Launch.from_env(env)
    assert (launch.rank, launch.world, launch.local_rank, launch.local_world, launch.main) == (5, 8, 1, 4, False)
    assert Launch.from_env({}) == Launch() and Launch().main



def test_the_thread_share_is_the_affinity_set_split_among_local_processes(monkeypatch):
    import os

    from train.launch import Launch

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [Launch(local_world=n).threads() for n in (1, 2, 4, 16)] == [8, 4, 2, 1]
