"""The SQL fast path's field rules are models/events.py's, field by field."""

from __future__ import annotations

import types
import typing

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
