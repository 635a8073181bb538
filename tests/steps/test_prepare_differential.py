"""The DuckDB engine against the pure-Python reference (the oracle): same counts, same reason for every bad
line, byte-identical outputs; and the SQL fast path never accepts a line the reference refuses."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

import duckdb
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import dataset
from models.events import InvalidEvent, parse_line, prediction_record
from pipelines.simulators.marketplace import simulate
from steps import prepare, prepare_duckdb, prepare_sql
from steps.prepare_io import read_file, split_lines
from tests.steps.conftest import CATALOG_APPS, WINDOW_END, at, click, conversion, make_feedback_store, prediction
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


_SCANNED = (f"SELECT line, accepted, event_id, kind, ts_us, app_id, user_id, positive, attributed, revenue "
            f"FROM ({{scanned}}) ORDER BY line")


def scanner_path(texts: list[str], folder: Path, threads: int = 1) -> list[tuple] | None:
    """scanned_sql() over the lines, read from a file as the engine reads them:
    (line, accepted, event_id, kind, ts_us, app_id, user_id, positive, attributed, revenue); None where the
    engine would cut the lines with Arrow instead (the scans do not give one row per line)."""
    path = folder / "unit.jsonl"
    path.write_bytes("".join(text + "\n" for text in texts).encode())
    connection = duckdb.connect(config={"threads": threads, "preserve_insertion_order": True,
                                        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
    connection.register("catalog", pa.table({"app_id": list(CATALOG_APPS)}))
    scanned = prepare_sql.scanned_sql(prepare_duckdb._scan_relation(str(path), 0, len(texts)))
    try:
        rows = connection.execute(_SCANNED.format(scanned=scanned)).fetchall()
    except duckdb.Error:
        return None
    finally:
        connection.close()
    return rows if len(rows) == len(texts) else None


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


def _orjson_spelling(text: str) -> str | None:
    """The line re-written as producers write it (orjson, the generated key order): mostly canonical lines."""
    try:
        return orjson.dumps(json.loads(text)).decode()
    except (ValueError, TypeError):
        return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(lines(CATALOG_APPS), min_size=1, max_size=30))
def test_the_scanner_path_accepts_only_valid_lines_and_extracts_the_reference_values(tmp_path, batch):
    texts = [text for text in batch if _utf8(text) and "\n" not in text and "\r" not in text]
    texts += [spelled for spelled in map(_orjson_spelling, texts) if spelled is not None and "\r" not in spelled]
    if not texts:
        return
    rows = scanner_path(texts, tmp_path)
    if rows is None:  # e.g. a leading empty line, which the CSV scanner skips: the engine cuts these with Arrow
        return
    assert [line for line, *_ in rows] == list(range(1, len(texts) + 1))
    for text, (_, accepted, *extracted) in zip(texts, rows, strict=True):
        if accepted:
            assert reference_row(text) == tuple(extracted), text


def test_the_scanner_path_accepts_canonical_lines_and_refuses_their_lenient_cousins(tmp_path):
    events = [click("u-1", "app-1", at(2)), conversion("u-2", "app-7", at(3), revenue=4.99, request_id="r-1"),
              prediction("new:3f2a", at(1))]
    canonical = [orjson.dumps(event.to_json_dict()).decode() for event in events]
    canonical.append(canonical[0].replace(".000000Z", "Z"))  # the ts is text: any spelling the pattern allows
    cousins = [
        canonical[0].replace('"clicked":true', '"clicked":"true"'),  # the scanner reads "true" as a boolean
        canonical[0].replace('"clicked":true', '"clicked":1'),
        canonical[0][:-1] + ',"app_id":"app-2"}',  # a duplicate key (the scanner reads the first, pydantic the last)
        canonical[0][:-1] + ',"extra":NaN}',  # an extra field pydantic ignores but cannot parse
        canonical[1].replace('"revenue":4.99', '"revenue":NaN'),
        canonical[1].replace('"revenue":4.99', '"revenue":"4.99"'),
        canonical[0].replace('"schema_version":1', '"schema_version":1.0'),
        canonical[0].replace('"user_id":"u-1"', '"user_id":"u\\u002d1"'),  # an escape: same value, other text
        canonical[0].replace(",", ", "),  # valid, but not the producers' text: left to typed_sql
        " " + canonical[0],
        # The values are read as their JSON text: each of these is the text of another value or type.
        canonical[0].replace('"clicked":true', '"clicked":null'),
        canonical[0].replace('"request_id":null', '"request_id":""'),
        canonical[0].replace('"user_id":"u-1"', '"user_id":"u\t1"'),  # a raw control character in a string
        canonical[1].replace('"revenue":4.99', '"revenue":1e400'),  # a finite-looking spelling of infinity
        canonical[1].replace('"revenue":4.99', '"revenue":499e-2'),
        canonical[1].replace('"revenue":4.99', '"revenue":-4.99'),
        canonical[2].replace('"model_version":1', '"model_version":1.0'),
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":1.5'),
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":"0.03"'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,1e400]'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,null]'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,"0.8"]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', '"neighbors":["app-1",""]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', '"neighbors":["app-1",2]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', f'"neighbors":["app-1","{"x" * 257}"]'),
    ]
    assert all(cousin not in canonical for cousin in cousins)
    folder = tmp_path / "spill's"  # a quote in the work folder's path: the file name is an SQL literal
    folder.mkdir()
    rows = scanner_path(canonical + cousins, folder)
    assert [accepted for _, accepted, *_ in rows] == [True] * len(canonical) + [False] * len(cousins)
    assert [tuple(extracted) for _, _, *extracted in rows[:4]] == [reference_row(text) for text in canonical]


def test_the_scanner_path_refuses_a_line_paired_with_its_neighbours_values(tmp_path):
    """A blank line, which the JSON scanner skips, pairs each later line with the next line's values. A line whose
    text is the canonical text of its neighbour's values, but where one value holds quotes from escapes, reads as
    other keys and values: it must not be accepted with the neighbour's values."""
    escaped = orjson.dumps(click("u-1", "app-1", at(2), event_id='a","x":"b').to_json_dict()).decode()
    assert '\\"' in escaped
    forged = escaped.replace('\\"', '"')  # valid JSON: event_id "a" and an extra key "x"
    assert reference_row(forged)[0] == "a"
    rows = scanner_path(["   ", forged, escaped], tmp_path)
    assert [(line, accepted) for line, accepted, *_ in rows] == [(1, False), (2, False), (3, False)]


