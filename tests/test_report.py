"""`alexnet report`: runs side by side, read back from their run directories (train/report.py)."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from alexnet_cli import main as cli
from trainkit import metric_rows, tiny_shards, train_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    shards = tiny_shards(root / "shards")
    a = train_run(shards, root / "lrn", epochs=2)
    b = train_run(shards, root / "no-lrn", epochs=2, lrn=False)
    c = train_run(shards, root / "short", epochs=1, max_steps=2)  # stopped before any validation
    return shards, [a.cfg.out, b.cfg.out, c.cfg.out]


def test_the_table_holds_each_runs_best_validation_and_the_paper_row(runs, tmp_path):
    shards, (a, b, c) = runs
    r = CliRunner().invoke(cli, ["eval", shards, f"{a}/best.pt", "--ten-crop", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    ten = json.loads(r.stdout.strip().splitlines()[-1])
    png = tmp_path / "report.png"
    r = CliRunner().invoke(cli, ["report", a, b, c, "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["differ"] == ["epochs", "lrn", "max_steps"]
    by_name = {row["name"]: row for row in rep["runs"]}
    for run in (a, b):
        val = [row for row in metric_rows(run) if "top1_error" in row]
        best = min(val, key=lambda row: row["top1_error"])
        got = by_name[run.rsplit("/", 1)[-1]]
        assert (got["top1"], got["top5"], got["epochs"]) == (best["top1_error"], best["top5_error"], 2)
        assert got["wall_s"] > 0 and got["img_s"] > 0
    assert (by_name["lrn"]["ten_crop_top1"], by_name["lrn"]["ten_crop_top5"]) == (ten["top1_error"], ten["top5_error"])
    assert "top1" not in by_name["short"] and by_name["short"]["epochs"] == 0
    assert rep["paper"]["ten_crop_top1"] == 0.407 and rep["paper"]["ten_crop_top5"] == 0.182  # Table 2, 1 CNN
    with Image.open(png) as im:
        assert im.size[0] > 600
    table = CliRunner().invoke(cli, ["report", a, b, c, "--plot", str(png)]).stdout
    short = next(line for line in table.splitlines() if line.startswith("| short |"))
    assert short.count("| – ") >= 4  # no validation yet: listed, not refused
    assert "| paper: 1 CNN (Table 2) |" in table and "40.7%" in table and "lrn False" in table


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path), "--plot", str(tmp_path / "r.png")])
    assert r.exit_code == 2 and "not a run directory" in r.output and len(r.output.strip().splitlines()) == 1
