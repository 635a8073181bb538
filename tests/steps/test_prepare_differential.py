"""The DuckDB engine against the pure-Python reference (the oracle): same counts, same reason for every bad
line, byte-identical outputs; and the SQL fast path never accepts a line the reference refuses."""

from __future__ import annotations

import gzip
import json
import random
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
from steps import prepare, prepare_canonical, prepare_sql
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


def matcher_path(texts: list[str]) -> list[tuple]:
    """prepare_canonical.canonical_table() over the lines, ended by newlines as the engine joins them:
    (line, accepted, event_id, kind, ts_us, app_id, user_id, positive, attributed, revenue, raw)."""
    table = prepare_canonical.canonical_table(7, "".join(text + "\n" for text in texts).encode())
    assert table.column("source").to_pylist() == [7] * len(texts)
    return list(zip(*(table.column(name).to_pylist() for name in ("line", "accepted", "event_id", "kind", "ts_us",
                                                                    "app_id", "user_id", "positive", "attributed",
                                                                    "revenue", "raw"))))


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines(CATALOG_APPS), min_size=1, max_size=30))
def test_the_matcher_accepts_only_valid_lines_and_extracts_the_reference_values(batch):
    texts = [text for text in batch if _utf8(text) and "\n" not in text]
    texts += [spelled for spelled in map(_orjson_spelling, texts) if spelled is not None]  # mostly canonical lines
    if not texts:
        return
    rows = matcher_path(texts)
    assert [line for line, *_ in rows] == list(range(1, len(texts) + 1))
    assert [raw.rstrip("\r\n") for *_, raw in rows] == [text.rstrip("\r") for text in texts]
    for text, (_, accepted, *extracted, _) in zip(texts, rows, strict=True):
        if accepted:
            assert reference_row(text) == tuple(extracted), text


def test_the_matcher_accepts_canonical_lines_and_refuses_their_lenient_cousins():
    events = [click("u-1", "app-1", at(2)), conversion("u-2", "app-7", at(3), revenue=4.99, request_id="r-1"),
              prediction("new:3f2a", at(1))]
    canonical = [orjson.dumps(event.to_json_dict()).decode() for event in events]
    canonical.append(canonical[0].replace(".000000Z", "Z"))  # the ts spellings the layout allows
    canonical.append(canonical[1].replace(".000000Z", "+00:00"))
    canonical.append(canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":3e-2'))
    canonical.append(canonical[0].replace('"user_id":"u-1"', '"user_id":"ü 🇫🇷"') + "\r")  # split_lines drops \r
    escaped = orjson.dumps(click("u-1", "app-1", at(2), event_id='a","x":"b').to_json_dict()).decode()
    cousins = [
        canonical[0].replace('"clicked":true', '"clicked":"true"'),
        canonical[0].replace('"clicked":true', '"clicked":1'),
        canonical[0][:-1] + ',"app_id":"app-2"}',  # a duplicate key (pydantic reads the last)
        canonical[0][:-1] + ',"extra":NaN}',  # an extra field pydantic ignores but cannot parse
        canonical[0][:-1] + ',"extra":1}',  # valid, but not the producers' text: left to typed_sql
        canonical[1].replace('"revenue":4.99', '"revenue":NaN'),
        canonical[1].replace('"revenue":4.99', '"revenue":"4.99"'),
        canonical[0].replace('"schema_version":1', '"schema_version":1.0'),
        canonical[0].replace('"schema_version":1', '"schema_version":2'),
        canonical[0].replace('"schema_version":1', '"schema_version":01'),
        canonical[0].replace('"user_id":"u-1"', '"user_id":"u\\u002d1"'),  # an escape: same value, other text
        canonical[0].replace(",", ", "),
        " " + canonical[0],
        canonical[0] + " ",
        canonical[0].replace('"clicked":true', '"clicked":null'),
        canonical[0].replace('"clicked":true', '"clicked":tru'),
        canonical[0].replace('"request_id":null', '"request_id":""'),
        canonical[0].replace('"request_id":null', '"request_id":nul'),
        canonical[0].replace('"user_id":"u-1"', '"user_id":"u\t1"'),  # a raw control character in a string
        canonical[0].replace('"user_id":"u-1"', '"user_id":"u\x7f1\x001"'),
        canonical[0].replace('"user_id":"u-1"', f'"user_id":"{"é" * 257}"'),  # 257 characters, 514 bytes
        canonical[0].replace(at(2).strftime("%Y-%m-%d"), "2026-02-29"),  # no such day
        canonical[0].replace(at(2).strftime("%Y-%m-%d"), "1999-12-31"),
        canonical[0].replace(".000000Z", ".000Z"),
        canonical[0].replace(".000000Z", "+01:00"),
        canonical[0].replace(".000000Z", ""),
        canonical[1].replace('"revenue":4.99', '"revenue":1e400'),  # a finite-looking spelling of infinity
        canonical[1].replace('"revenue":4.99', '"revenue":-4.99'),
        canonical[1].replace('"revenue":4.99', '"revenue":-0.0'),  # valid (-0.0 >= 0), but left to the other paths
        canonical[1].replace('"revenue":4.99', '"revenue":04.99'),
        canonical[1].replace('"revenue":4.99', '"revenue":4.'),
        canonical[1].replace('"revenue":4.99', '"revenue":.99'),
        canonical[2].replace('"model_version":1', '"model_version":1.0'),
        canonical[2].replace('"model_version":1', '"model_version":1' + "0" * 19),
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":1.5'),
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":1.0000000000000001'),  # 1.0 as a double
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":9e-0'),
        canonical[2].replace('"predicted_ctr":0.03', '"predicted_ctr":"0.03"'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,1e400]'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,null]'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,"0.8"]'),
        canonical[2].replace('"scores":[0.9,0.8]', '"scores":[0.9,]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', '"neighbors":["app-1",""]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', '"neighbors":["app-1",2]'),
        canonical[2].replace('"neighbors":["app-1","app-2"]', f'"neighbors":["app-1","{"x" * 257}"]'),
        escaped, escaped.replace('\\"', '"'),  # an escaped quote, and the valid line with an extra key it spells
        canonical[0][:-1],  # truncated
        "",
    ]
    assert all(cousin not in canonical for cousin in cousins)
    rows = matcher_path(canonical + cousins)
    assert [accepted for _, accepted, *_ in rows] == [True] * len(canonical) + [False] * len(cousins)
    assert [tuple(extracted) for _, _, *extracted, _ in rows[:len(canonical)]] == [
        reference_row(text.rstrip("\r")) for text in canonical]
    # A valid line in another layout is left to typed_sql, which reads any.
    spaced = canonical[0].replace(",", ", ")
    assert spaced in cousins and fast_path([spaced])[0][1:] == reference_row(spaced)


