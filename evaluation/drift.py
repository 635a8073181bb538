"""Drift between the training window and the recent window (the seed's section 8.4).

Feature drift: the mix of ``category``, ``region`` and ``pricing_model`` over two populations,
the apps partners ask about (prediction events' ``app_id``) and the apps shown (click events'
``app_id``), each looked up in the catalog (apps missing from it count as ``(unknown)``). The
shift is the population stability index,

    PSI = sum over values v of (recent_v - reference_v) * ln(recent_v / reference_v)

with shares floored at ``PSI_FLOOR`` so that a value new in one window gives a large finite
number. PSI > 0.2 (the usual "significant shift" line, the seed's "> 20% shift") is an alert,
but only when both windows hold at least ``min_count`` observations of that population
(default ``MIN_COUNT``): on a handful of requests a share swings by tens of points by chance
(9 requests gave PSI 8.03), so below the minimum the check reports ``insufficient_data``.

Prediction drift: the MAE between each app's mean ``predicted_ctr`` (prediction events) and its
observed CTR (clicks / impressions of click events), weighted by impressions, over apps with at
least ``min_impressions`` impressions. It is compared between two windows of the same length
(the recent window and the last days of the training window), because the noise in an app's
observed CTR, and so the MAE, shrinks with volume; a recent MAE more than 1.5x the reference
(the seed's "MAE increases by > 50%") means the model should be retrained.

``action``: ``retrain`` on prediction drift, else ``alert`` on feature drift, else
``insufficient_data`` when no feature had enough observations to be judged, else ``ok``.
``exit_code``: 0 for ok and insufficient_data (nothing to act on), 3 for either kind of drift
(2 is kept for usage errors), so a
scheduler can run ``appsim drift check || appsim retrain``-style logic on the code alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

FEATURES = ("category", "region", "pricing_model")
POPULATIONS = ("queries", "impressions")
PSI_ALERT = 0.2
PSI_FLOOR = 1e-4
# Observations per window (of one population) below which PSI is not judged: with n draws a
# share's standard error is sqrt(p(1-p)/n), about 2 points at n=500, which keeps the PSI of two
# samples of the same mix well under PSI_ALERT.
MIN_COUNT = 500
MAE_RATIO_ALERT = 1.5
UNKNOWN = "(unknown)"
EXIT_OK = 0
EXIT_DRIFT = 3


class DriftError(ValueError):
    """Inputs that cannot be compared for drift."""


@dataclass(frozen=True)
class WindowData:
    """What drift needs from one window of feedback."""

    queries: pd.DataFrame       # app_id, predicted_ctr (may be NaN): one row per prediction event
    impressions: pd.DataFrame   # app_id, clicked: one row per click event

    @classmethod
    def from_events(cls, events: Iterable[Mapping[str, Any]]) -> "WindowData":
        queries: list[tuple[str, float]] = []
        impressions: list[tuple[str, bool]] = []
        seen: set[str] = set()
        for event in events:
            if event["event_id"] in seen:
                continue
            seen.add(event["event_id"])
            if event["event_type"] == "prediction":
                predicted = event.get("predicted_ctr")
                queries.append((event["app_id"], np.nan if predicted is None else float(predicted)))
            elif event["event_type"] == "click":
                impressions.append((event["app_id"], bool(event["clicked"])))
        return cls(pd.DataFrame(queries, columns=["app_id", "predicted_ctr"]),
                   pd.DataFrame(impressions, columns=["app_id", "clicked"]))


def population_stability_index(reference: Mapping[str, float], recent: Mapping[str, float],
                               floor: float = PSI_FLOOR) -> float:
    """PSI of two count (or share) vectors over the union of their values."""
    values = sorted(set(reference) | set(recent))
    ref = np.array([float(reference.get(v, 0.0)) for v in values])
    new = np.array([float(recent.get(v, 0.0)) for v in values])
    if ref.sum() <= 0 or new.sum() <= 0:
        raise DriftError("both windows need at least one observation to compare their mix")
    ref = np.maximum(ref / ref.sum(), floor)
    new = np.maximum(new / new.sum(), floor)
    return float(np.sum((new - ref) * np.log(new / ref)))


@dataclass(frozen=True)
class FeatureDrift:
    population: str
    feature: str
    psi: float
    threshold: float
    reference_count: int
    recent_count: int
    min_count: int = MIN_COUNT
    largest_shifts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def insufficient_data(self) -> bool:
        return min(self.reference_count, self.recent_count) < self.min_count

    @property
    def alert(self) -> bool:
        return not self.insufficient_data and self.psi > self.threshold

    @property
    def status(self) -> Literal["ok", "alert", "insufficient_data"]:
        return "insufficient_data" if self.insufficient_data else "alert" if self.alert else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alert": self.alert, "status": self.status}


@dataclass(frozen=True)
class PredictionDrift:
    reference_mae: float | None
    recent_mae: float | None
    threshold_ratio: float
    min_impressions: int
    reference_apps: int
    recent_apps: int

    @property
    def ratio(self) -> float | None:
        if self.reference_mae is None or self.recent_mae is None or self.reference_mae <= 0:
            return None
        return self.recent_mae / self.reference_mae

    @property
    def alert(self) -> bool:
        return self.ratio is not None and self.ratio > self.threshold_ratio

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "alert": self.alert}


@dataclass(frozen=True)
class DriftReport:
    windows: dict[str, dict[str, str]]
    features: list[FeatureDrift]
    prediction: PredictionDrift

    @property
    def action(self) -> Literal["ok", "alert", "retrain", "insufficient_data"]:
        if self.prediction.alert:
            return "retrain"
        if any(f.alert for f in self.features):
            return "alert"
        return "insufficient_data" if all(f.insufficient_data for f in self.features) else "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_DRIFT if self.action in ("alert", "retrain") else EXIT_OK

    def reasons(self) -> list[str]:
        found = [f"{f.feature} mix of {f.population} shifted: PSI {f.psi:.3f} > {f.threshold:g}"
                 for f in self.features if f.alert]
        p = self.prediction
        if p.alert:
            found.append(f"prediction MAE rose {p.ratio:.2f}x ({p.reference_mae:.4f} -> {p.recent_mae:.4f}) "
                         f"> {p.threshold_ratio:g}x: retrain")
        found += sorted({f"insufficient data for the {f.population} mix: {f.reference_count:,} reference and "
                         f"{f.recent_count:,} recent observations, at least {f.min_count:,} each are needed "
                         "(lower --min-count only if you accept noisier alerts)"
                         for f in self.features if f.insufficient_data})
        if not self.features:
            found.append("insufficient data: no population was observed in both windows")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "exit_code": self.exit_code, "reasons": self.reasons(), "windows": self.windows,
                "features": [f.to_dict() for f in self.features], "prediction": self.prediction.to_dict()}


def _mix(app_ids: pd.Series, catalog: pd.DataFrame, feature: str) -> dict[str, float]:
    values = app_ids.map(catalog[feature]).fillna(UNKNOWN).astype(str)
    return values.value_counts().to_dict()


def feature_drift(reference: WindowData, recent: WindowData, catalog: pd.DataFrame,
                  threshold: float = PSI_ALERT, min_count: int = MIN_COUNT) -> list[FeatureDrift]:
    """PSI of every feature over every population that both windows observed; judged only
    where both windows hold ``min_count`` observations."""
    by_app = catalog.set_index("app_id")
    results = []
    for population in POPULATIONS:
        ref_apps, new_apps = getattr(reference, population)["app_id"], getattr(recent, population)["app_id"]
        if ref_apps.empty or new_apps.empty:
            continue
        for feature in FEATURES:
            ref_mix, new_mix = _mix(ref_apps, by_app, feature), _mix(new_apps, by_app, feature)
            ref_total, new_total = sum(ref_mix.values()), sum(new_mix.values())
            shifts = sorted(({"value": v, "reference_share": ref_mix.get(v, 0) / ref_total,
                              "recent_share": new_mix.get(v, 0) / new_total} for v in set(ref_mix) | set(new_mix)),
                            key=lambda s: -abs(s["recent_share"] - s["reference_share"]))
            results.append(FeatureDrift(population, feature, population_stability_index(ref_mix, new_mix),
                                        threshold, int(ref_total), int(new_total), min_count, shifts[:3]))
    return results


def prediction_mae(window: WindowData, min_impressions: int) -> tuple[float | None, int]:
    """Impression-weighted MAE of predicted vs observed CTR per app, and how many apps it covers."""
    predicted = window.queries.dropna(subset=["predicted_ctr"]).groupby("app_id")["predicted_ctr"].mean()
    observed = window.impressions.groupby("app_id")["clicked"].agg(["sum", "count"])
    observed = observed[observed["count"] >= min_impressions]
    joined = observed.join(predicted, how="inner")
    if joined.empty:
        return None, 0
    errors = (joined["predicted_ctr"] - joined["sum"] / joined["count"]).abs()
    return float(np.average(errors, weights=joined["count"])), len(joined)


def check_drift(reference: WindowData, recent: WindowData, catalog: pd.DataFrame, *,
                prediction_reference: WindowData | None = None, windows: dict[str, dict[str, str]] | None = None,
                psi_threshold: float = PSI_ALERT, mae_ratio_threshold: float = MAE_RATIO_ALERT,
                min_impressions: int = 100, min_count: int = MIN_COUNT) -> DriftReport:
    """Feature drift of ``recent`` against ``reference``; prediction drift against
    ``prediction_reference`` (a reference sub-window as long as the recent one; default ``reference``)."""
    missing = [c for c in ("app_id", *FEATURES) if c not in catalog.columns]
    if min_count < 1:
        raise DriftError(f"min_count must be at least 1, got {min_count}")
    if missing:
        raise DriftError(f"the catalog lacks column(s) {', '.join(missing)}; drift needs app_id, {', '.join(FEATURES)}")
    reference_mae, reference_apps = prediction_mae(prediction_reference or reference, min_impressions)
    recent_mae, recent_apps = prediction_mae(recent, min_impressions)
    prediction = PredictionDrift(reference_mae, recent_mae, mae_ratio_threshold, min_impressions,
                                 reference_apps, recent_apps)
    return DriftReport(windows or {}, feature_drift(reference, recent, catalog, psi_threshold, min_count),
                       prediction)
