"""train/profile.py and train/step.py's run options: the end-to-end figure over whole epochs,
checked against a loader whose epoch start-ups and steps take known times; the compile mode
and the conv form reach the model the profiler times."""
import json
import time

import pytest
import torch
from click.testing import CliRunner

from alexnet_cli import main as cli
from shardkit import make_shards
from train.config import TrainConfig
from train.profile import _time_epochs
from train.step import compiled, uses_cuda_graphs


class SlowStartLoader:
    """`batches` batches an epoch; the first batch of epoch e arrives after `starts[e]` seconds."""

    def __init__(self, batches, starts):
        self.batches, self.starts, self.epoch = batches, starts, 0

    def __len__(self):
        return self.batches

    def __iter__(self):
        e, self.epoch = self.epoch, self.epoch + 1
        for i in range(self.batches):
            if i == 0:
                time.sleep(self.starts[e])
            yield torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64)


STEP_S = 0.02  # sleep's overshoot on a loaded machine (~1–3 ms) stays small beside it


def step(images, labels):
    time.sleep(STEP_S)


@pytest.mark.parametrize("later_start", [0.0, 0.3])
def test_epochs_apart_and_the_data_wait_of_later_epochs(later_start):
    loader = SlowStartLoader(10, [0.3, later_start, later_start])  # epoch 1's start-up lies in the warm-up
    r = _time_epochs(step, loader, epochs=3, warmup=2, device="cpu")
    rows = r["epochs"]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["batches"] for row in rows] == [8, 10, 10]  # the warm-up batches of epoch 1 excluded
    assert r["batches"] == 28
    assert rows[0]["first_batch_wait_s"] == pytest.approx(0.3, abs=0.05)  # the first start-up, apart
    for row in rows[1:]:
        assert row["first_batch_wait_s"] == pytest.approx(later_start, abs=0.05)
    # the expected share from the injected times: two start-ups over two epochs of 10 steps
    want = 2 * later_start / (2 * later_start + 20 * STEP_S)
    assert r["data_wait_later"] == pytest.approx(want, abs=0.06)
    assert rows[0]["img_s"] == pytest.approx(4 / STEP_S, rel=0.3)  # its start-up is in the warm-up


def test_fewer_batches_than_the_warm_up_is_an_error_naming_the_options():
    with pytest.raises(ValueError, match="--warmup"):
        _time_epochs(step, SlowStartLoader(2, [0, 0]), epochs=2, warmup=5, device="cpu")


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: seen.append(mode) or net)
    net = torch.nn.Linear(2, 2)
    assert compiled(net, TrainConfig(shards="s")) is net and seen == []  # compile off: the net itself
    for mode, want in (("default", None), ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")):
        cfg = TrainConfig(shards="s", compile=True, compile_mode=mode)
        compiled(net, cfg)
        assert seen[-1] == want
        assert uses_cuda_graphs(cfg) == (mode != "default")  # max-autotune replays CUDA graphs too
    assert not uses_cuda_graphs(TrainConfig(shards="s", compile_mode="reduce-overhead"))  # not compiled


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    make_shards(d, n_train=24, n_val=4, classes=4, shard_size=12, seed=5)
    return str(d)


def test_profile_over_epochs_with_the_grouped_net(shards):
    r = CliRunner().invoke(cli, ["profile", shards, "--device", "cpu", "--width", "0.125", "--init", "kaiming",
                                 "--batch-size", "4", "--warmup", "1", "--epochs", "2", "--conv", "grouped",
                                 "--batches", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["conv"] == "grouped" and out["compile"] is None
    e2e = out["end_to_end"]
    assert [row["batches"] for row in e2e["epochs"]] == [5, 6]  # 24 samples / 4 a batch, one warm-up
    assert 0 <= e2e["data_wait_later"] <= 1
    table = CliRunner().invoke(cli, ["profile", shards, "--device", "cpu", "--width", "0.125", "--init", "kaiming",
                                     "--batch-size", "4", "--warmup", "1", "--epochs", "2", "--batches", "2"]).stdout
    assert "epoch 2: 6 batches" in table and "data wait over epochs 2+" in table


def test_profile_epochs_below_two_is_a_usage_error(shards):
    r = CliRunner().invoke(cli, ["profile", shards, "--device", "cpu", "--epochs", "1"])
    assert r.exit_code == 2 and "--epochs" in r.output


def test_profile_plot_gives_every_series_a_readable_scale():
    """issue 20: a reference loader spiking to 19,000 img/s against means near 1,000 flattened
    the other lines onto the x axis; now each series has its own panel, scaled to it."""
    import matplotlib.pyplot as plt

    from train.profile import profile_figure

    def series(mean, spikes=()):
        rates = [mean * (1 + 0.05 * ((i % 3) - 1)) for i in range(40)]
        for i in spikes:
            rates[i] = 19_000.0
        return {"img_s": mean, "per_batch_img_s": rates}

    result = {"pipeline": series(1_100), "model": series(700), "end_to_end": series(650),
              "peer": series(900, spikes=(3, 17)), "device": "cpu", "batch_size": 32, "width": 0.25,
              "warmup_batches": 3, "data_wait": 0.05, "fed_ratio": 650 / 700}
    fig = profile_figure(result)
    try:
        axes = fig.axes
        assert len(axes) == 4
        for ax, key in zip(axes, ("pipeline", "model", "end_to_end", "peer")):
            low, high = ax.get_ylim()
            mean = result[key]["img_s"]
            assert low == 0 and mean < high < 1.5 * mean, (key, high)  # the mean line sits in the panel's upper part
            assert f"{mean:,.0f} img/s" in ax.get_title()
        assert "fed / model alone = 0.93x" in fig._suptitle.get_text()
    finally:
        plt.close(fig)
