"""Drift between the champion's training window and recent traffic, from the store (`appsim drift check`).

The statistics are ``evaluation.drift``'s; this module picks the windows (the reference is the
champion's training window from the registry's lineage, else the days before the recent window),
reads their events (``pipelines.feedback_events``) and the catalog (apps -> category, region,
pricing), and returns the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from evaluation.drift import DriftError, DriftReport, WindowData, check_drift
from models import layout, storage
from models.events import parse_utc
from models.registry import RegistryError
from models.registry_backends import open_registry
from pipelines.config import PipelineConfig
from pipelines.feedback_events import read_events


@dataclass(frozen=True)
class DriftWindows:
    recent_days: int
    reference_start: datetime | None = None
    reference_end: datetime | None = None
    reference_days: int = 28


def reference_window(config: PipelineConfig, recent_start: datetime, reference_days: int) -> tuple[datetime, datetime, str]:
    """The champion's training window (registry lineage), else the ``reference_days`` before the recent window."""
    try:
        champion = open_registry(config.registry_uri, read_only=True).champion()
    except RegistryError:
        champion = None
    window = (champion.lineage.get("data_window") or {}) if champion else {}
    if window.get("start") and window.get("end"):
        return parse_utc(window["start"]), parse_utc(window["end"]), f"training window of champion v{champion.version}"
    return recent_start - timedelta(days=reference_days), recent_start, f"the {reference_days} days before"


def drift_report(config: PipelineConfig, end: datetime, windows: DriftWindows, **thresholds: Any) -> DriftReport:
    """``evaluation.drift.check_drift`` over the store's feedback; ``thresholds`` are its keyword options."""
    from models.catalog import read_catalog

    recent_start = end - timedelta(days=windows.recent_days)
    if windows.reference_start and windows.reference_end:
        ref_start, ref_end, source = windows.reference_start, windows.reference_end, "given"
    else:
        ref_start, ref_end, source = reference_window(config, recent_start, windows.reference_days)
    catalog_uri = layout.catalog_uri(config.store)
    if not storage.exists(catalog_uri):
        raise DriftError(f"no app catalog at {catalog_uri}: drift maps apps to category, region and pricing "
                         f"through it; run `appsim simulate` or copy the feature-store snapshot there")
    catalog = read_catalog(catalog_uri)
    feedback = layout.feedback_uri(config.store)

    def window(start: datetime, stop: datetime) -> WindowData:
        return WindowData.from_events(e for e in read_events(feedback, start, stop).events if start <= e["ts"] < stop)

    prediction_start = max(ref_start, ref_end - timedelta(days=windows.recent_days))
    described = {"reference": {"start": ref_start.isoformat(), "end": ref_end.isoformat(), "source": source},
                 "prediction_reference": {"start": prediction_start.isoformat(), "end": ref_end.isoformat()},
                 "recent": {"start": recent_start.isoformat(), "end": end.isoformat()}}
    return check_drift(window(ref_start, ref_end), window(recent_start, end), catalog,
                       prediction_reference=window(prediction_start, ref_end), windows=described, **thresholds)
