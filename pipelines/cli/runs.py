"""`appsim runs`: the recorded pipeline runs (pipelines/runs.py)."""

from __future__ import annotations

import click

from pipelines.cli.errors import UsageProblem
from pipelines.cli.options import dump, json_option, load, store_and_config, table
from pipelines.cli.retrain import html_report_uri


@click.group("runs")
def runs_group() -> None:
    """Recorded pipeline runs: each step's status, duration and error."""


@runs_group.command("list")
@store_and_config
@json_option
def runs_list(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Every recorded run, newest first; a run whose process died shows `abandoned`."""
    from pipelines.runs import list_runs

    records = list_runs(load(config_path, store).store)
    if as_json:
        dump([r.to_dict() for r in records])
        return
    rows = [[r.run_id, r.status, r.started_at, r.result.get("decision"), r.result.get("version"),
             next((s.name for s in r.steps if s.status in ("failed", "abandoned")), "")] for r in records]
    click.echo(table(["run", "status", "started (UTC)", "decision", "version", "stopped in"], rows) if rows else "no runs yet")


@runs_group.command("show")
@click.argument("run_id")
@store_and_config
@json_option
@click.option("--open", "open_report", is_flag=True, help="Print the path of the run's report.html and open it in a browser.")
def runs_show(run_id: str, store: str | None, config_path: str | None, as_json: bool, open_report: bool) -> None:
    """One run: its steps, the gate's decision and where its reports are."""
    from pipelines.runs import load_run

    record = load_run(load(config_path, store).store, run_id)
    if open_report:
        _open_report(record.result.get("evaluation_uri") if record.result else None, run_id)
        return
    if as_json:
        dump(record.to_dict())
        return
    click.echo(f"run {record.run_id}: {record.status} (started {record.started_at}, ended {record.ended_at})")
    rows = [[s.name, s.status, s.duration_seconds, s.error or ""] for s in record.steps]
    click.echo(table(["step", "status", "seconds", "error"], rows))
    if record.result:
        click.echo(f"decision: {record.result['decision']} -> version {record.result['version']}: {record.result['decision_reason']}")
        click.echo(f"report: {record.result['evaluation_uri']}")
        click.echo(f"html report: {html_report_uri(record.result['evaluation_uri'])} (open it: --open)")


def _open_report(evaluation_uri: str | None, run_id: str) -> None:
    import webbrowser

    if not evaluation_uri:
        raise UsageProblem(f"run {run_id} has no evaluation (it failed or has not reached EvaluateCandidate); "
                           f"`appsim runs show {run_id}` says where it stopped")
    uri = html_report_uri(evaluation_uri)
    click.echo(uri)
    if uri.startswith("file://"):
        webbrowser.open(uri)  # a no-op without a browser (e.g. over ssh): the printed path is the answer
