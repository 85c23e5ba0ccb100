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


def _checkpoint(run, seed, **kw):
    from train.checkpoint import save_checkpoint
    from train.model import AlexNet

    torch.manual_seed(seed)
    model = AlexNet(8, width=0.125, **kw)
    run.mkdir()
    return model.eval(), save_checkpoint(str(run), {"model": model.state_dict(), "model_config": model.config,
                                                     "step": seed, "classes": [f"n{i:08d}" for i in range(8)]})


@pytest.mark.parametrize("ten_crop", [False, True])
def test_an_ensemble_averages_the_softmax_of_its_networks(shards, tmp_path, ten_crop):
    """Section 6: the predictions of several CNNs averaged. Two networks that read their input
    differently (one 'image', one 'channel'), against a direct loop over numpy."""
    import numpy as np

    from pipeline import build_loader
    from shards import Manifest
    from train.evaluate import evaluate_checkpoints

    wnids = [c.wnid for c in Manifest.load(shards).classes]
    nets = [_checkpoint(tmp_path / "a", 1, init="caffe"), _checkpoint(tmp_path / "b", 2, init="kaiming")]
    for _, path in nets:  # the classes these shards hold
        state = torch.load(path, weights_only=False)
        state["classes"] = wnids
        torch.save(state, path)
    r = evaluate_checkpoints(shards, [p for _, p in nets], ten_crop=ten_crop)
    probs, labels = [], None
    with torch.no_grad():
        for model, _ in nets:
            p_model, ys = [], []
            for x, y in build_loader(shards, "val", 5, device="cpu", ten_crop=ten_crop, mean=model.config["input_norm"]):
                views = x.unbind(1) if ten_crop else [x]
                p_model.append(np.mean([model(v).softmax(1).numpy() for v in views], axis=0))
                ys.append(y.numpy())
            probs.append(np.concatenate(p_model))
            labels = np.concatenate(ys)
    mean = np.mean(probs, axis=0)
    top5 = np.argsort(-mean, axis=1)[:, :5]
    assert r["samples"] == len(labels) == 12 and r["checkpoints"] == 2 and r["step"] == [1, 2]
    assert r["top1_error"] == pytest.approx(np.mean(mean.argmax(1) != labels))
    assert r["top5_error"] == pytest.approx(np.mean(~(top5 == labels[:, None]).any(1)))
    assert r["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(12), labels])), rel=1e-5)
    single = [evaluate_checkpoints(shards, [p], ten_crop=ten_crop)["loss"] for _, p in nets]
    assert all(abs(r["loss"] - s) > 1e-4 for s in single)  # not one network's result


def test_an_ensemble_refuses_a_checkpoint_of_other_classes(shards, tmp_path):
    from shards import Manifest
    from train.evaluate import evaluate_checkpoints

    paths = [_checkpoint(tmp_path / name, seed)[1] for name, seed in (("ours", 1), ("theirs", 2))]
    for path, last in zip(paths, ("", "n99999999")):
        state = torch.load(path, weights_only=False)
        state["classes"] = [c.wnid for c in Manifest.load(shards).classes]
        state["classes"][-1] = last or state["classes"][-1]
        torch.save(state, path)
    with pytest.raises(ValueError, match="theirs/checkpoint-00000002.pt was trained on other classes"):
        evaluate_checkpoints(shards, paths)