def test_on_a_large_file_read_by_several_threads_both_scans_keep_pythons_lines(tmp_path):
    """The scans are paired by position and numbered by row_number() OVER (): on a file of many DuckDB blocks read
    with several threads, row n holds Python's line n, and every good line is proven (but the one after a broken
    line, which the JSON scanner may read as the rest of it: that line goes on to typed_sql)."""
    template = orjson.dumps(click("u", "app-1", at(2)).to_json_dict()).decode()
    texts = [template.replace('"event_id":"', f'"event_id":"n{n}-', 1) for n in range(1, 300_001)]
    bad = {7, 65_537, 150_001, 299_999}
    for n in bad:
        texts[n - 1] = '{"event_id": "broken", "event_type": "click", "ts": '
    rows = scanner_path(texts, tmp_path, threads=4)
    assert rows is not None
    python_lines = split_lines((tmp_path / "unit.jsonl").read_bytes())
    assert [line for line, *_ in rows] == list(range(1, len(python_lines) + 1))
    accepted = {line for line, is_accepted, *_ in rows if is_accepted}
    assert not accepted & bad and set(range(1, len(texts) + 1)) - accepted <= bad | {n + 1 for n in bad}
    for line, _, event_id, *_ in rows:
        if line in accepted:
            assert python_lines[line - 1].startswith(f'{{"event_id":"{event_id}"'.encode()), line


@pytest.mark.parametrize("body", [
    pytest.param(b"\r\n", id="crlf"),
    pytest.param(b"\n\n", id="empty-lines"),
    pytest.param(None, id="leading-empty-line"),
    pytest.param(b"\n   \n", id="blank-line"),
    pytest.param(b"\r", id="lone-cr"),
    pytest.param(b"\x01\n", id="delimiter-byte"),
    pytest.param(b"\n\x02\n", id="null-string-byte"),
    pytest.param(b"\n\xff\xfe\n", id="not-utf8"),
    pytest.param(b"\n" + b'{"event_id":"' + b"x" * (3 << 20) + b'"}\n', id="line-over-the-csv-limit"),
])
def test_engines_agree_on_files_the_csv_scanner_cannot_cut_like_python(tmp_path, body):
    store = make_feedback_store(tmp_path)
    events = [click(f"u-{n}", "app-1", at(2, hours=n / 10)) for n in range(20)] + [prediction("new:1", at(2))]
    lines = [orjson.dumps(event.to_json_dict()) for event in events]
    content = b"\n" + b"\n".join(lines) if body is None else b"\n".join(lines[:10]) + body + b"\n".join(lines[10:])
    for name, data in (("bom", b"\xef\xbb\xbf" + content), ("odd", content), ("last-line-unended", content.rstrip(b"\n"))):
        folder = Path(store.feedback) / "2026" / "02" / "27" / "00"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))

    reference, engine = run_both(store)

    assert engine["counts"]["good"] > 0
    assert_same_outputs(store, reference, engine)


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
