"""Top-1/top-5 evaluation, centre crop and ten-crop (train/evaluate.py)."""
import pytest
import torch

from trainkit import tiny_shards

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("shards"))


def test_ten_crop_eval_equals_mean_of_softmax(shards):
    """eval --ten-crop averages the softmax over the ten patches (Section 4.1)."""
    from pipeline import build_loader
    from train.evaluate import evaluate
    from train.model import AlexNet

    torch.manual_seed(0)
    model = AlexNet(8, width=0.125, init="kaiming").eval()
    loader = build_loader(shards, "val", 6, device="cpu", ten_crop=True)
    r = evaluate(model, loader, "cpu")
    wrong1 = wrong5 = n = 0
    nll = 0.0
    with torch.no_grad():
        for x, y in loader:
            p = torch.stack([model(x[:, v]).softmax(1) for v in range(10)]).mean(0)
            wrong1 += (p.argmax(1) != y).sum().item()
            wrong5 += (~(p.topk(5, 1).indices == y[:, None]).any(1)).sum().item()
            nll -= p[torch.arange(len(y)), y].log().sum().item()
            n += len(y)
    assert r["samples"] == n == 12 and r["top1_error"] == pytest.approx(wrong1 / n)
    assert r["top5_error"] == pytest.approx(wrong5 / n)
    # the loss tells the softmax average apart from a logit average or the centre crop alone
    assert r["loss"] == pytest.approx(nll / n, rel=1e-5)
