"""docs/FAULTS.md names, for each promise, the tests that check it: every one it names exists."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_test_the_faults_page_names_exists():
    text = (ROOT / "docs" / "FAULTS.md").read_text()
    current, named = None, []
    pattern = r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`|`(test_\w+\.py)::(\w+)`"
    for path, test, same_file, short, short_test in re.findall(pattern, text):
        if path:
            current = ROOT / path
            assert current.exists(), path
            if not test:
                continue
        elif short:
            found = sorted((ROOT / "tests").rglob(short))
            assert found, short
            current, test = found[0], short_test
        else:
            test = same_file
        named.append((current, test))
    assert len(named) > 30
    missing = [f"{p.relative_to(ROOT)}::{t}" for p, t in named if f"def {t}(" not in p.read_text()]
    assert not missing, missing
