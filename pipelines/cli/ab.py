"""`appsim ab`: A/B experiments, a challenger version against the champion on live traffic.

- ``ab start --challenger VERSION --weight 0.1``: a registered, not rejected version newer than
  the champion gets that share of traffic (serving reads the experiment and routes).
- ``ab status``: the active (else the latest) experiment and its ramp history.
- ``ab report [--apply]``: the analysis of pipelines/ab_analysis.py (per-arm figures, posteriors,
  today's decision) and its report under ``<store>/experiments/<id>/reports/<time>/``; with
  ``--apply`` the decision is carried out (ramp, promote, stop on a regression, end).
- ``ab decide [--at TIME]``: the daily decision of the staged rollout (pipelines/rollout.py), run
  by cron or the EventBridge schedule of `appsim schedule set-decision`.
- ``ab promote`` / ``ab stop``: the same by hand.
- ``ab simulate --lift 0.08``: a simulated experiment walked day by day through the real router
  and rules (pipelines/simulators/experiment.py), to see what the rules would do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from pipelines.cli.errors import UsageProblem
from pipelines.cli.options import dump, json_option, load, store_and_config

experiment_option = click.option("--id", "experiment_id", default=None, help="Experiment id (default: the active one).")
at_option = click.option("--at", "at", default=None,
                         help="Act as of this ISO time (default: now; for replays and simulations).")


def _time(text: str | None) -> datetime:
    from models.events import parse_utc
    from models.experiments import utcnow

    return parse_utc(text) if text else utcnow()


def _stores(config_path: str | None, store: str | None, writing: bool = True) -> tuple[Any, Any, Any]:
    """The config, the experiment store and the registry."""
    from models.experiments import open_experiments
    from models.registry_backends import open_registry

    config = load(config_path, store, writing=writing)
    return (config, open_experiments(config.experiments_uri, read_only=not writing),
            open_registry(config.registry_uri, read_only=not writing))


def _current(experiments: Any, experiment_id: str | None, *, active: bool = True) -> Any:
    if experiment_id:
        return experiments.get(experiment_id)
    found = experiments.active() if active else next(iter(experiments.list()), None)
    if found is None:
        raise UsageProblem("no active experiment; start one with `appsim ab start --challenger VERSION --weight 0.1`")
    return found


@click.group("ab")
def ab_group() -> None:
    """A/B experiments: a challenger version against the champion on live traffic."""


@ab_group.command("start")
@click.option("--challenger", type=int, required=True, help="Registry version to test against the champion.")
@click.option("--weight", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Challenger's share of traffic.")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="End date: the experiment ends without a winner after this many days.")
@click.option("--id", "experiment_id", default=None, help="Experiment id (default: v<champion>_vs_v<challenger>_<time>).")
@at_option
@store_and_config
@json_option
def ab_start(challenger: int, weight: float, days: int | None, experiment_id: str | None, at: str | None,
             store: str | None, config_path: str | None, as_json: bool) -> None:
    """Send --weight of traffic to --challenger (start at 10% and let `ab decide` ramp it)."""
    from models.experiments import Experiment

    _, experiments, registry = _stores(config_path, store)
    champion = registry.champion()
    if champion is None:
        raise UsageProblem("no champion yet (no Approved version): run `appsim retrain` first")
    candidate = registry.get(challenger)
    if candidate.status == "Rejected":
        raise UsageProblem(f"version {challenger} is Rejected; re-open it with `appsim registry approve "
                           f"{challenger} --force` or pick another")
    if challenger < champion.version:
        raise UsageProblem(f"version {challenger} is older than the champion v{champion.version}: promoting it "
                           f"would not make it the champion; test a newer version")
    now = _time(at)
    experiment = Experiment.start(champion.version, challenger, weight, at=now, experiment_id=experiment_id,
                                  end_date=now + timedelta(days=days) if days else None,
                                  reason=f"started by hand at {weight:.0%}")
    saved = experiments.create(experiment)
    if as_json:
        dump(saved.model_dump(mode="json"))
        return
    click.echo(f"experiment {saved.experiment_id}: champion v{saved.champion_version} {1 - weight:.0%} / "
               f"challenger v{saved.challenger_version} {weight:.0%}")


@ab_group.command("status")
@experiment_option
@store_and_config
@json_option
def ab_status(experiment_id: str | None, store: str | None, config_path: str | None, as_json: bool) -> None:
    """The active experiment (else the latest) and its ramp history."""
    _, experiments, _ = _stores(config_path, store, writing=False)
    experiment = _current(experiments, experiment_id, active=False)
    if as_json:
        dump(experiment.model_dump(mode="json"))
        return
    click.echo(f"experiment {experiment.experiment_id}: {experiment.status}, champion v{experiment.champion_version} "
               f"vs challenger v{experiment.challenger_version} at {experiment.challenger_weight:.0%}")
    for step in experiment.history:
        click.echo(f"  {step.at:%Y-%m-%d %H:%M}  {step.action:<8} {step.challenger_weight:>5.0%}  {step.reason}")


@ab_group.command("report")
@experiment_option
@at_option
@click.option("--apply", "apply_it", is_flag=True, help="Carry out the decision (ramp, promote, stop, end).")
@click.option("--output", default=None, help="Report folder/URI (default: <store>/experiments/<id>/reports/<time>).")
@store_and_config
@json_option
def ab_report(experiment_id: str | None, at: str | None, apply_it: bool, output: str | None, store: str | None,
              config_path: str | None, as_json: bool) -> None:
    """Per-arm figures, posteriors and today's decision; writes report.html with the plots."""
    from pipelines.ab_analysis import analyse, report_folder, write_report
    from pipelines.rollout import apply_decision, decision_rules

    config, experiments, registry = _stores(config_path, store)
    experiment = _current(experiments, experiment_id)
    now = _time(at)
    analysis = analyse(config, experiment, now, decision_rules(config.rollout))
    report_uri = write_report(analysis, output or report_folder(config.store, experiment.experiment_id, now))
    decision = analysis.decision
    applied = apply_decision(experiments, registry, experiment, decision, now) \
        if apply_it and decision.changes_experiment else None
    if as_json:
        dump({**analysis.to_dict(), "report_uri": report_uri,
              "applied": applied.model_dump(mode="json") if applied else None})
        return
    click.echo(analysis.summary())
    if applied is not None:
        click.echo(f"applied: experiment is {applied.status}, challenger at {applied.challenger_weight:.0%}")
    elif decision.changes_experiment:
        click.echo("not applied (run with --apply to act on it)")
    click.echo(f"report: {report_uri}")


