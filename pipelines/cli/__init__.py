"""The `appsim` command line: the edge where config is read and errors become messages.

One module per command group (``COMMANDS``); options every group shares, config loading and
printing in ``options``; the one error style in ``errors``. A command module only parses
arguments and prints: the work is in the modules it calls (steps, models, evaluation, the
pipelines modules beside this package, and serving for ``serve``). Command modules import
only click at load time and everything heavy inside their commands, and are themselves
imported the first time their group is used, so `appsim --help` starts fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from pipelines.cli.errors import describe, translated

# name -> "module:attribute"; every module in this package that defines a command is listed here.
COMMANDS = {
    "ab": "pipelines.cli.ab:ab_group",
    "drift": "pipelines.cli.drift:drift_group",
    "feedback": "pipelines.cli.feedback:feedback_group",
    "monitoring": "pipelines.cli.monitoring:monitoring_group",
    "neighbors": "pipelines.cli.neighbors:neighbors_group",
    "pipeline": "pipelines.cli.pipeline:pipeline_group",
    "registry": "pipelines.cli.registry:registry_group",
    "retrain": "pipelines.cli.retrain:retrain_command",
    "runs": "pipelines.cli.runs:runs_group",
    "schedule": "pipelines.cli.schedule:schedule_group",
    "serve": "pipelines.cli.serve:serve_command",
    "simulate": "pipelines.cli.simulate:simulate_command",
    "store": "pipelines.cli.store:store_group",
}


class LazyGroup(click.Group):
    """A group whose ``COMMANDS`` are imported the first time they are looked up, and whose commands'
    errors are turned into `appsim`'s one-line style (``errors.translated``) wherever it is invoked
    from (the console script, ``CliRunner``, a notebook)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Exception as error:
            if isinstance(error, click.ClickException):
                raise
            clean = translated(error)
            if clean is None:
                raise
            raise clean from error

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attribute = COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("appsim")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: pip install .)"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"appsim {_version()}")
        ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the installed appsim version and exit.")
def cli() -> None:
    """appsim: app similarity and performance prediction that keeps improving.

    Start with `appsim simulate --store S`, then `appsim retrain --store S`; every command takes
    --store (default $APPSIM_STORE, else ./appsim-store) and -h for its help.
    """


def main(argv: list[str] | None = None) -> None:
    """The console script: runs `appsim` and turns every error the user can act on into one line."""
    try:
        cli.main(args=argv, prog_name="appsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:
        described = describe(error)
        if described is None:
            raise
        message, code = described
        click.echo(f"error: {message}", err=True)
        sys.exit(code)
