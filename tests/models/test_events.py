import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from models.events import (ClickEvent, ConversionEvent, InvalidEvent, PredictionEvent, parse_line, prediction_record,
                           validate_event)

CLICK = {
    "event_id": "e-1", "event_type": "click", "ts": "2026-03-01T10:00:00Z", "schema_version": 1,
    "app_id": "app-1", "campaign_id": "c-1", "partner_id": "p-1", "user_id": "u-1", "clicked": True,
}


def line(**changes):
    data = {**CLICK, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_valid_events_of_each_type_parse_to_their_class():
    assert isinstance(parse_line(line()), ClickEvent)
    conversion = {**CLICK, "event_type": "conversion", "converted": True, "revenue": 2.5}
    del conversion["clicked"]
    assert isinstance(parse_line(json.dumps(conversion)), ConversionEvent)
    prediction = {"event_id": "e-2", "event_type": "prediction", "ts": "2026-03-01T10:00:00+00:00",
                  "request_id": "r", "partner_id": "p", "app_id": "a", "model_version": 3, "arm": "champion",
                  "neighbors": ["b", "c"], "scores": [0.9, 0.8], "predicted_ctr": 0.02}
    event = parse_line(json.dumps(prediction))
    assert isinstance(event, PredictionEvent) and event.neighbors == ["b", "c"]


def test_timestamps_are_normalised_to_utc():
    event = parse_line(line(ts="2026-03-01T12:00:00+02:00"))
    assert event.ts.isoformat() == "2026-03-01T10:00:00+00:00"


@pytest.mark.parametrize(
    "raw, reason, mentions",
    [
        ('{"event_id": "e-1", "event_type": "cli', "malformed_json", "JSON"),
        ("[1, 2]", "malformed_json", "object"),
        (line(event_type="view"), "unknown_event_type", "prediction, click, conversion"),
        (line(user_id=...), "missing_field", "user_id"),
        (line(clicked="yes"), "invalid_field", "clicked"),
        (line(ts="yesterday"), "invalid_field", "ts"),
        (line(ts="2026-03-01T10:00:00"), "invalid_field", "timezone"),
        (line(schema_version=9), "invalid_field", "schema_version"),
        (line(app_id=""), "invalid_field", "app_id"),
    ],
)
def test_bad_lines_raise_with_a_reason_naming_the_problem(raw, reason, mentions):
    with pytest.raises(InvalidEvent) as caught:
        parse_line(raw)
    assert caught.value.reason == reason
    assert mentions in str(caught.value)


def test_negative_revenue_is_refused():
    with pytest.raises(InvalidEvent, match="revenue"):
        validate_event({**CLICK, "event_type": "conversion", "converted": True, "revenue": -1})


def test_json_round_trip_is_stable():
    event = parse_line(line())
    again = parse_line(json.dumps(event.to_json_dict()))
    assert again == event
    assert event.to_json_dict()["ts"].endswith("Z")


def test_extra_fields_from_newer_producers_are_tolerated():
    assert parse_line(line(new_field="x")).app_id == "app-1"


@pytest.mark.parametrize("predicted_ctr", [None, 0.0123])
def test_prediction_record_is_what_the_validated_model_dumps(predicted_ctr):
    fields = dict(event_id="e-1", ts=datetime(2026, 3, 1, 13, 5, 7, 120, tzinfo=timezone(timedelta(hours=2))),
                  request_id="r-1", partner_id="acme", app_id="app-1", model_version=3, arm="challenger",
                  neighbors=["app-2", "app-3"], scores=[0.9, 0.25], predicted_ctr=predicted_ctr)
    record = prediction_record(**fields)
    assert record == PredictionEvent(**fields).to_json_dict()
    assert record["ts"] == "2026-03-01T11:05:07.000120Z"
    assert parse_line(orjson.dumps(record)) == PredictionEvent(**fields)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"partner_id": "\ud800"}, "partner_id"),             # a lone surrogate no UTF-8 writer can encode
        ({"request_id": "r\udfff"}, "request_id"),            # also in optional ids
        ({"ts": "0001-01-01T00:00:00Z"}, "ts"),               # once stored as "1-01-01T..."
        ({"ts": "2100-01-01T00:00:00Z"}, "ts"),
        ({"app_id": "a" * 257}, "app_id"),
        ({"event_type": "conversion", "clicked": ..., "converted": True, "revenue": "Infinity"}, "revenue"),
        ({"event_type": "conversion", "clicked": ..., "converted": True, "revenue": float("nan")}, "revenue"),
    ],
)
def test_the_edge_refuses_what_no_writer_or_trainer_can_use(changes, field):
    """What the API accepts is what prepare accepts: both paths refuse these, naming the field."""
    data = {k: v for k, v in {**CLICK, **changes}.items() if v is not ...}
    with pytest.raises(InvalidEvent) as api:
        validate_event(data)
    assert api.value.reason == "invalid_field" and field in str(api.value)
    with pytest.raises(InvalidEvent):
        parse_line(json.dumps(data))


def test_the_bounds_themselves_are_accepted():
    assert parse_line(line(ts="2000-01-01T00:00:00Z")).ts.year == 2000
    assert len(validate_event({**CLICK, "app_id": "a" * 256}).app_id) == 256
