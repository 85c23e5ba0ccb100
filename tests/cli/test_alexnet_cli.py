"""The `alexnet` command as a user meets it: help with examples, light start-up, one-line errors."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from alexnet_cli import COMMANDS
from alexnet_cli import main as cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "alexnet_cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command_without_importing_torch():
    code = ("import sys, alexnet_cli\n"
            "try:\n    alexnet_cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nvidia', 'cv2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "HEAVY []" in out
    for name in COMMANDS:
        assert f"  {name} " in out, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name):
    r = CliRunner().invoke(cli, [name, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output and f"alexnet {name}" in r.output


@pytest.mark.parametrize("args, words", [
    (["verify", "/no/such/dir"], "/no/such/dir"),
    (["stats", "/no/such/dir"], "/no/such/dir"),
    (["train", "/no/such/dir"], "/no/such/dir"),
    (["eval", "/no/such/dir", "x.pt"], "/no/such/dir"),
    (["profile", "/no/such/dir"], "/no/such/dir"),
    (["preprocess", "/no/such/src", "/no/such/out"], "/no/such/src"),
    (["train", "x", "--batch-size", "0"], "--batch-size"),
    (["train", "x", "--init", "xavier"], "--init"),
    (["sample-data", "x", "--classes", "abc"], "--classes"),
])
def test_user_mistakes_are_one_line_and_exit_2(args, words):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_preprocess_of_a_missing_source_writes_nothing(tmp_path):
    r = run("preprocess", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert r.returncode == 2 and not (tmp_path / "out").exists()
