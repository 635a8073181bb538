"""The `appsim` command line: the edge where config is read and errors become messages.

Command groups live beside the code they drive and are attached here; `serve` imports
serving lazily (the CLI is the one edge allowed to, so the pipeline never needs FastAPI).
"""

from __future__ import annotations

import sys

import click

from models.artifact import ArtifactError
from models.registry import RegistryError
from models.storage import StorageError
from pipelines.config import ConfigError

# Errors the user can fix: printed as one line naming the problem, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, StorageError, ArtifactError, FileNotFoundError)

store_option = click.option(
    "--store", envvar="APPSIM_STORE", default=None,
    help="Store folder or URI (file:// or s3://). Default: $APPSIM_STORE, else backends.store in pipeline.yaml (./appsim-store).",
)
config_option = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                             help="pipeline.yaml to use (default: the repository's).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """appsim: app similarity and performance prediction that keeps improving."""


# --- command groups are attached below (one line each) -----------------------------------
# ATTACH-COMMANDS


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="appsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except USER_ERRORS as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
