"""`appsim drift`: input and prediction drift (pipelines/drift_check.py, evaluation/drift.py)."""

from __future__ import annotations

import sys
from typing import Any

import click

from pipelines.cli.options import dump, load, store_and_config

# The thresholds' defaults are evaluation.drift's (PSI_ALERT, MAE_RATIO_ALERT, MIN_COUNT); not imported here
# so that `appsim --help` need not load pandas. tests/pipelines/cli/test_drift.py holds them equal.
DEFAULTS = {"psi_threshold": 0.2, "mae_ratio_threshold": 1.5, "min_impressions": 100, "min_count": 500}


@click.group("drift")
def drift_group() -> None:
    """Input and prediction drift between the training window and recent traffic."""


@drift_group.command("check")
@click.option("--at", "at", default=None, help="End of the recent window, ISO time (default: now).")
@click.option("--recent-days", type=click.IntRange(min=1), default=7, show_default=True,
              help="Length of the recent window in days.")
@click.option("--reference-start", default=None,
              help="Reference window start, ISO time (default: the champion's training window).")
@click.option("--reference-end", default=None, help="Reference window end, ISO time (with --reference-start).")
@click.option("--reference-days", type=click.IntRange(min=1), default=28, show_default=True,
              help="Reference length when neither given nor known from the champion.")
@click.option("--psi-threshold", type=float, default=DEFAULTS["psi_threshold"], show_default=True,
              help="Population stability index above which a feature's mix has drifted.")
@click.option("--mae-ratio", "mae_ratio_threshold", type=float, default=DEFAULTS["mae_ratio_threshold"],
              show_default=True, help="Prediction MAE growth (recent / reference) that asks for a retrain.")
@click.option("--min-impressions", type=click.IntRange(min=1), default=DEFAULTS["min_impressions"], show_default=True,
              help="Impressions an app needs in both windows to count in the prediction MAE.")
@click.option("--min-count", type=click.IntRange(min=1), default=DEFAULTS["min_count"], show_default=True,
              help="Observations each window needs before its mix may alert (fewer: insufficient_data).")
@click.option("--output", default=None, help="Also write the JSON to this URI.")
@store_and_config
def drift_check(at: str | None, recent_days: int, reference_start: str | None, reference_end: str | None,
                reference_days: int, output: str | None, store: str | None, config_path: str | None,
                **thresholds: Any) -> None:
    """Print a JSON drift report; exit 0 = no drift, 3 = drift (action alert or retrain)."""
    from models import storage
    from models.events import parse_utc
    from models.experiments import utcnow
    from pipelines.drift_check import DriftWindows, drift_report

    if bool(reference_start) != bool(reference_end):
        raise click.UsageError("give both --reference-start and --reference-end, or neither (the champion's "
                               "training window is used)")
    windows = DriftWindows(recent_days, parse_utc(reference_start) if reference_start else None,
                           parse_utc(reference_end) if reference_end else None, reference_days)
    report = drift_report(load(config_path, store), parse_utc(at) if at else utcnow(), windows, **thresholds)
    result = report.to_dict()
    if output:
        storage.write_json(output, result)
    dump(result)
    sys.exit(report.exit_code)
