"""The SQL fast path's field rules are models/events.py's, field by field; the dedupe keeps the first copy of an id."""

from __future__ import annotations

import types
import typing

import duckdb
import numpy as np
import pytest

from models.events import MAX_EVENT_ID_LENGTH, MAX_ID_LENGTH
from steps import prepare_sql


def _constraints(info) -> dict[str, object]:
    """Every annotated-types constraint on a field, wherever pydantic keeps it (metadata, Annotated, a Union arm)."""
    found: dict[str, object] = {}
    pending = [*info.metadata, info.annotation]
    while pending:
        item = pending.pop()
        if hasattr(item, "metadata") and isinstance(item.metadata, list):  # a FieldInfo inside Annotated
            pending.extend(item.metadata)
        elif type(item).__name__ in ("Ge", "Le", "MaxLen", "MinLen"):
            found[type(item).__name__] = item
        pending.extend(typing.get_args(item))
        if typing.get_origin(item) is typing.Annotated:
            pending.extend(item.__metadata__)
    return found


def _allows_none(annotation: object) -> bool:
    return type(None) in typing.get_args(annotation) or (
        isinstance(annotation, types.UnionType) and type(None) in annotation.__args__)


@pytest.mark.parametrize("event_type", sorted(prepare_sql.FIELD_RULES))
def test_field_rules_match_the_pydantic_model(event_type):
    model = prepare_sql.EVENT_MODELS[event_type]
    rules = {rule.name: rule for rule in prepare_sql.FIELD_RULES[event_type]}
    fields = {name: info for name, info in model.model_fields.items() if name not in prepare_sql.COMMON_FIELDS}

    assert set(rules) == set(fields)
    for name, info in fields.items():
        rule = rules[name]
        assert rule.required == info.is_required(), name
        assert rule.nullable == _allows_none(info.annotation), name
        constraints = _constraints(info)
        if rule.kind in ("id", "id_list"):
            assert rule.max_length == constraints["MaxLen"].max_length == MAX_ID_LENGTH, name
            assert constraints["MinLen"].min_length == 1, name
        assert rule.minimum == (constraints["Ge"].ge if "Ge" in constraints else None), name
        assert rule.maximum == (constraints["Le"].le if "Le" in constraints else None), name


def test_common_fields_are_the_models_and_the_event_id_limit_is_theirs():
    for model in prepare_sql.EVENT_MODELS.values():
        assert set(prepare_sql.COMMON_FIELDS) <= set(model.model_fields)
    assert f"BETWEEN 1 AND {MAX_EVENT_ID_LENGTH}" in prepare_sql.typed_sql()


@pytest.mark.parametrize("id_bucket", ["hash(event_id)", "length(event_id)", "left(event_id, 0)"],
                         ids=["hash", "coarse", "one"])
def test_dedupe_keeps_the_first_copy_by_arrival_whatever_the_id_buckets_collide(id_bucket):
    """classified_sql orders only the rows whose id bucket repeats: buckets shared by many distinct ids (a coarse
    bucket, or one bucket for all) must give the same outcomes as the hash, and as a first-seen set in arrival
    order (the reference's rule)."""
    rng = np.random.default_rng(5)
    rows = [(int(source), int(line), f"e-{int(rng.integers(0, 400))}", 1, 10 + int(rng.integers(0, 80)), "app-1", "u",
             True, False, 0.0, None)
            for source, line in sorted({(int(rng.integers(0, 4)), int(rng.integers(1, 500))) for _ in range(300)})]
    con = duckdb.connect()
    con.execute("CREATE TABLE events (source INTEGER, line BIGINT, event_id VARCHAR, kind TINYINT, ts_us BIGINT, "
                "app_id VARCHAR, user_id VARCHAR, positive BOOLEAN, attributed BOOLEAN, revenue DOUBLE, raw VARCHAR)")
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("CREATE TABLE catalog AS SELECT 'app-1' AS app_id")

    sql = prepare_sql.classified_sql(20, 80, 60, "events", "catalog", id_bucket=id_bucket)
    outcomes = dict(((source, line), prepare_sql.OUTCOMES[outcome]) for source, line, outcome in
                    con.execute(f"SELECT source, line, outcome FROM ({sql})").fetchall())

    seen: set[str] = set()
    expected = {}
    for source, line, event_id, _, ts_us, *_ in rows:  # rows are in arrival order
        expected[(source, line)] = ("duplicate" if event_id in seen else "before_window" if ts_us < 20
                                    else "after_window" if ts_us >= 80 else "good")
        seen.add(event_id)
    assert outcomes == expected
    assert 0 < sum(outcome == "duplicate" for outcome in expected.values()) < len(rows) / 2
