"""The `appsim` command line: the edge where config is read and errors become messages.

Command groups live beside the code they drive and are attached here; `serve` imports
serving lazily (the CLI is the one edge allowed to, so the pipeline never needs FastAPI).
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from models import layout
from models.registry import RegistryError, VersionNotFound
from models.sqlite_file import SQLiteFileError
from models.storage import StorageError
from pipelines.config import ConfigError, PipelineConfig, load_config
from pipelines.runs import RunNotFound, list_runs, load_run

# Every error the user can act on is printed as one line naming the cause and the fix, never a
# traceback: a wrong command line exits 2 (as click's usage errors do), a store, registry or
# artifact that cannot be used exits 1.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, layout.StoreNotAFolder, VersionNotFound, RunNotFound)
FAILURES: tuple[type[BaseException], ...] = (SQLiteFileError, RegistryError, StorageError, OSError)
# Failures defined in modules too heavy to import for every command (the artifact module pulls in
# FAISS and pandas: seconds of start-up for `registry list`); a module never imported raised nothing.
LAZY_FAILURES = {"models.artifact": "ArtifactError", "models.experiments": "ExperimentError"}


def _failures() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in LAZY_FAILURES.items() if module in sys.modules]
    return FAILURES + tuple(loaded)

store_option = click.option(
    "--store", envvar="APPSIM_STORE", default=None,
    help="Store folder or URI (file:// or s3://). Default: $APPSIM_STORE, else backends.store in pipeline.yaml (./appsim-store).",
)
config_option = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                             help="pipeline.yaml to use (default: the repository's).")


class LazyGroup(click.Group):
    """A group whose ``LAZY_COMMANDS`` are imported the first time they are looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """appsim: app similarity and performance prediction that keeps improving."""


def _config(config_path: str | None, store: str | None, params: tuple[str, ...] = (),
            writing: bool = False) -> PipelineConfig:
    """The validated config, its store checked (a folder; writable when the command writes)."""
    config = load_config(config_path, store)
    config = config.with_overrides(list(params)) if params else config
    layout.check_store(config.store, writing)
    return config


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- retrain ------------------------------------------------------------------------------
@cli.command()
@store_option
@config_option
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Override a pipeline.yaml parameter (repeatable).")
@click.option("--on", "target", type=click.Choice(["local", "sagemaker"]), default="local", show_default=True,
              help="Run with the local runner, or upsert and start the SageMaker pipeline.")
@click.option("--wait/--no-wait", default=False, help="With --on sagemaker: poll and print step statuses until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (run_id, decision, version, metrics).")
def retrain(store: str | None, config_path: str | None, params: tuple[str, ...], target: str, wait: bool, as_json: bool) -> None:
    """Run the retraining pipeline: prepare -> train -> evaluate -> gate -> register."""
    config = _config(config_path, store, params, writing=True)
    if target == "sagemaker":
        from pipelines.aws import retrain_on_sagemaker

        result = retrain_on_sagemaker(config, dict(p.split("=", 1) for p in params), wait, click.echo)
        _dump(result) if as_json else click.echo(f"started {result.get('execution_arn', '')}")
        return
    from pipelines.runner import LocalRunner, StepFailed

    runner = LocalRunner(config, echo=lambda m: click.echo(m, err=True))
    try:
        record = runner.run()
    except StepFailed as error:
        click.echo(f"error: {error}", err=True)
        click.echo(f"details: appsim runs show {error.run_id} --store {config.store}", err=True)
        sys.exit(1)
    result = record.result
    metrics = result["metrics"]
    candidate, champion = metrics["candidate"], metrics["champion"]
    if as_json:
        _dump({
            "run_id": record.run_id,
            "decision": result["decision"],
            "version": result["version"],
            "status": result["status"],
            "metrics": {"candidate": candidate, "champion": champion, "baseline": metrics.get("baseline")},
            "comparison": result["comparison"],
            "evaluation_uri": result["evaluation_uri"],
        })
        return
    reference = f"champion v{result['champion_version']}" if champion else "popularity baseline"
    other = champion or metrics.get("baseline") or {}
    names = ["recall_at_10", "precision_at_10", "ndcg_at_10", "map_at_10", "coverage", "ctr_mae"]
    click.echo("")
    click.echo(_table(["metric", "candidate", reference], [[n, candidate.get(n), other.get(n)] for n in names]))
    click.echo("")
    click.echo(f"decision: {result['decision']}  ->  version {result['version']} registered as {result['status']}")
    click.echo(f"why: {result['decision_reason']}")
    click.echo(f"run: {record.run_id}   report: {result['evaluation_uri']}")
    click.echo(f"html report: {_html_report_uri(result['evaluation_uri'])}")


# --- registry -----------------------------------------------------------------------------
@cli.group()
def registry() -> None:
    """Model versions: list, show, approve, reject."""


def _registry(config_path: str | None, store: str | None, writing: bool = False):
    from models.registry_backends import open_registry

    return open_registry(_config(config_path, store, writing=writing).registry_uri, read_only=not writing)


def _version_row(v) -> dict[str, Any]:
    return v.model_dump(mode="json")


