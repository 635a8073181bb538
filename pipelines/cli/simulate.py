"""`appsim simulate`: the demo marketplace (pipelines/simulators/marketplace.py) written into a store."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone

import click

from pipelines.cli.options import dump, json_option, load, store_and_config

EXAMPLE_END = "2026-11-02T00:00:00Z"  # the Makefile's demo end


def _parse_end(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if not value:
        return None  # the current UTC hour, taken when the command runs
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an ISO date-time such as {EXAMPLE_END}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


@click.command("simulate")
@store_and_config
@click.option("--apps", default=1000, show_default=True, type=click.IntRange(min=2), help="Apps in the catalog.")
@click.option("--users", default=3000, show_default=True, type=click.IntRange(min=1), help="Users (pseudonymous).")
@click.option("--days", default=28, show_default=True, type=click.IntRange(min=1), help="Days of feedback, ending at --end.")
@click.option("--events-per-day", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Ad impressions (click events) per day; conversions and predictions come on top.")
@click.option("--seed", default=42, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--fault-rate", default=0.02, show_default=True, type=click.FloatRange(0, 0.5, max_open=True),
              help="Share of events broken on purpose (duplicates, bad JSON, bad fields, unknown apps, late).")
@click.option("--end", default=None, show_default="the current UTC hour", callback=_parse_end,
              help=f"UTC hour the data ends at. The default suits `appsim retrain` with its default window_end "
                   f"(now); pass a fixed hour (e.g. {EXAMPLE_END}, the Makefile's demo) for reproducible bytes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog, feedback and ground truth in the store.")
@click.option("--drift-days", default=0, show_default=True, type=click.IntRange(min=0),
              help="Input drift over the last N days: a few categories become several times as popular (the "
                   "summary names them; `appsim drift check` should alert).")
@json_option
def simulate_command(store: str | None, config_path: str | None, apps: int, users: int, days: int,
                     events_per_day: int, seed: int, fault_rate: float, end: datetime | None, overwrite: bool,
                     drift_days: int, as_json: bool) -> None:
    """Generate a synthetic marketplace (catalog, feedback events, ground truth) into the store."""
    from models import storage
    from models.progress import Progress
    from pipelines.simulators.marketplace import current_hour, simulate

    store_uri = load(config_path, store, writing=True).store
    summary = simulate(store_uri, apps=apps, users=users, days=days, events_per_day=events_per_day, seed=seed,
                       fault_rate=fault_rate, end=end or current_hour(), overwrite=overwrite, drift_days=drift_days,
                       progress=Progress.quiet() if as_json else Progress("simulate", total=days, unit="days"))
    shown = str(storage.local_path(store_uri)) if storage.is_local(store_uri) else store_uri
    next_command = (f"appsim retrain --store {shlex.quote(shown)} --param window_end={summary['window_end']} "
                    f"--param window_days={days}")
    if as_json:
        dump({"store": store_uri, **summary, "next": next_command})
        return
    events = summary["events"]
    click.echo(f"store: {store_uri}")
    click.echo(f"catalog: {apps:,} apps; {users:,} users; {summary['catalog']['campaigns']:,} campaigns")
    click.echo(f"events: {events['click']:,} impressions ({events['clicked']:,} clicked), "
               f"{events['conversion']:,} conversions, {events['prediction']:,} predictions; "
               f"{summary['lines_written']:,} lines in {summary['files_written']:,} files")
    click.echo("faults: " + ", ".join(f"{kind} {n:,}" for kind, n in summary["faults"].items()))
    if drift_days:
        click.echo(f"drift: the last {drift_days} days favour {', '.join(summary['drift']['categories'])}")
    click.echo(f"next: {next_command}")