@ab_group.command("decide")
@at_option
@store_and_config
@json_option
def ab_decide(at: str | None, store: str | None, config_path: str | None, as_json: bool) -> None:
    """The scheduled daily decision: start, guard, ramp/promote/stop, archive, notify."""
    from pipelines.rollout import DailyDecision

    config, experiments, registry = _stores(config_path, store)
    result = DailyDecision(config, experiments, registry).run(_time(at))
    for error in result.notification_errors:
        click.echo(f"warning: {error}", err=True)
    if as_json:
        dump(result.to_dict())
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
@experiment_option
@click.option("--reason", default="promoted by hand", show_default=True, help="Why, recorded in the history.")
@store_and_config
@json_option
def ab_promote(experiment_id: str | None, reason: str, store: str | None, config_path: str | None,
               as_json: bool) -> None:
    """Send all traffic to the challenger: it is Approved and becomes the champion."""
    from evaluation.ab_decision import Decision
    from models.experiments import utcnow
    from pipelines.rollout import apply_decision

    _, experiments, registry = _stores(config_path, store)
    experiment = _current(experiments, experiment_id)
    updated = apply_decision(experiments, registry, experiment, Decision("promote", 1.0, reason), utcnow())
    if as_json:
        dump(updated.model_dump(mode="json"))
        return
    click.echo(f"experiment {updated.experiment_id} completed: v{updated.challenger_version} promoted (Approved)")


@ab_group.command("stop")
@experiment_option
@click.option("--reason", default="stopped by hand", show_default=True, help="Why, recorded in the history.")
@click.option("--reject", is_flag=True, help="Also mark the challenger Rejected in the registry.")
@store_and_config
@json_option
def ab_stop(experiment_id: str | None, reason: str, reject: bool, store: str | None, config_path: str | None,
            as_json: bool) -> None:
    """Stop the experiment: all traffic back to the champion."""
    _, experiments, registry = _stores(config_path, store)
    experiment = _current(experiments, experiment_id)
    updated = experiments.update(experiment.record("stop", 0.0, reason))
    if reject:
        registry.set_status(experiment.challenger_version, "Rejected", f"A/B experiment stopped: {reason}")
    if as_json:
        dump(updated.model_dump(mode="json"))
        return
    click.echo(f"experiment {updated.experiment_id} stopped; the champion v{updated.champion_version} takes all traffic"
               + ("; challenger Rejected" if reject else ""))


@ab_group.command("simulate")
@click.option("--lift", type=float, required=True, help="The challenger's true relative CTR lift, e.g. 0.08 or -0.03.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same traffic.")
@click.option("--requests-per-day", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Simulated requests a day, both arms together.")
@click.option("--start-weight", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="The challenger's share on day 1.")
@click.option("--max-days", type=click.IntRange(min=1), default=60, show_default=True,
              help="Stop the simulation after this many days.")
@json_option
def ab_simulate(lift: float, seed: int, requests_per_day: int, start_weight: float, max_days: int, as_json: bool) -> None:
    """Walk a simulated experiment day by day through the real router and decision rules (no store)."""
    from pipelines.simulators.experiment import ExperimentScenario, run_experiment

    scenario = ExperimentScenario(true_lift=lift, seed=seed, requests_per_day=requests_per_day,
                                  start_weight=start_weight, max_days=max_days)
    result = run_experiment(scenario)
    if as_json:
        dump({"outcome": result.outcome, "days": len(result.days), "weights": result.weights,
              "experiment": result.experiment.model_dump(mode="json")})
        return
    for day in result.days:
        if day.decision.action != "wait":
            click.echo(f"day {day.day + 1:>3}  {day.challenger_weight:>4.0%}  {day.decision.action:<8} {day.decision.reason}")
    click.echo(f"outcome after {len(result.days)} days: {result.outcome} (weights {' -> '.join(f'{w:.0%}' for w in result.weights)})")
