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


def _commands_in(text):
    """(command, its options) for every `alexnet CMD ...` the text gives: each line of a code
    block and each inline code span, up to a comment or a pipe."""
    found = []
    spans = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    lines = [line for block in spans for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]*alexnet[^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for line in lines:
        line = line.split(" #")[0].split("|")[0]
        for m in re.finditer(r"(?:\balexnet|-m alexnet_cli) ([a-z][a-z-]+)((?:(?!\balexnet ).)*)", line):
            found.append((m.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2))))
    return found


def _sentences_in(text):
    """(the commands a prose sentence names in code, the options it names in code): one of those
    commands must take each option."""
    from alexnet_cli import COMMANDS

    paragraphs = re.sub(r"```.*?```", "\n\n", text, flags=re.S).split("\n\n")
    prose = [" ".join(line for line in p.splitlines() if not line.startswith(("|", "#"))) for p in paragraphs]
    found = []
    for sentence in (s for p in prose for s in re.split(r"(?<=[.:;])\s+(?=[A-Z(`*])", p)):
        spans = re.findall(r"`([^`]+)`", sentence)
        names = {m.group(1) for m in (re.fullmatch(r"(?:alexnet )?([a-z][a-z-]+)(?: [^`]*)?", s) for s in spans)
                 if m and m.group(1) in COMMANDS}
        options = [s for s in spans if re.fullmatch(r"--[a-z][a-z0-9-]*(?:[ =][^ ]+)?", s)]
        if names and options:
            found.append((sorted(names), [o.split()[0].split("=")[0] for o in options]))
    return found


def test_every_option_the_readme_gives_a_command_is_one_of_its_options():
    """The README once said that eval, figures and profile take --input-norm; none did. Each
    command line it gives, and each sentence naming commands and options, is checked against
    the commands' own options."""
    import click

    from alexnet_cli import main

    ctx = click.Context(main)
    text = (ROOT / "README.md").read_text()

    def options_of(name):
        command = main.get_command(ctx, name)
        return {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help"}

    wrong = [f"{', '.join(names)}: {o}" for names, options in _sentences_in(text) for o in options
             if not any(o in options_of(n) for n in names)]
    for name, options in _commands_in(text):
        if main.get_command(ctx, name) is None:
            wrong.append(f"alexnet {name}: no such command")
            continue
        wrong += [f"alexnet {name} {o}" for o in options if o not in options_of(name)]
    assert not wrong, wrong
