"""`appsim retrain --param prepare_engine=spark` on a small simulated store gives the same manifest
counts and the same interactions as the default engine (in-process, on the test run's one Spark session)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from models import dataset, layout, storage
from pipelines.cli import cli

END = "2026-11-02T00:00:00Z"
DAYS = "4"


def _appsim(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _retrain(store: Path, *params: str) -> Path:
    args = ["retrain", "--store", str(store), "--json", "--param", f"window_end={END}", "--param", f"window_days={DAYS}"]
    for param in params:
        args += ["--param", param]
    run_id = json.loads(_appsim(*args))["run_id"]
    return storage.local_path(layout.step_uri(storage.normalize(str(store)), run_id, "prepare"))


def test_the_spark_engine_retrains_on_the_same_prepared_data(spark, tmp_path, monkeypatch):
    monkeypatch.delenv("APPSIM_STORE", raising=False)
    store = tmp_path / "store"
    _appsim("simulate", "--store", str(store), "--apps", "60", "--users", "150", "--days", DAYS,
            "--events-per-day", "1500", "--seed", "3", "--fault-rate", "0.05", "--end", END)

    default, on_spark = _retrain(store), _retrain(store, "prepare_engine=spark")

    manifests = [json.loads((folder / dataset.MANIFEST).read_text()) for folder in (default, on_spark)]
    assert [m["engine"] for m in manifests] == ["duckdb", "spark"]
    assert manifests[0]["counts"] == manifests[1]["counts"] and manifests[0]["counts"]["quarantined"] > 0
    for name in (dataset.TRAIN_INTERACTIONS, dataset.HOLDOUT_INTERACTIONS):
        expected = pd.read_parquet(default / name)
        assert len(expected) > 0
        pd.testing.assert_frame_equal(pd.read_parquet(on_spark / name), expected)
