"""`appsim ab`, `appsim drift` and `appsim monitoring`: closing the loop after the registry.

- ``ab start --challenger VERSION --weight 0.1``: a registered, not rejected version newer than
  the champion gets that share of traffic (serving reads the experiment and routes).
- ``ab status``: the active (else the latest) experiment and its ramp history.
- ``ab report [--apply]``: per-arm figures from the feedback, the posteriors, today's decision
  with its numbers, and a report (``report.html`` with the posterior plots, ``posteriors.png``,
  ``report.json``) under ``<store>/experiments/<id>/reports/<timestamp>/``. With ``--apply`` the
  decision is carried out: ramp, promote (the challenger is Approved in the registry and so
  becomes the champion), stop on a regression (the challenger is Rejected) or end. Run it daily
  by hand; the scheduled job is ``ab decide``.
- ``ab decide [--at TIME]``: the daily decision of the staged rollout (``pipelines/rollout.py``):
  starts an experiment for a new gate winner (``rollout.auto_start``), rolls back on a broken
  serving guardrail, carries out the A/B rules, archives long-replaced versions and publishes
  each change to SNS. Run it daily (cron / systemd timer; on AWS the EventBridge schedule of
  ``appsim schedule set-decision`` or ``infra/appsim.yaml``).
- ``ab promote`` / ``ab stop``: the same by hand.
- ``ab simulate --lift 0.08``: a simulated experiment walked day by day through the real
  router and rules (``pipelines/simulators/experiment.py``), to see what the rules would do.
- ``drift check``: JSON on stdout; exit code 0 = no drift, 3 = drift (``action`` says ``alert``
  or ``retrain``), 2 = usage error.
- ``monitoring apply`` / ``monitoring rules``: the alarms of ``pipelines/monitoring.py`` as
  CloudWatch alarms (boto3) or as a Prometheus rules file; ``apply`` also puts the five-panel
  CloudWatch dashboard, and ``monitoring grafana`` prints the same panels for Grafana.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
import numpy as np
import pandas as pd

from evaluation.ab import ABError, LiftComparison, posterior_draws
from evaluation.ab_decision import Decision
from evaluation.drift import MIN_COUNT, DriftError, WindowData, check_drift
from models import layout, storage
from models.events import parse_utc
from models.experiments import Experiment, ExperimentError, open_experiments, utcnow
from models.registry import RegistryError
from models.registry_backends import open_registry
from models.sqlite_file import SQLiteFileError
from pipelines.config import PipelineConfig, load_config
from pipelines.rollout import (
    DailyDecision, GuardrailMetricsError, analyse, apply_decision, decision_rules, json_numbers, read_events,
)

store_option = click.option("--store", envvar="APPSIM_STORE", default=None,
                            help="Store folder or URI. Default: $APPSIM_STORE, else backends.store in pipeline.yaml.")
config_option = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                             help="pipeline.yaml to use (default: the repository's).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


class UserError(click.ClickException):
    """A problem the user can fix: one line naming it, exit code 2 (as `appsim`'s other user errors)."""

    exit_code = 2


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except SQLiteFileError:
        raise  # a damaged or read-only database is not a usage error: `appsim`'s edge exits 1 with it
    except (ExperimentError, ABError, DriftError, RegistryError, GuardrailMetricsError) as error:
        raise UserError(str(error)) from None


def _time(text: str | None) -> datetime:
    return parse_utc(text) if text else utcnow()


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- ab -----------------------------------------------------------------------------------------
@click.group("ab")
def ab_group() -> None:
    """A/B experiments: a challenger version against the champion on live traffic."""


def _stores(config_path: str | None, store: str | None, writing: bool = True) -> tuple[PipelineConfig, Any, Any]:
    config = load_config(config_path, store)
    layout.check_store(config.store, writing)
    return (config, open_experiments(config.experiments_uri, read_only=not writing),
            open_registry(config.registry_uri, read_only=not writing))


def _current(experiments: Any, experiment_id: str | None, *, active: bool = True) -> Experiment:
    if experiment_id:
        return experiments.get(experiment_id)
    found = experiments.active() if active else next(iter(experiments.list()), None)
    if found is None:
        raise ExperimentError("no active experiment; start one with `appsim ab start --challenger VERSION --weight 0.1`")
    return found


@ab_group.command("start")
@click.option("--challenger", type=int, required=True, help="Registry version to test against the champion.")
@click.option("--weight", type=float, default=0.1, show_default=True, help="Challenger's share of traffic.")
@click.option("--days", type=int, default=None, help="End date: the experiment ends without a winner after this many days.")
@click.option("--id", "experiment_id", default=None, help="Experiment id (default: v<champion>_vs_v<challenger>_<time>).")
@click.option("--at", "at", default=None, help="Start time, ISO (default: now; for replays and simulations).")
@store_option
@config_option
def ab_start(challenger: int, weight: float, days: int | None, experiment_id: str | None, at: str | None,
             store: str | None, config_path: str | None) -> None:
    """Send --weight of traffic to --challenger (the seed starts at 0.1)."""
    with _user_errors():
        _, experiments, registry = _stores(config_path, store)
        champion = registry.champion()
        if champion is None:
            raise ExperimentError("no champion yet (no Approved version): run `appsim retrain` first")
        candidate = registry.get(challenger)
        if candidate.status == "Rejected":
            raise ExperimentError(f"version {challenger} is Rejected; re-open it with `appsim registry` or pick another")
        if challenger < champion.version:
            raise ExperimentError(f"version {challenger} is older than the champion v{champion.version}: promoting it "
                                  f"would not make it the champion; test a newer version")
        now = _time(at)
        experiment = Experiment.start(champion.version, challenger, weight, at=now, experiment_id=experiment_id,
                                      end_date=now + timedelta(days=days) if days else None,
                                      reason=f"started by hand at {weight:.0%}")
        saved = experiments.create(experiment)
    click.echo(f"experiment {saved.experiment_id}: champion v{saved.champion_version} {1 - weight:.0%} / "
               f"challenger v{saved.challenger_version} {weight:.0%}")


@ab_group.command("status")
@click.option("--id", "experiment_id", default=None)
@store_option
@config_option
@json_option
def ab_status(experiment_id: str | None, store: str | None, config_path: str | None, as_json: bool) -> None:
    """The active experiment (else the latest) and its ramp history."""
    with _user_errors():
        _, experiments, _ = _stores(config_path, store, writing=False)
        experiment = _current(experiments, experiment_id, active=False)
    if as_json:
        _dump(experiment.model_dump(mode="json"))
        return
    click.echo(f"experiment {experiment.experiment_id}: {experiment.status}, champion v{experiment.champion_version} "
               f"vs challenger v{experiment.challenger_version} at {experiment.challenger_weight:.0%}")
    for step in experiment.history:
        click.echo(f"  {step.at:%Y-%m-%d %H:%M}  {step.action:<8} {step.challenger_weight:>5.0%}  {step.reason}")


def _report_json(analysis: dict[str, Any]) -> dict[str, Any]:
    experiment: Experiment = analysis["experiment"]
    return {
        "experiment": experiment.model_dump(mode="json"),
        "at": analysis["now"].isoformat(),
        "arms": {arm: s.to_dict() for arm, s in analysis["arms"].items()},
        "comparisons": {name: c.to_dict() for name, c in analysis["comparisons"].items()},
        "sample_ratio": analysis["srm"].to_dict(),
        "decision": json_numbers(analysis["decision"].to_dict()),
    }


def _figure(comparisons: dict[str, LiftComparison]) -> bytes:
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure state (safe in a notebook)
    from scipy import stats

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    for row, (name, comparison) in enumerate(comparisons.items()):
        density = axes[row][0]
        for label, posterior in (("champion", comparison.champion), ("challenger", comparison.challenger)):
            low, high = stats.beta.ppf([0.0005, 0.9995], posterior.alpha, posterior.beta)
            x = np.linspace(low, high, 400)
            density.plot(x, stats.beta.pdf(x, posterior.alpha, posterior.beta), label=f"{label} (mean {posterior.mean:.3%})")
        density.set_title(f"{name.upper()} posterior (Beta)")
        density.legend(fontsize=8)
        rng = np.random.default_rng(comparison.seed)
        a = posterior_draws(comparison.champion, comparison.draws, rng)
        b = posterior_draws(comparison.challenger, comparison.draws, rng)
        lift = axes[row][1]
        counts, edges = np.histogram(b / a - 1, bins=120, density=True)
        lift.stairs(counts, edges, fill=True, color="tab:green", alpha=0.7)
        for edge in comparison.lift_interval:
            lift.axvline(edge, color="k", linestyle="--", linewidth=1)
        lift.axvline(comparison.min_lift, color="tab:red", linewidth=1, label=f"+{comparison.min_lift:.0%} (win line)")
        lift.axvline(0, color="gray", linewidth=1)
        lift.set_title(f"{name.upper()} relative lift: P(better) {comparison.prob_challenger_better:.1%}, "
                       f"P(>{comparison.min_lift:.0%}) {comparison.prob_lift_above_min:.1%}", fontsize=9)
        lift.legend(fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.95, bottom=0.06, hspace=0.3, wspace=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _html(report: dict[str, Any], summary: str, png: bytes) -> str:
    image = base64.b64encode(png).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>A/B report "
            f"{html.escape(report['experiment']['experiment_id'])}</title></head><body>"
            f"<h1>A/B report {html.escape(report['experiment']['experiment_id'])}</h1>"
            f"<pre>{html.escape(summary)}</pre><img alt='posteriors' src='data:image/png;base64,{image}'>"
            f"<h2>Figures (JSON)</h2><pre>{html.escape(json.dumps(report, indent=2, default=str))}</pre></body></html>")


def _summary(analysis: dict[str, Any]) -> str:
    experiment: Experiment = analysis["experiment"]
    lines = [f"experiment {experiment.experiment_id} ({experiment.status}): champion v{experiment.champion_version} vs "
             f"challenger v{experiment.challenger_version} at {experiment.challenger_weight:.0%}",
             "",
             f"{'arm':<11}{'requests':>10}{'units':>8}{'impr.':>10}{'clicks':>8}{'CTR':>9}{'CVR':>8}{'rev/req':>9}{'p99 ms':>8}"]
    for arm, s in analysis["arms"].items():
        p99 = f"{s.latency_ms['p99']:.1f}" if s.latency_ms else "-"
        lines.append(f"{arm:<11}{s.requests:>10,}{s.units:>8,}{s.impressions:>10,}{s.clicks:>8,}{s.ctr:>9.3%}"
                     f"{s.cvr:>8.2%}{s.revenue_per_request:>9.4f}{p99:>8}")
    lines.append("")
    for name, c in analysis["comparisons"].items():
        low, high = c.lift_interval
        lines.append(f"{name.upper()}: lift {c.lift_mean:+.2%} [95% CI {low:+.2%}, {high:+.2%}], P(better) "
                     f"{c.prob_challenger_better:.1%}, P(lift > {c.min_lift:.0%}) {c.prob_lift_above_min:.1%}, "
                     f"expected loss {c.expected_loss_challenger:.2g}")
    lines.append(analysis["srm"].describe())
    decision: Decision = analysis["decision"]
    lines += ["", f"decision: {decision.action} (challenger weight -> {decision.challenger_weight:.0%})",
              f"why: {decision.reason}"]
    return "\n".join(lines)


@ab_group.command("report")
@click.option("--id", "experiment_id", default=None, help="Experiment id (default: the active one).")
@click.option("--at", "at", default=None, help="Decide as of this ISO time (default: now).")
@click.option("--apply", "apply_it", is_flag=True, help="Carry out the decision (ramp, promote, stop, end).")
@click.option("--output", default=None, help="Report folder/URI (default: <store>/experiments/<id>/reports/<time>).")
@store_option
@config_option
@json_option
def ab_report(experiment_id: str | None, at: str | None, apply_it: bool, output: str | None, store: str | None,
              config_path: str | None, as_json: bool) -> None:
    """Per-arm figures, posteriors and today's decision; writes report.html with the plots."""
    with _user_errors():
        config, experiments, registry = _stores(config_path, store)
        experiment = _current(experiments, experiment_id)
        now = _time(at)
        analysis = analyse(config, experiment, now, decision_rules(config.rollout))
        report = _report_json(analysis)
        summary = _summary(analysis)
        folder = output or storage.join(config.store, "experiments", experiment.experiment_id, "reports",
                                        now.strftime("%Y%m%dT%H%M%SZ"))
        png = _figure(analysis["comparisons"])
        storage.write_json(storage.join(folder, "report.json"), report)
        storage.write_bytes(storage.join(folder, "posteriors.png"), png)
        storage.write_bytes(storage.join(folder, "report.html"), _html(report, summary, png).encode())
        decision: Decision = analysis["decision"]
        applied = None
        if apply_it and decision.changes_experiment:
            applied = apply_decision(experiments, registry, experiment, decision, now)
    if as_json:
        _dump({**report, "report_uri": storage.join(folder, "report.html"),
               "applied": applied.model_dump(mode="json") if applied else None})
        return
    click.echo(summary)
    if applied is not None:
        click.echo(f"applied: experiment is {applied.status}, challenger at {applied.challenger_weight:.0%}")
    elif decision.changes_experiment:
        click.echo("not applied (run with --apply to act on it)")
    click.echo(f"report: {storage.join(folder, 'report.html')}")


@ab_group.command("decide")
@click.option("--at", "at", default=None, help="Decide as of this ISO time (default: now; for replays and simulations).")
@store_option
@config_option
@json_option
def ab_decide(at: str | None, store: str | None, config_path: str | None, as_json: bool) -> None:
    """The scheduled daily decision: start, guard, ramp/promote/stop, archive, notify."""
    with _user_errors():
        config, experiments, registry = _stores(config_path, store)
        result = DailyDecision(config, experiments, registry).run(_time(at))
    for error in result.notification_errors:
        click.echo(f"warning: {error}", err=True)
    if as_json:
        _dump(result.to_dict())
        return
    if result.started is not None:
        click.echo(f"started {result.started.experiment_id}: {result.started.history[0].reason}")
    if result.experiment is None:
        click.echo("no active experiment" + ("" if config.rollout.auto_start else
                                             " (rollout.auto_start is off: `appsim ab start` starts one)"))
    if result.guardrails is not None:
        click.echo(f"guardrails: {result.guardrails['verdict']}")
    if result.decision is not None:
        click.echo(f"decision: {result.decision.action} (challenger -> {result.decision.challenger_weight:.0%}): "
                   f"{result.decision.reason}")
    if result.applied is not None:
        click.echo(f"applied: experiment is {result.applied.status}, challenger at {result.applied.challenger_weight:.0%}")
    if result.archived:
        click.echo(f"archived: {', '.join(f'v{v}' for v in result.archived)}")


@ab_group.command("promote")
@click.option("--id", "experiment_id", default=None)
@click.option("--reason", default="promoted by hand", show_default=True)
@store_option
@config_option
def ab_promote(experiment_id: str | None, reason: str, store: str | None, config_path: str | None) -> None:
    """Send all traffic to the challenger: it is Approved and becomes the champion."""
    with _user_errors():
        _, experiments, registry = _stores(config_path, store)
        experiment = _current(experiments, experiment_id)
        updated = apply_decision(experiments, registry, experiment, Decision("promote", 1.0, reason), utcnow())
    click.echo(f"experiment {updated.experiment_id} completed: v{updated.challenger_version} promoted (Approved)")


@ab_group.command("stop")
@click.option("--id", "experiment_id", default=None)
@click.option("--reason", default="stopped by hand", show_default=True)
@click.option("--reject", is_flag=True, help="Also mark the challenger Rejected in the registry.")
@store_option
@config_option
def ab_stop(experiment_id: str | None, reason: str, reject: bool, store: str | None, config_path: str | None) -> None:
    """Stop the experiment: all traffic back to the champion."""
    with _user_errors():
        _, experiments, registry = _stores(config_path, store)
        experiment = _current(experiments, experiment_id)
        updated = experiments.update(experiment.record("stop", 0.0, reason))
        if reject:
            registry.set_status(experiment.challenger_version, "Rejected", f"A/B experiment stopped: {reason}")
    click.echo(f"experiment {updated.experiment_id} stopped; the champion v{updated.champion_version} takes all traffic"
               + ("; challenger Rejected" if reject else ""))


@ab_group.command("simulate")
@click.option("--lift", type=float, required=True, help="The challenger's true relative CTR lift, e.g. 0.08 or -0.03.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--requests-per-day", type=int, default=20_000, show_default=True)
@click.option("--start-weight", type=float, default=0.1, show_default=True)
@click.option("--max-days", type=int, default=60, show_default=True)
@json_option
def ab_simulate(lift: float, seed: int, requests_per_day: int, start_weight: float, max_days: int, as_json: bool) -> None:
    """Walk a simulated experiment day by day through the real router and decision rules (no store)."""
    from pipelines.simulators.experiment import ExperimentScenario, run_experiment

    scenario = ExperimentScenario(true_lift=lift, seed=seed, requests_per_day=requests_per_day,
                                  start_weight=start_weight, max_days=max_days)
    with _user_errors():
        result = run_experiment(scenario)
    if as_json:
        _dump({"outcome": result.outcome, "days": len(result.days), "weights": result.weights,
               "experiment": result.experiment.model_dump(mode="json")})
        return
    for day in result.days:
        if day.decision.action != "wait":
            click.echo(f"day {day.day + 1:>3}  {day.challenger_weight:>4.0%}  {day.decision.action:<8} {day.decision.reason}")
    click.echo(f"outcome after {len(result.days)} days: {result.outcome} (weights {' -> '.join(f'{w:.0%}' for w in result.weights)})")


# --- drift --------------------------------------------------------------------------------------
@click.group("drift")
def drift_group() -> None:
    """Input and prediction drift between the training window and recent traffic."""


def _reference_window(config: PipelineConfig, recent_start: datetime, reference_days: int) -> tuple[datetime, datetime, str]:
    """The champion's training window (registry lineage), else the ``reference_days`` before the recent window."""
    try:
        champion = open_registry(config.registry_uri).champion()
    except RegistryError:
        champion = None
    window = (champion.lineage.get("data_window") or {}) if champion else {}
    if window.get("start") and window.get("end"):
        return parse_utc(window["start"]), parse_utc(window["end"]), f"training window of champion v{champion.version}"
    return recent_start - timedelta(days=reference_days), recent_start, f"the {reference_days} days before"


@drift_group.command("check")
@click.option("--at", "at", default=None, help="End of the recent window, ISO time (default: now).")
@click.option("--recent-days", type=int, default=7, show_default=True, help="The seed's '> 20% shift in 7 days'.")
@click.option("--reference-start", default=None, help="Reference window start (default: the champion's training window).")
@click.option("--reference-end", default=None)
@click.option("--reference-days", type=int, default=28, show_default=True,
              help="Reference length when neither given nor known from the champion.")
@click.option("--psi-threshold", type=float, default=0.2, show_default=True)
@click.option("--mae-ratio", type=float, default=1.5, show_default=True)
@click.option("--min-impressions", type=int, default=100, show_default=True)
@click.option("--min-count", type=click.IntRange(min=1), default=MIN_COUNT, show_default=True,
              help="Observations each window needs before its mix may alert (fewer: insufficient_data).")
@click.option("--output", default=None, help="Also write the JSON to this URI.")
@store_option
@config_option
def drift_check(at: str | None, recent_days: int, reference_start: str | None, reference_end: str | None,
                reference_days: int, psi_threshold: float, mae_ratio: float, min_impressions: int, min_count: int,
                output: str | None,
                store: str | None, config_path: str | None) -> None:
    """Print a JSON drift report; exit 0 = no drift, 3 = drift (action alert or retrain)."""
    with _user_errors():
        config = load_config(config_path, store)
        end = _time(at)
        recent_start = end - timedelta(days=recent_days)
        if reference_start and reference_end:
            ref_start, ref_end, source = parse_utc(reference_start), parse_utc(reference_end), "given"
        else:
            ref_start, ref_end, source = _reference_window(config, recent_start, reference_days)
        feedback = layout.feedback_uri(config.store)
        catalog_uri = layout.catalog_uri(config.store)
        if not storage.exists(catalog_uri):
            raise DriftError(f"no app catalog at {catalog_uri}: drift maps apps to category, region and pricing "
                             f"through it; run `appsim simulate` or copy the feature-store snapshot there")
        with storage.open_uri(catalog_uri) as handle:
            catalog = pd.read_parquet(handle)

        def window(start: datetime, stop: datetime) -> WindowData:
            return WindowData.from_events(e for e in read_events(feedback, start, stop, as_of=end)
                                          if start <= e["ts"] < stop)

        prediction_start = max(ref_start, ref_end - timedelta(days=recent_days))
        windows = {"reference": {"start": ref_start.isoformat(), "end": ref_end.isoformat(), "source": source},
                   "prediction_reference": {"start": prediction_start.isoformat(), "end": ref_end.isoformat()},
                   "recent": {"start": recent_start.isoformat(), "end": end.isoformat()}}
        report = check_drift(window(ref_start, ref_end), window(recent_start, end), catalog,
                             prediction_reference=window(prediction_start, ref_end), windows=windows,
                             psi_threshold=psi_threshold, mae_ratio_threshold=mae_ratio, min_impressions=min_impressions,
                             min_count=min_count)
        result = report.to_dict()
        if output:
            storage.write_json(output, result)
    _dump(result)
    sys.exit(report.exit_code)


# --- monitoring ---------------------------------------------------------------------------------
@click.group("monitoring")
def monitoring_group() -> None:
    """The service's alarms (error rate, p99 latency, zero traffic, sink backlog)."""


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{item}' must look like NAME=VALUE, e.g. service=appsim", param_hint="--dimension")
        pairs[name] = value
    return pairs


@monitoring_group.command("apply")
@click.option("--region", default=None, help="AWS region (default: sagemaker.region in pipeline.yaml).")
@click.option("--namespace", default="appsim", show_default=True, help="CloudWatch namespace the metrics are published in.")
@click.option("--dimension", "dimensions", multiple=True, metavar="NAME=VALUE",
              help="Dimensions of the published metrics (repeatable; default service=appsim).")
@click.option("--alarm-topic", "topics", multiple=True, metavar="SNS_ARN", help="Notify this SNS topic (repeatable).")
@click.option("--prefix", default="appsim-", show_default=True, help="Alarm name prefix.")
@click.option("--dashboard-name", default="appsim-similarity-service", show_default=True,
              help="CloudWatch dashboard of the five panels (seed 5.4).")
@click.option("--dry-run", is_flag=True, help="Print the put_metric_alarm requests and the dashboard instead of sending them.")
@config_option
def monitoring_apply(region: str | None, namespace: str, dimensions: tuple[str, ...], topics: tuple[str, ...],
                     prefix: str, dashboard_name: str, dry_run: bool, config_path: str | None) -> None:
    """Create or update the CloudWatch alarms and the dashboard (idempotent)."""
    from pipelines.monitoring import apply_alarms, apply_dashboard, cloudwatch_alarms, cloudwatch_dashboard

    region = region or load_config(config_path).sagemaker.region
    dims = _pairs(dimensions) if dimensions else None
    requests = cloudwatch_alarms(namespace, dims, list(topics), prefix)
    dashboard = cloudwatch_dashboard(namespace, dims, region)
    if dry_run:
        _dump({"alarms": requests, "dashboard": {"name": dashboard_name, "body": dashboard}})
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
