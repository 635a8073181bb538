import json
import math

import numpy as np
import pandas as pd
import pytest

from evaluation.drift import (
    EXIT_DRIFT, EXIT_OK, MIN_COUNT, DriftError, WindowData, check_drift, population_stability_index, prediction_mae,
)

CATEGORIES = ("Games", "Finance", "Shopping", "Travel")
REGIONS = ("NA", "EU", "APAC")


def catalog(n_apps: int = 200) -> pd.DataFrame:
    return pd.DataFrame({
        "app_id": [f"app-{i}" for i in range(n_apps)],
        "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(n_apps)],
        "region": [REGIONS[i % len(REGIONS)] for i in range(n_apps)],
        "pricing_model": ["free" if i % 5 else "paid" for i in range(n_apps)],
    })


TRUE_CTR = np.linspace(0.02, 0.12, 200)


def window(seed: int, *, n: int = 40_000, app_weights=None, ctr=TRUE_CTR, prediction_error=0.005) -> WindowData:
    """Traffic over 200 apps: queries carry a predicted CTR near the truth, impressions a click."""
    rng = np.random.default_rng(seed)
    weights = np.ones(200) if app_weights is None else np.asarray(app_weights, dtype=float)
    apps = rng.choice(200, size=n, p=weights / weights.sum())
    queries = pd.DataFrame({"app_id": [f"app-{a}" for a in apps[: n // 10]],
                            "predicted_ctr": TRUE_CTR[apps[: n // 10]] + rng.normal(0, prediction_error, n // 10)})
    impressions = pd.DataFrame({"app_id": [f"app-{a}" for a in apps], "clicked": rng.random(n) < ctr[apps]})
    return WindowData(queries, impressions)


def test_psi_of_identical_mixes_is_zero_and_known_shift_matches_the_formula():
    assert population_stability_index({"a": 50, "b": 50}, {"a": 5, "b": 5}) == 0.0
    expected = (0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5)
    assert population_stability_index({"a": 1, "b": 1}, {"a": 7, "b": 3}) == pytest.approx(expected)
    assert population_stability_index({"a": 10}, {"a": 5, "new": 5}) > 2  # a value new in one window
    with pytest.raises(DriftError, match="at least one observation"):
        population_stability_index({}, {"a": 1})


def test_no_drift_gives_no_alert():
    report = check_drift(window(1), window(2), catalog())
    assert report.action == "ok" and report.exit_code == EXIT_OK and report.reasons() == []
    assert {(f.population, f.feature) for f in report.features} == {
        (p, f) for p in ("queries", "impressions") for f in ("category", "region", "pricing_model")}
    assert max(f.psi for f in report.features) < 0.05
    assert report.prediction.ratio == pytest.approx(1.0, abs=0.3)
    json.dumps(report.to_dict())


def test_a_category_shift_alerts():
    games_heavy = [6.0 if i % len(CATEGORIES) == 0 else 1.0 for i in range(200)]
    report = check_drift(window(1), window(2, app_weights=games_heavy), catalog())
    assert report.action == "alert" and report.exit_code == EXIT_DRIFT
    category = next(f for f in report.features if f.feature == "category" and f.population == "impressions")
    assert category.alert and category.largest_shifts[0]["value"] == "Games"
    assert any("category mix of impressions shifted" in reason for reason in report.reasons())
    region = next(f for f in report.features if f.feature == "region" and f.population == "impressions")
    assert not region.alert  # the games are spread evenly over regions


def test_worse_predictions_ask_for_a_retrain():
    changed_world = TRUE_CTR[::-1].copy()  # true CTRs moved; the model still predicts the old ones
    report = check_drift(window(1), window(2, ctr=changed_world), catalog())
    assert report.action == "retrain" and report.exit_code == EXIT_DRIFT
    assert report.prediction.ratio > 1.5
    assert "retrain" in report.reasons()[-1]


def test_prediction_mae_uses_apps_with_enough_impressions():
    data = WindowData(pd.DataFrame({"app_id": ["a", "b"], "predicted_ctr": [0.10, 0.50]}),
                      pd.DataFrame({"app_id": ["a"] * 100 + ["b"] * 10, "clicked": [True] * 20 + [False] * 80 + [True] * 10}))
    mae, apps = prediction_mae(data, min_impressions=50)
    assert (apps, mae) == (1, pytest.approx(0.1))
    assert prediction_mae(data, min_impressions=1000) == (None, 0)


def test_window_data_from_events_dedupes_and_keeps_missing_predictions_as_nan():
    events = [
        {"event_id": "1", "event_type": "prediction", "app_id": "a", "predicted_ctr": 0.1},
        {"event_id": "1", "event_type": "prediction", "app_id": "a", "predicted_ctr": 0.1},
        {"event_id": "2", "event_type": "prediction", "app_id": "b", "predicted_ctr": None},
        {"event_id": "3", "event_type": "click", "app_id": "a", "clicked": True},
        {"event_id": "4", "event_type": "conversion", "app_id": "a", "converted": True},
    ]
    data = WindowData.from_events(events)
    assert len(data.queries) == 2 and np.isnan(data.queries["predicted_ctr"].iloc[1])
    assert data.impressions.to_dict("records") == [{"app_id": "a", "clicked": True}]


def test_a_catalog_without_the_features_is_refused():
    with pytest.raises(DriftError, match="lacks column"):
        check_drift(window(1), window(2), catalog().drop(columns=["region"]))


def nine_games_queries() -> WindowData:
    """Nine requests, all for one category: a mix far from the reference, by chance or not."""
    return WindowData(pd.DataFrame({"app_id": [f"app-{4 * i}" for i in range(9)], "predicted_ctr": 0.05}),
                      pd.DataFrame({"app_id": [], "clicked": []}))


def test_nine_requests_never_alert_however_skewed():
    report = check_drift(window(1), nine_games_queries(), catalog())
    queries = [f for f in report.features if f.population == "queries"]
    assert queries and all(f.insufficient_data and not f.alert and f.status == "insufficient_data" for f in queries)
    assert max(f.psi for f in queries) > 1  # the mix did move: only the sample size holds the alert back
    assert report.action == "insufficient_data" and report.exit_code == EXIT_OK
    assert any(f"9 recent observations, at least {MIN_COUNT:,}" in reason for reason in report.reasons())
    assert report.to_dict()["features"][0]["status"] == "insufficient_data"


def test_the_minimum_count_is_configurable_and_checked():
    report = check_drift(window(1), nine_games_queries(), catalog(), min_count=5)
    assert report.action == "alert" and report.exit_code == EXIT_DRIFT
    with pytest.raises(DriftError, match="min_count must be at least 1"):
        check_drift(window(1), window(2), catalog(), min_count=0)


def test_a_window_without_traffic_is_insufficient_data():
    empty = WindowData(pd.DataFrame({"app_id": [], "predicted_ctr": []}), pd.DataFrame({"app_id": [], "clicked": []}))
    report = check_drift(window(1), empty, catalog())
    assert report.features == [] and report.action == "insufficient_data" and report.exit_code == EXIT_OK
    assert report.reasons() == ["insufficient data: no population was observed in both windows"]
