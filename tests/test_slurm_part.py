"""`alexnet preprocess --part auto`: i and N from a Slurm job array's environment."""
import json

import pytest

from preprocess.plan import Part
from samplekit import cli, one_line_error, part_runs, tars  # noqa: F401 (part_runs is a fixture)


def slurm(task, count, low=None, high=None, step=None):
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count)}
    for k, v in (("MIN", low), ("MAX", high), ("STEP", step)):
        if v is not None:
            env[f"SLURM_ARRAY_TASK_{k}"] = str(v)
    return env


@pytest.mark.parametrize("env, part", [
    (slurm(0, 4), Part(0, 4)),                              # --array=0-3, no MIN (older Slurm)
    (slurm(3, 4, 0, 3), Part(3, 4)),                        # --array=0-3
    (slurm(1, 8, 1, 8), Part(0, 8)),                        # --array=1-8
    (slurm(8, 8, 1, 8), Part(7, 8)),
    (slurm(14, 8, 0, 14, 2), Part(7, 8)),                   # --array=0-14:2
    (slurm(5, 3, 5, 7, 1), Part(0, 3)),
])
def test_part_from_a_job_array(env, part):
    assert Part.parse("auto", env) == part == Part.from_slurm(env)


@pytest.mark.parametrize("env, says", [
    ({}, "not a task of a Slurm job array"),
    ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_COUNT are not set"),
    (slurm("x", 4), "not integers"),
    (slurm(3, 3, 1, 8), "not a range"),                     # --array=1,3,8: not one step apart
    (slurm(4, 4, 0, 3), "not a range"),
    (slurm(3, 4, 0, 14, 2), "not a range"),                 # between the steps
])
def test_no_usable_job_array(env, says):
    with pytest.raises(ValueError, match=says):
        Part.parse("auto", env)


def test_preprocess_part_auto_is_the_part_of_its_task(part_runs, tmp_path, monkeypatch):
    for k, v in slurm(11, 3, 10, 12).items():  # task 11 of --array=10-12: part 1/3
        monkeypatch.setenv(k, v)
    out = tmp_path / "p1"
    result = cli("preprocess", part_runs / "src", out, "--shard-size", "4", "--part", "auto", "-q")
    assert result.exit_code == 0, result.output
    assert tars(out) == tars(part_runs / "p1")
    assert json.loads((out / "manifest.json").read_text())["params"]["part"] == "1/3"


def test_preprocess_part_auto_outside_an_array_is_one_line(part_runs, tmp_path, monkeypatch):
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(k, raising=False)
    line = one_line_error(cli("preprocess", part_runs / "src", tmp_path / "o", "--part", "auto"), 2, ["--part"])
    assert "not a task of a Slurm job array" in line
    assert not (tmp_path / "o").exists()
