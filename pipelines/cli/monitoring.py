"""`appsim monitoring`: the service's alarms and dashboards (pipelines/monitoring.py)."""

from __future__ import annotations

import json

import click

from pipelines.cli.options import config_option, dump, load


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{item}' must look like NAME=VALUE, e.g. service=appsim", param_hint="--dimension")
        pairs[name] = value
    return pairs


@click.group("monitoring")
def monitoring_group() -> None:
    """The service's alarms (error rate, p99 latency, zero traffic, sink backlog) and dashboards."""


@monitoring_group.command("apply")
@click.option("--region", default=None, help="AWS region (default: sagemaker.region in pipeline.yaml).")
@click.option("--namespace", default="appsim", show_default=True, help="CloudWatch namespace the metrics are published in.")
@click.option("--dimension", "dimensions", multiple=True, metavar="NAME=VALUE",
              help="Dimensions of the published metrics (repeatable; default service=appsim).")
@click.option("--alarm-topic", "topics", multiple=True, metavar="SNS_ARN", help="Notify this SNS topic (repeatable).")
@click.option("--prefix", default="appsim-", show_default=True, help="Alarm name prefix.")
@click.option("--dashboard-name", default="appsim-similarity-service", show_default=True,
              help="Name of the CloudWatch dashboard of the five panels.")
@click.option("--dry-run", is_flag=True, help="Print the put_metric_alarm requests and the dashboard (JSON) instead of sending them.")
@config_option
def monitoring_apply(region: str | None, namespace: str, dimensions: tuple[str, ...], topics: tuple[str, ...],
                     prefix: str, dashboard_name: str, dry_run: bool, config_path: str | None) -> None:
    """Create or update the CloudWatch alarms and the dashboard (idempotent; the `aws` extra)."""
    from pipelines.monitoring import apply_alarms, apply_dashboard, cloudwatch_alarms, cloudwatch_dashboard

    region = region or load(config_path, None).sagemaker.region
    dims = _pairs(dimensions) if dimensions else None
    requests = cloudwatch_alarms(namespace, dims, list(topics), prefix)
    dashboard = cloudwatch_dashboard(namespace, dims, region)
    if dry_run:
        dump({"alarms": requests, "dashboard": {"name": dashboard_name, "body": dashboard}})
        return
    import boto3

    client = boto3.client("cloudwatch", region_name=region)
    for name in apply_alarms(client, requests):
        click.echo(f"alarm {name} applied")
    click.echo(f"dashboard {apply_dashboard(client, dashboard, dashboard_name)} applied "
               f"({sum(w['type'] == 'metric' for w in dashboard['widgets'])} charts in 5 panels)")


@monitoring_group.command("grafana")
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="Write the JSON here instead of stdout.")
def monitoring_grafana(output: str | None) -> None:
    """Print the five-panel Grafana dashboard (JSON over serving's Prometheus series) to import."""
    from pipelines.monitoring import grafana_dashboard

    text = json.dumps(grafana_dashboard(), indent=2) + "\n"
    if output:
        with open(output, "w") as handle:
            handle.write(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@monitoring_group.command("rules")
def monitoring_rules() -> None:
    """Print the same alarms as a Prometheus alerting-rules file (YAML)."""
    import yaml

    from pipelines.monitoring import prometheus_rules

    click.echo(yaml.safe_dump(prometheus_rules(), sort_keys=False))
