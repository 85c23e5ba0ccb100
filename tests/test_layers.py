"""The architecture of docs/DESIGN.md, "Layers", as the imports draw it: each stage imports only
the stages below it, and nothing imports the composition on top (`demo`, `alexnet_cli`)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# stage -> the project packages it may import
ALLOWED = {
    "shards": set(),
    "preprocess": {"shards"},
    "pipeline": {"shards"},
    "train": {"shards", "pipeline"},
    "demo": {"shards", "preprocess", "pipeline", "train"},
}
PROJECT = set(ALLOWED) | {"alexnet_cli"}


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_stage_imports_only_the_stages_below_it(stage):
    wrong = {}
    for path in sorted((ROOT / stage).rglob("*.py")):
        bad = {m for m in _imports(path) if m in PROJECT and m != stage and m not in ALLOWED[stage]}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"imports against docs/DESIGN.md's layers: {wrong}"


def test_the_entry_point_only_names_commands():
    """alexnet_cli lists its commands as strings and imports no stage at module level."""
    assert not {m for m in _imports(ROOT / "alexnet_cli.py")} & set(ALLOWED)


def test_every_package_is_installed():
    """setup.cfg's packages.find include list names every package (an editable install maps only
    those, and the lazy group would hide a command whose package is missing)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = set(cfg["options.packages.find"]["include"].split())
    for package in ALLOWED:
        assert {package, f"{package}.*"} <= include, package


def test_design_citations_name_sections_of_the_design():
    """Comments cite docs/DESIGN.md by section; each cited section exists (and nothing cites a
    design file outside the repository)."""
    import re

    sections = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "DESIGN.md").read_text(), re.M))
    cited = set()
    for package in [*ALLOWED, "scripts"]:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            cited |= set(re.findall(r'docs/DESIGN\.md,? *"([^"]+)"', text))
            assert "Contract " not in text, f"{path} cites the old design's contracts"
    assert cited and cited <= sections, cited - sections
