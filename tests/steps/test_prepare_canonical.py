"""The matcher's layouts are the producers' lines, compiled from the pydantic models (the differential tests in
test_prepare_differential.py hold what it accepts to the reference)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from models.events import EVENT_TYPES, parse_line, prediction_record
from steps import prepare_canonical, prepare_sql
from tests.steps.conftest import at, click, conversion, prediction

REPO = Path(__file__).resolve().parents[2]


def _accepted(lines: list[bytes]) -> list[bool]:
    return prepare_canonical.canonical_table(0, b"".join(line + b"\n" for line in lines)).column("accepted").to_pylist()


def test_every_event_type_has_a_layout_that_matches_what_producers_write():
    events = [prediction("app-1", at(1)), click("u-1", "app-1", at(1)), conversion("u-1", "app-1", at(1), revenue=2.5)]
    assert [event.event_type for event in events] == list(EVENT_TYPES)
    lines = [orjson.dumps(event.to_json_dict()) for event in events]
    # serving's own prediction record (no pydantic on its hot path), with and without a predicted CTR
    record = prediction_record(event_id="e-1", ts=at(1), request_id="r", partner_id="p", app_id="new:1",
                               model_version=3, arm="challenger", neighbors=[], scores=[])
    lines += [orjson.dumps(record), orjson.dumps(record | {"predicted_ctr": 0.5})]
    assert _accepted(lines) == [True] * len(lines)
    table = prepare_canonical.canonical_table(0, lines[0] + b"\n")
    assert table.column("kind").to_pylist() == [EVENT_TYPES.index("prediction")]
    assert table.column("ts_us").to_pylist() == [round(at(1).timestamp() * 1_000_000)]


def test_the_layouts_follow_the_model_field_order():
    """A line with the same fields in another order is valid, but not the producers' text: not matched."""
    event = click("u-1", "app-1", at(1)).to_json_dict()
    reordered = dict(reversed(list(event.items())))
    assert _accepted([orjson.dumps(event), orjson.dumps(reordered)]) == [True, False]


@pytest.mark.parametrize("moment", ["2000-01-01T00:00:00.000000Z", "2024-02-29T23:59:59.999999Z",
                                    "2099-12-31T23:59:59Z", "2026-11-29T12:00:00+00:00"])
def test_timestamps_become_the_reference_microseconds(moment):
    line = orjson.dumps(click("u-1", "app-1", at(1)).to_json_dict() | {"ts": moment})
    table = prepare_canonical.canonical_table(0, line + b"\n")
    assert table.column("accepted").to_pylist() == [True]
    assert table.column("ts_us").to_pylist() == [prepare_sql.event_row(parse_line(line))[2]]


def test_a_field_rule_the_layouts_cannot_express_fails_loudly():
    """A schema change (here a new range on a number) must be taught to the matcher, not silently mis-checked."""
    revenue = next(rule for rule in prepare_sql.FIELD_RULES["conversion"] if rule.name == "revenue")
    with pytest.raises(ValueError, match="revenue"):
        prepare_canonical._value_op(dataclasses.replace(revenue, maximum=1000.0))
    with pytest.raises(ValueError, match="kind"):
        prepare_canonical._value_op(dataclasses.replace(revenue, kind="date"))


def test_an_empty_content_and_blank_lines():
    assert prepare_canonical.canonical_table(0, b"").num_rows == 0
    table = prepare_canonical.canonical_table(3, b"\n\r\n")
    assert table.column("line").to_pylist() == [1, 2]
    assert table.column("accepted").to_pylist() == [False, False]
    assert table.column("event_id").null_count == 2


def test_without_a_writable_cache_folder_the_matcher_still_loads_and_says_how_to_cache_it():
    """numba refuses ``cache=True`` when no cache folder is writable (a read-only install and home): simulated by
    keeping only numba's zip-archive locator, which never applies to a file on disk."""
    code = ("import numpy as np, warnings\nwarnings.simplefilter('always')\nfrom steps import prepare_canonical\n"
            "print(prepare_canonical._count_lines(np.frombuffer(b'a\\nb\\n', np.uint8)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert "no locator available" in done.stderr and "set NUMBA_CACHE_DIR to a writable folder" in done.stderr


def test_a_truncated_cache_file_is_rebuilt_with_a_warning_not_fatal(tmp_path):
    """numba writes its cache atomically, but a cut copy leaves a file it cannot unpickle: without the recovery every
    prepare failed on it. Shown on _count_lines, the matcher's cheapest function (the same path serves _match)."""
    code = ("import numpy as np, warnings\nwarnings.simplefilter('always')\nfrom steps import prepare_canonical as m\n"
            "m._recovering(m._count_lines, lambda: print(m._count_lines(np.frombuffer(b'a\\nb\\n', np.uint8))))")
    env = os.environ | {"NUMBA_CACHE_DIR": str(tmp_path)}

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr
        return done

    assert "rebuilding" not in run().stderr
    [index] = tmp_path.rglob("prepare_canonical._count_lines-*.nbi")
    index.write_bytes(index.read_bytes()[:20])
    rebuilt = run()
    assert "could not be read" in rebuilt.stderr and "rebuilding it" in rebuilt.stderr
    assert "rebuilding" not in run().stderr  # the rebuilt cache reads again
