"""The DuckDB engine against the pure-Python reference (the oracle): same counts, same reason for every bad
line, byte-identical outputs; and the SQL fast path never accepts a line the reference refuses."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import dataset
from models.events import InvalidEvent, parse_line, prediction_record
from pipelines.simulators.marketplace import simulate
from steps import prepare, prepare_sql
from steps.prepare_io import read_file
from tests.steps.conftest import CATALOG_APPS, WINDOW_END, make_feedback_store
from tests.steps.feedback_lines import lines

WINDOW = dict(window_end=WINDOW_END, window_days=10, holdout_fraction=0.2, max_bad_fraction=1.0)


_CONNECTION = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
_CONNECTION.register("catalog", pa.table({"app_id": list(CATALOG_APPS)}))
_FAST_PATH = (f"SELECT accepted, event_id, kind, ts_us, app_id, user_id, positive, attributed, revenue "
              f"FROM ({prepare_sql.typed_sql()}) ORDER BY line")


def fast_path(texts: list[str]) -> list[tuple]:
    """typed_sql() over the lines: (accepted, event_id, kind, ts_us, app_id, user_id, positive, attributed, revenue)."""
    _CONNECTION.register("raw_lines", pa.table({"source": pa.array([0] * len(texts), pa.int32()),
                                                "line": pa.array(range(1, len(texts) + 1), pa.int64()), "raw": texts}))
    return _CONNECTION.execute(_FAST_PATH).fetchall()


def reference_row(text: str) -> tuple | None:
    try:
        return prepare_sql.event_row(parse_line(text.encode("utf-8", "surrogatepass")))
    except InvalidEvent:
        return None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(CATALOG_APPS), min_size=1, max_size=40))
def test_the_fast_path_accepts_only_valid_lines_and_extracts_the_reference_values(batch):
    texts = [text for text in batch if _utf8(text)]  # invalid UTF-8 never reaches SQL (see prepare_duckdb)
    for text, (accepted, *extracted) in zip(texts, fast_path(texts), strict=True):
        if accepted:
            assert reference_row(text) == tuple(extracted), text


def test_the_fast_path_accepts_the_canonical_lines_serving_and_the_simulator_write(tmp_path):
    simulate(str(tmp_path), apps=30, users=40, days=1, events_per_day=300, seed=3, fault_rate=0.0,
             end=WINDOW_END)
    texts = [line.decode() for uri in sorted((tmp_path / "feedback").rglob("*.gz"))
             for line in read_file(f"file://{uri}")[0].splitlines()]
    rows = fast_path(texts)
    assert len(rows) > 300 and all(accepted for accepted, *_ in rows)
    assert [tuple(extracted) for _, *extracted in rows] == [reference_row(text) for text in texts]


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def run_both(store, name: str = "out") -> tuple[dict, dict]:
    manifests = []
    for engine in ("reference", "duckdb"):
        manifests.append(prepare.run(store.feedback, store.catalog, store.output(f"{name}-{engine}"), engine=engine,
                                     **WINDOW))
    return manifests[0], manifests[1]


def assert_same_outputs(store, reference: dict, engine: dict, name: str = "out") -> None:
    for key in ("status", "window", "parameters", "inputs", "counts", "smoothing"):
        assert engine.get(key) == reference.get(key), key
    assert engine["files"] == reference["files"]  # sha256 of tables, quarantine and kept: byte-identical
    assert (Path(store.output(f"{name}-duckdb")) / dataset.QUARANTINE).read_bytes() == (
        Path(store.output(f"{name}-reference")) / dataset.QUARANTINE).read_bytes()


def test_engines_agree_on_every_fault_the_simulator_injects_plus_cold_starts_and_bad_files(tmp_path):
    summary = simulate(str(tmp_path), apps=6, users=40, days=2, events_per_day=400, seed=11, fault_rate=0.3,
                       end=WINDOW_END - timedelta(days=1))
    assert all(summary["faults"].values())  # every fault kind is in the corpus
    store = make_feedback_store(tmp_path / "with-catalog")
    (tmp_path / "feedback").rename(store.root / "feedback")
    # Simulated apps are app-000000...: a catalog of four of the six, so events for the others are kept.
    pd.DataFrame({"app_id": [f"app-{i:06d}" for i in range(4)]}).to_parquet(store.catalog, index=False)
    files = sorted((store.root / "feedback").rglob("*.gz"))
    data = files[3].read_bytes()
    files[3].write_bytes(data[:len(data) * 2 // 3])  # truncated
    files[5].write_bytes(b"not a gzip file")
    with gzip.open(files[7], "rb") as handle:
        body = handle.read()
    cold_start = prediction_record(event_id="cold-1", ts=WINDOW_END - timedelta(days=1, hours=5), request_id="r",
                                   partner_id="p", app_id="new:3f2a", model_version=1, arm="champion",
                                   neighbors=["app-000001"], scores=[0.5])
    extra = b'{"event_id": "\xff\xfe"}\n' + body.splitlines(True)[0] + json.dumps(cold_start).encode() + b"\n"
    files[7].write_bytes(gzip.compress(body + extra, mtime=0))

    reference, engine = run_both(store)

    counts = engine["counts"]
    assert counts["bad_files"] == 2 and counts["duplicates"] > 0
    assert counts["kept_reasons"]["cold_start_query"] == 1 and counts["kept_reasons"]["app_not_in_catalog"] > 0
    assert set(counts["quarantine_reasons"]) >= {"malformed_json", "missing_field", "invalid_field",
                                                 "unknown_event_type", "unreadable_file"}
    assert_same_outputs(store, reference, engine)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=st.lists(st.tuples(st.lists(lines(CATALOG_APPS), max_size=30), st.booleans()), min_size=1, max_size=3))
def test_engines_agree_on_generated_malformed_lines(tmp_path_factory, files):
    store = make_feedback_store(tmp_path_factory.mktemp("generated"))
    for number, (texts, compress) in enumerate(files):
        store.deliver(texts + ['{"event_id": "anchor", "event_type": "click", "ts": "2026-02-25T00:00:00Z", '
                               '"app_id": "app-1", "campaign_id": "c", "partner_id": "p", "user_id": "u", '
                               '"clicked": true}'], arrival=WINDOW_END - timedelta(days=3, hours=number),
                      name=f"part-{number}", compress=compress)

    reference, engine = run_both(store)

    assert_same_outputs(store, reference, engine)
