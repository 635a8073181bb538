"""`appsim retrain`: the pipeline, locally (pipelines/runner.py) or on SageMaker (pipelines/aws.py)."""

from __future__ import annotations

import click

from pipelines.cli.errors import CommandFailed
from pipelines.cli.options import dump, json_option, load, params_option, signed_percent, store_and_config, table

METRICS = ["recall_at_10", "precision_at_10", "ndcg_at_10", "map_at_10", "coverage", "ctr_mae"]


def html_report_uri(evaluation_uri: str) -> str:
    """The human report written beside ``evaluation.json`` (evaluation/report.py)."""
    from models.layout import EVALUATION_PAGE

    return evaluation_uri.rsplit("/", 1)[0] + "/" + EVALUATION_PAGE


@click.command("retrain")
@store_and_config
@params_option
@click.option("--on", "target", type=click.Choice(["local", "sagemaker"]), default="local", show_default=True,
              help="Run with the local runner, or upsert and start the SageMaker pipeline.")
@click.option("--wait/--no-wait", default=False, help="With --on sagemaker: poll and print step statuses until the run ends.")
@json_option
def retrain_command(store: str | None, config_path: str | None, params: tuple[str, ...], target: str, wait: bool,
                    as_json: bool) -> None:
    """Run the retraining pipeline: prepare -> train -> evaluate -> gate -> register."""
    config = load(config_path, store, params, writing=True)
    if target == "sagemaker":
        from pipelines.aws import retrain_on_sagemaker
        from pipelines.config import parse_override

        result = retrain_on_sagemaker(config, dict(parse_override(p) for p in params), wait,
                                      lambda m: click.echo(m, err=as_json))
        dump(result) if as_json else click.echo(f"started {result.get('execution_arn', '')}")
        return
    from pipelines.runner import LocalRunner, StepFailed

    runner = LocalRunner(config, echo=lambda m: click.echo(m, err=True))
    try:
        record = runner.run()
    except StepFailed as error:
        raise CommandFailed(f"{error}; details: appsim runs show {error.run_id} --store {config.store}") from None
    result = record.result
    metrics = result["metrics"]
    candidate, champion = metrics["candidate"], metrics["champion"]
    if as_json:
        dump({
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
    click.echo("")
    click.echo(table(["metric", "candidate", reference], [[n, candidate.get(n), other.get(n)] for n in METRICS]))
    click.echo("")
    improvement = (result.get("comparison") or {}).get("relative_improvement")
    click.echo(f"decision: {result['decision']} ({signed_percent(improvement)} recall@10)  ->  "
               f"version {result['version']} registered as {result['status']}")
    click.echo(f"why: {result['decision_reason']}")
    click.echo(f"run: {record.run_id}   report: {result['evaluation_uri']}")
    click.echo(f"html report: {html_report_uri(result['evaluation_uri'])}")
