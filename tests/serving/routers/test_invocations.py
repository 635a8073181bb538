"""/invocations bodies: JSON (one app or instances, each with its own k), CSV and JSON Lines, and the
error that names the field for each bad one."""

import pytest

from serving.errors import ApiError
from serving.routers.invocations import Invocation, parse_invocation, parse_lines


def test_parse_invocation_forms():
    assert parse_invocation(b'{"app_id": "a", "k": 3}', "application/json") == Invocation(True, [("a", 3)])
    assert parse_invocation(b'{"instances": ["a", {"app_id": "b"}], "partner_id": "p"}', "application/json") == (
        Invocation(False, [("a", 10), ("b", 10)], "p"))
    assert parse_invocation(b'a\n\n"b",x\n', "text/csv") == Invocation(False, [("a", 10), ("b", 10)])


def test_an_instance_k_overrides_the_body_k():
    body = b'{"instances": [{"app_id": "a", "k": 3}, "b", {"app_id": "c"}, {"app_id": "d", "k": 7.0}], "k": 5}'
    assert parse_invocation(body, "application/json").requests == [("a", 3), ("b", 5), ("c", 5), ("d", 7)]


@pytest.mark.parametrize("body, content_type, status, field", [
    (b'{"app_id": "a", "k": 0}', "application/json", 422, "k"),
    (b'{"app_id": "a", "k": 101}', "application/json", 422, "k"),
    (b'{"k": 5}', "application/json", 422, "app_id"),
    (b'{"instances": [1]}', "application/json", 422, "instances[0]"),
    (b'{"instances": ["a", {"app_id": "b", "k": 101}]}', "application/json", 422, "instances[1].k"),
    (b'{"instances": [{"app_id": "a", "k": "5"}]}', "application/json", 422, "instances[0].k"),
    (b'{"instances": [{"app_id": "a", "k": true}]}', "application/json", 422, "instances[0].k"),
    (b'{"instances": [{"app_id": "a", "k": 2.5}]}', "application/json", 422, "instances[0].k"),
    (b'not json', "application/json", 422, "body"),
    (b'', "text/csv", 422, "instances"),
    (b'a', "application/x-npy", 415, None),
])
def test_parse_invocation_errors(body, content_type, status, field):
    with pytest.raises(ApiError) as caught:
        parse_invocation(body, content_type)
    assert caught.value.status == status and caught.value.field == field


def test_a_bad_instance_k_is_named_with_the_valid_range():
    with pytest.raises(ApiError) as caught:
        parse_invocation(b'{"instances": ["a", {"app_id": "b", "k": 0}]}', "application/json")
    assert caught.value.code == "invalid_k"
    assert caught.value.message == "instances[1].k must be an integer from 1 to 100, got 0"


def test_parse_lines():
    assert parse_lines(b'"a"\n\n{"app_id": "b", "k": 3}\n', 10) == [("a", 10), ("b", 3)]
    with pytest.raises(ApiError) as caught:
        parse_lines(b'"a"\n{"app_id": "b", "k": 0}\n', 10)
    assert caught.value.field == "line 2" and caught.value.message.startswith("line 2: k must be an integer from 1")
    with pytest.raises(ApiError) as caught:
        parse_lines(b'"a"\n"b"\n', 1)
    assert caught.value.status == 413
