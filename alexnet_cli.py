"""The `alexnet` command: one click group over the four stages.

Each stage owns its commands in `<stage>/cli.py`. Those modules import nothing heavy at module
level (no torch, no DALI), so `alexnet --help` and `alexnet preprocess` start in a fraction of a
second; each command imports what it needs inside its body.
"""
import importlib
import sys

import click


# Errors: shards.errors.UserError (exit 2) and Damage (exit 1), one line each; click's own
# usage errors are made one line by LazyGroup.main.

# command name -> "module:function". Listed here so `alexnet --help` need not import anything.
COMMANDS = {
    "sample-data": "demo.cli:sample_data",
    "preprocess": "preprocess.cli:preprocess",
    "merge": "preprocess.cli:merge",
    "verify": "shards.cli:verify",
    "stats": "shards.cli:stats",
    "upload": "shards.cli:upload",
    "train": "train.cli:train",
    "eval": "train.cli:evaluate",
    "figures": "train.cli:figures",
    "profile": "train.cli:profile",
    "report": "train.cli:report",
    "demo": "demo.cli:demo",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx):
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                return None  # that stage is not installed
            raise

    def main(self, args=None, prog_name=None, **kwargs):
        """Like click's, but every user mistake is one line on stderr and exit code 2."""
        try:
            rv = super().main(args, prog_name or "alexnet", standalone_mode=False, **kwargs)
        except click.UsageError as e:  # bad option values, missing paths, unknown commands
            where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
            click.echo(f"{where}error: {e.format_message()} (see --help)", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def format_commands(self, ctx, formatter):
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=70)) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alexnet-imagenet")
def main():
    """ImageNet JPEG folders -> WebDataset shards -> DALI pipelines -> the 2012 AlexNet.

    \b
    Quick start:
      alexnet demo --out demo-out          # sample data -> shards -> train -> eval -> figures
      alexnet preprocess /data/ILSVRC2012 /data/shards --workers 32
      alexnet train /data/shards --out runs/alexnet
    """


if __name__ == "__main__":
    main()