@registry.command("list")
@store_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def registry_list(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Every version, newest first; the champion is the newest Approved."""
    reg = _registry(config_path, store)
    versions = reg.list_versions()
    if as_json:
        _dump([_version_row(v) for v in versions])
        return
    if not versions:
        click.echo("no versions yet: run `appsim retrain`")
        return
    champion = reg.champion()
    rows = [[("*" if champion and v.version == champion.version else "") + str(v.version), v.status,
             v.created_at.strftime("%Y-%m-%d %H:%M:%S"), v.recall_at_10, v.metrics.get("relative_improvement"),
             v.lineage.get("run_id")] for v in versions]
    click.echo(_table(["version", "status", "created_at (UTC)", "recall@10", "rel. improvement", "run"], rows))
    click.echo("* champion (newest Approved)")


@registry.command("show")
@click.argument("version", type=int)
@store_option
@config_option
def registry_show(version: int, store: str | None, config_path: str | None) -> None:
    """One version with its metrics and lineage (JSON)."""
    _dump(_version_row(_registry(config_path, store).get(version)))


def _set_status(version: int, status: str, reason: str, store: str | None, config_path: str | None) -> None:
    updated = _registry(config_path, store, writing=True).set_status(version, status, reason)
    click.echo(f"version {updated.version} is now {updated.status}")


@registry.command("approve")
@click.argument("version", type=int)
@click.option("--reason", default="approved by hand", show_default=True)
@store_option
@config_option
def registry_approve(version: int, reason: str, store: str | None, config_path: str | None) -> None:
    """Approve a version (it becomes the champion if it is the newest Approved)."""
    _set_status(version, "Approved", reason, store, config_path)


@registry.command("reject")
@click.argument("version", type=int)
@click.option("--reason", default="rejected by hand", show_default=True)
@store_option
@config_option
def registry_reject(version: int, reason: str, store: str | None, config_path: str | None) -> None:
    """Reject a version (rejecting the champion rolls back to the previous Approved one)."""
    _set_status(version, "Rejected", reason, store, config_path)


# --- runs ---------------------------------------------------------------------------------
@cli.group()
def runs() -> None:
    """Recorded pipeline runs."""


@runs.command("list")
@store_option
@config_option
@click.option("--json", "as_json", is_flag=True)
def runs_list(store: str | None, config_path: str | None, as_json: bool) -> None:
    records = list_runs(_config(config_path, store).store)
    if as_json:
        _dump([r.to_dict() for r in records])
        return
    rows = [[r.run_id, r.status, r.started_at, r.result.get("decision"), r.result.get("version"),
             next((s.name for s in r.steps if s.status in ("failed", "abandoned")), "")] for r in records]
    click.echo(_table(["run", "status", "started (UTC)", "decision", "version", "stopped in"], rows) if rows else "no runs yet")


@runs.command("show")
@click.argument("run_id")
@store_option
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--open", "open_report", is_flag=True, help="Print the path of the run's report.html and open it in a browser.")
def runs_show(run_id: str, store: str | None, config_path: str | None, as_json: bool, open_report: bool) -> None:
    record = load_run(_config(config_path, store).store, run_id)
    if open_report:
        _open_report(record.result.get("evaluation_uri") if record.result else None, run_id)
        return
    if as_json:
        _dump(record.to_dict())
        return
    click.echo(f"run {record.run_id}: {record.status} (started {record.started_at}, ended {record.ended_at})")
    rows = [[s.name, s.status, s.duration_seconds, s.error or ""] for s in record.steps]
    click.echo(_table(["step", "status", "seconds", "error"], rows))
    if record.result:
        click.echo(f"decision: {record.result['decision']} -> version {record.result['version']}: {record.result['decision_reason']}")
        click.echo(f"report: {record.result['evaluation_uri']}")
        click.echo(f"html report: {_html_report_uri(record.result['evaluation_uri'])} (open it: --open)")


def _html_report_uri(evaluation_uri: str) -> str:
    return evaluation_uri.rsplit("/", 1)[0] + "/" + layout.EVALUATION_PAGE


def _open_report(evaluation_uri: str | None, run_id: str) -> None:
    import webbrowser

    if not evaluation_uri:
        raise click.ClickException(f"run {run_id} has no evaluation (it failed or has not reached EvaluateCandidate)")
    uri = _html_report_uri(evaluation_uri)
    click.echo(uri)
    if uri.startswith("file://"):
        webbrowser.open(uri)  # a no-op without a browser (e.g. over ssh): the printed path is the answer


# --- command groups that live beside the code they drive ------------------------------------
# Imported only when used: cli_ab alone pulls in scipy.stats (a second of start-up for every command).
# ATTACH-COMMANDS: name -> "module:attribute"
LAZY_COMMANDS = {
    "ab": "pipelines.cli_ab:ab_group",
    "drift": "pipelines.cli_ab:drift_group",
    "monitoring": "pipelines.cli_ab:monitoring_group",
    "neighbors": "pipelines.cli_neighbors:neighbors_group",
    "pipeline": "pipelines.cli_aws:pipeline_group",
    "schedule": "pipelines.cli_aws:schedule_group",
    "feedback": "pipelines.cli_aws:feedback_group",
    "serve": "serving.cli:serve_command",
    "simulate": "pipelines.simulators.marketplace:simulate_command",
    "store": "pipelines.store:store_group",
}


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="appsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except USAGE_ERRORS as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except Exception as error:
        if not isinstance(error, _failures()):
            raise
        click.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(1)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.filename:
        # e.g. a store that became read-only or full mid-run: name the file and what to check
        return f"cannot use {error.filename}: {error.strerror}; check the store's permissions and free space"
    return " ".join(str(error).split())  # one line, whatever the message held


if __name__ == "__main__":
    main()
