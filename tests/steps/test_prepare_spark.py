"""The Spark engine against the DuckDB engine and the pure-Python reference: on a store holding every
fault the simulator injects plus the ones it does not (broken gzip files, bytes that are not UTF-8,
CRLF endings, escaped strings, kept events), all three give the same manifest counts and
byte-identical outputs. One local-mode session for the whole run (the ``spark`` fixture)."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from models import dataset, layout
from models.events import ClickEvent, PredictionEvent
from pipelines.simulators.marketplace import FAULT_REASON, simulate
from steps import prepare, prepare_spark_job
from steps.prepare_sql import KEPT_REASONS

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
DAYS = 3


def _write(store: Path, arrival: datetime, name: str, body: bytes, compress: bool = True) -> Path:
    folder = store / layout.feedback_prefix(arrival)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(gzip.compress(body, mtime=0) if compress else body)
    return path


@pytest.fixture(scope="module")
def faulty_store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("faulty-store")
    simulate(str(store), apps=40, users=60, days=DAYS, events_per_day=1200, seed=5, fault_rate=0.3, end=END)
    apps = pd.read_parquet(store / "catalog" / "apps.parquet")["app_id"].tolist()
    when = END - timedelta(days=1)

    def line(event) -> bytes:
        return json.dumps(event.to_json_dict()).encode()

    clicks = [ClickEvent(event_id=f"extra-{i}", ts=when, app_id=apps[i % 5], campaign_id="c", partner_id="p",
                         user_id=f"extra-user-{i}", clicked=True) for i in range(300)]
    escaped = line(clicks[0]).replace(b'"extra-user-0"', b'"extra-\\u0075ser-0"').replace(b'"extra-0"', b'"extra-esc"')
    lines = [
        line(clicks[1]) + b"\r",  # CRLF
        escaped,  # valid, but only the reference validator may accept escapes
        b'{"event_id": "bytes", "event_type": "click", "ts": "\xff\xfe"}',  # not UTF-8
        line(PredictionEvent(event_id="cold", ts=when, request_id="r", partner_id="p", app_id="new:1f2e",
                             model_version=1, arm="champion", neighbors=[apps[0]], scores=[0.5])),
        line(clicks[2]),  # a duplicate of a line in another file
        line(clicks[3]).replace(b"}", b',}'),  # trailing comma: DuckDB's JSON reader would accept it
        line(clicks[5].model_copy(update={"event_id": "early", "ts": END - timedelta(days=DAYS + 1)})),
        line(clicks[6].model_copy(update={"event_id": "after-end", "ts": END + timedelta(hours=1)})),
    ]
    _write(store, when, "extra-faults.gz", b"\n".join(lines) + b"\n")
    _write(store, when, "extra-plain.jsonl", line(clicks[2]) + b"\n", compress=False)
    broken = gzip.compress(b"".join(line(c) + b"\n" for c in clicks[4:]), mtime=0)
    _write(store, when + timedelta(hours=1), "truncated.gz", broken[: len(broken) // 2], compress=False)
    _write(store, when + timedelta(hours=2), "garbage.gz", b"\x00not gzip" * 20, compress=False)
    return store


def _prepare(store: Path, engine: str) -> dict:
    return prepare.run(str(store / "feedback"), str(store / "catalog" / "apps.parquet"), str(store / f"out-{engine}"),
                       window_end=END, window_days=DAYS, holdout_fraction=0.2, max_bad_fraction=0.5, engine=engine)


def test_spark_equals_duckdb_equals_reference_on_every_fault_kind(spark, faulty_store):
    reference, duckdb_run, spark_run = (_prepare(faulty_store, engine) for engine in ("reference", "duckdb", "spark"))

    counts = reference["counts"]
    # The store really holds every fault: each simulator reason, duplicates, late and kept events, bad files.
    assert {reason for reason in FAULT_REASON.values() if reason and reason not in KEPT_REASONS} | {
        "unreadable_file"} <= set(counts["quarantine_reasons"])
    assert counts["duplicates"] > 0 and counts["out_of_window"] > 0 and counts["bad_files"] == 2
    assert counts["kept_reasons"]["cold_start_query"] == 1 and counts["kept_reasons"]["app_not_in_catalog"] > 0
    for other in (duckdb_run, spark_run):
        assert other["counts"] == counts
        assert other["files"] == reference["files"]  # sha256 of every table, the quarantine and the kept file
        assert other["inputs"]["bad_files"] == reference["inputs"]["bad_files"]
    assert spark_run["engine"] == "spark"
    assert counts["lines_read"] == (counts["good"] + counts["quarantined"] + counts["duplicates"]
                                    + counts["out_of_window"] + counts["kept"])
    spark_pairs = pd.read_parquet(faulty_store / "out-spark" / dataset.TRAIN_INTERACTIONS)
    pd.testing.assert_frame_equal(spark_pairs, pd.read_parquet(faulty_store / "out-reference" / dataset.TRAIN_INTERACTIONS))
    assert len(spark_pairs) > 100


def test_the_pyspark_processor_entry_point_writes_the_prepared_data(spark, faulty_store, tmp_path):
    catalog_dir = tmp_path / "input" / "catalog"
    catalog_dir.mkdir(parents=True)
    (catalog_dir / "apps.parquet").write_bytes((faulty_store / "catalog" / "apps.parquet").read_bytes())
    output = tmp_path / "output" / "prepared"

    code = prepare_spark_job.main([
        "--feedback", str(faulty_store / "feedback"), "--catalog", str(catalog_dir), "--output", str(output),
        "--window-end", "2026-11-02T00:00:00Z", "--window-days", str(DAYS), "--holdout-fraction", "0.2",
        "--max-bad-fraction", "0.5", "--use-attributed-clicks", "false",
    ])

    assert code == 0
    manifest = json.loads((output / dataset.MANIFEST).read_text())
    assert manifest["engine"] == "spark" and manifest["status"] == "succeeded"
    assert manifest["files"] == _prepare(faulty_store, "reference")["files"]