def test_byte_mutations_of_producers_lines_the_matcher_accepts_are_valid_with_the_reference_values():
    """Random bytes replaced, inserted and deleted in canonical lines (JSON's punctuation, digits, letters of true,
    false, null, exponents and timestamps, escapes, control bytes, non-ASCII): each line the matcher accepts, the
    reference accepts with the same values. (A run of 285K such lines found no difference.)"""
    events = [click("u-1", "app-1", at(2)), conversion("u-2", "app-7", at(3), revenue=4.99, request_id="r-1"),
              prediction("new:3f2a", at(1))]
    canonical = [orjson.dumps(event.to_json_dict()) for event in events]
    alphabet = b'{}[]",:0123456789.eE+-tfnulrTZ \\\x00\x1f\x7f\xc3\xa9ax'
    rng = random.Random(7)
    texts = []
    while len(texts) < 20_000:
        line = bytearray(rng.choice(canonical))
        for _ in range(rng.choice((1, 1, 2, 3))):
            at_ = rng.randrange(len(line))
            change = rng.random()
            if change < 0.4:
                line[at_] = rng.choice(alphabet)
            elif change < 0.7:
                line[at_:at_] = bytes([rng.choice(alphabet)])
            else:
                del line[at_]
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "\n" not in text:
            texts.append(text)
    rows = matcher_path(texts)
    accepted = [(text, tuple(extracted)) for text, (_, is_accepted, *extracted, _) in zip(texts, rows) if is_accepted]
    assert len(accepted) > 1_000  # mutations that keep a line valid and canonical (a digit of an id, a letter)
    assert [reference_row(text.rstrip("\r")) for text, _ in accepted] == [values for _, values in accepted]


def test_on_a_large_content_the_matcher_keeps_pythons_lines():
    """Line n of the table is Python's line n of the content, whatever the lines around it (bad, blank, long)."""
    template = orjson.dumps(click("u", "app-1", at(2)).to_json_dict()).decode()
    texts = [template.replace('"event_id":"', f'"event_id":"n{n}-', 1) for n in range(1, 100_001)]
    bad = {7: '{"event_id": "broken", "event_type": "click", "ts": ', 65_537: "", 70_000: "   ", 99_999: "x" * 100_000,
           99_998: "\r\r"}
    for n, text in bad.items():
        texts[n - 1] = text
    content = "".join(text + "\n" for text in texts).encode()
    table = prepare_canonical.canonical_table(0, content)
    python_lines = split_lines(content)
    assert table.column("line").to_pylist() == list(range(1, len(python_lines) + 1))
    assert [raw.rstrip("\r\n").encode() for raw in table.column("raw").to_pylist()] == python_lines
    accepted = table.column("accepted").to_pylist()
    assert [n for n, is_accepted in enumerate(accepted, start=1) if not is_accepted] == sorted(bad)
    event_ids = table.column("event_id").to_pylist()
    assert all(event_ids[n - 1].startswith(f"n{n}-") for n in range(1, len(texts) + 1) if n not in bad)


@pytest.mark.parametrize("body", [
    pytest.param(b"\r\n", id="crlf"),
    pytest.param(b"\n\n", id="empty-lines"),
    pytest.param(None, id="leading-empty-line"),
    pytest.param(b"\n   \n", id="blank-line"),
    pytest.param(b"\r", id="lone-cr"),
    pytest.param(b"\x01\n", id="control-byte"),
    pytest.param(b"\n\x02\n", id="control-byte-line"),
    pytest.param(b"\n\xff\xfe\n", id="not-utf8"),
    pytest.param(b"\n" + b'{"event_id":"' + b"x" * (3 << 20) + b'"}\n', id="a-3-mb-line"),
])
def test_engines_agree_on_odd_line_breaks_bytes_and_encodings(tmp_path, body):
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
