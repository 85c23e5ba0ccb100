"""The errors every stage's commands raise, at the bottom of the tree so that no stage imports
the entry point (docs/DESIGN.md, "Layers").

Exit codes (docs/DESIGN.md, "Errors"): 2 for a usage mistake or bad input (`UserError`, and
click's own `UsageError`/`BadParameter`), 1 for damage found (`Damage`, or a plain
`click.ClickException`). Either is one line on stderr, never a traceback.
"""
import click


class UserError(click.ClickException):
    """A user mistake (missing folder, bad option value, bad input file): one line, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"alexnet: error: {self.format_message()}", err=True)


class Damage(UserError):
    """Damage found in data the user already has (a shard that fails its hash, a manifest that
    disagrees with its shards): one line, exit code 1."""

    exit_code = 1
