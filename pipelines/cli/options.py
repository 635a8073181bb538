"""What every command group shares: the common options, loading the config, and printing.

Imports stay light (click and the standard library): every command module imports this, and
`appsim --help` imports every command module to list them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

F = TypeVar("F", bound=Callable[..., Any])

store_option = click.option(
    "--store", envvar="APPSIM_STORE", default=None, metavar="PATH|URI",
    help="Store folder or URI (file:// or s3://). Default: $APPSIM_STORE, else backends.store in pipeline.yaml "
         "(./appsim-store).",
)
config_option = click.option(
    "--config", "config_path", default=None, type=click.Path(dir_okay=False), metavar="FILE",
    help="pipeline.yaml to use. Default: $APPSIM_CONFIG, else the repository's file in a checkout, else the "
         "defaults shipped with appsim.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for scripts).")
params_option = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                             help="Override a pipeline.yaml parameter (repeatable), e.g. window_days=14.")


def store_and_config(command: F) -> F:
    """``--store`` and ``--config``, the options of every command that reads a store."""
    return store_option(config_option(command))


def load(config_path: str | None, store: str | None, params: tuple[str, ...] = (),
         writing: bool | None = None) -> PipelineConfig:
    """The validated config with ``--param`` overrides; with ``writing`` set, the store is checked
    up front (a folder; writable when the command writes)."""
    from models import layout
    from pipelines.config import load_config

    config = load_config(config_path, store)
    config = config.with_overrides(list(params)) if params else config
    if writing is not None:
        layout.check_store(config.store, writing)
    return config


def dump(data: Any) -> None:
    """The one JSON style of every ``--json``: indented, keys sorted."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def signed_percent(value: float | None) -> str:
    """A relative change as people read it (``+389.7%``): the one spelling of retrain, registry and reports."""
    return "-" if value is None or not math.isfinite(value) else f"{value:+.1%}"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)
