"""Hypothesis strategies for feedback lines: valid events in every JSON spelling, and the ways producers break them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

from models.events import EVENT_TYPES

# Ids: mostly plain, sometimes with escapes-to-be, quotes, non-ASCII (combining marks, astral), or too long.
_id_text = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-:_", min_size=1, max_size=12),
    st.text(min_size=0, max_size=8),
    st.sampled_from(["", " ", "new:3f2a", "é", "e\u0301", "🇫🇷", "\"quoted\"", "back\\slash", "tab\t", "x" * 256,
                     "x" * 257, "y" * 128, "y" * 129, "\u2028", "\ufffd", "\ud800", "a\udc00b"]),
)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_number = st.one_of(_finite, st.integers(min_value=-(2 ** 70), max_value=2 ** 70), st.sampled_from([0, -0.0, 1, 0.5]))
_json_scalar = st.one_of(st.none(), st.booleans(), _number, _id_text)
_json_value = st.recursive(_json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(_id_text, inner, max_size=3)),
                           max_leaves=6)


WINDOW_END = datetime(2026, 3, 1)  # tests/steps/conftest.py's


@st.composite
def timestamps(draw) -> str | object:
    """Mostly around WINDOW_END (so events land in and out of a 10-day window), sometimes anywhere, in many spellings."""
    near = st.datetimes(min_value=WINDOW_END - timedelta(days=12), max_value=WINDOW_END + timedelta(days=1),
                        timezones=st.just(timezone.utc))
    anywhere = st.datetimes(min_value=datetime(1999, 12, 31), max_value=datetime(2100, 1, 2),
                            timezones=st.just(timezone.utc))
    moment = draw(st.one_of(near, near, near, anywhere))
    spelling = draw(st.sampled_from(["micros_z", "micros_z", "micros_z", "seconds_z", "offset0", "offset1", "naive", "millis_z", "space",
                                     "garbage", "number"]))
    if spelling == "micros_z":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if spelling == "seconds_z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if spelling == "offset0":
        return moment.isoformat()
    if spelling == "offset1":
        return moment.astimezone(timezone(timedelta(hours=1))).isoformat()
    if spelling == "naive":
        return moment.replace(tzinfo=None).isoformat()
    if spelling == "millis_z":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if spelling == "space":
        return moment.strftime("%Y-%m-%d %H:%M:%S.%fZ")
    if spelling == "number":
        return int(moment.timestamp())
    return draw(st.sampled_from(["2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "yesterday",
                                 "2026-13-01T00:00:00Z", "２０２６-01-01T00:00:00Z"]))


@st.composite
def events(draw, app_ids: tuple[str, ...]) -> dict:
    """An event as a producer would build it: valid most of the time (apps mostly from ``app_ids``)."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    app = draw(st.one_of(st.sampled_from(app_ids), st.just("new:" + draw(_id_text)), _id_text))
    event: dict = {"event_id": draw(st.one_of(st.sampled_from([f"e{i}" for i in range(6)]), _id_text)),
                   "event_type": kind, "ts": draw(timestamps())}
    if draw(st.booleans()):
        event["schema_version"] = draw(st.sampled_from([1, 1, 2, 0, "1", 1.0, None, True]))
    if kind == "prediction":
        event |= {"request_id": draw(_id_text), "partner_id": draw(_id_text), "app_id": app,
                  "model_version": draw(st.sampled_from([1, 2, 2 ** 64, -3, 1.0, "3"])), "arm": draw(_id_text),
                  "neighbors": draw(st.lists(_id_text, max_size=4)), "scores": draw(st.lists(_number, max_size=4))}
        if draw(st.booleans()):
            event["predicted_ctr"] = draw(st.one_of(st.none(), _number))
    else:
        outcome = "clicked" if kind == "click" else "converted"
        event |= {"app_id": app, "campaign_id": draw(_id_text), "partner_id": draw(_id_text),
                  "user_id": draw(st.sampled_from(["u1", "u2", "u3"])), outcome: draw(st.booleans())}
        if draw(st.booleans()):
            event["request_id"] = draw(st.one_of(st.none(), _id_text))
        if kind == "conversion" and draw(st.booleans()):
            event["revenue"] = draw(_number)
    return event


@st.composite
def lines(draw, app_ids: tuple[str, ...]) -> str:
    """One feedback line: a (maybe broken) event in one of JSON's spellings, or a broken text."""
    event = draw(events(app_ids))
    mutation = draw(st.sampled_from(["none", "none", "drop", "retype", "extra", "duplicate_key", "truncate",
                                     "trailing_comma", "nan", "event_type", "not_object", "bom"]))
    keys = list(event)
    if mutation == "drop":
        del event[draw(st.sampled_from(keys))]
    elif mutation == "retype":
        event[draw(st.sampled_from(keys))] = draw(_json_value)
    elif mutation == "extra":
        event[draw(_id_text)] = draw(_json_value)
    elif mutation == "event_type":
        event["event_type"] = draw(st.one_of(_json_scalar, st.sampled_from(["Click", "impression"])))
    text = json.dumps(event, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")])))
    if mutation == "duplicate_key":
        key = draw(st.sampled_from(keys))
        text = text[:-1] + f', {json.dumps(key)}: {json.dumps(draw(_json_value))}' + "}"
    elif mutation == "truncate":
        text = text[:draw(st.integers(0, max(0, len(text) - 1)))]
    elif mutation == "trailing_comma":
        text = text[:-1] + ",}"
    elif mutation == "nan":
        text = text[:-1] + draw(st.sampled_from([', "x": NaN}', ', "x": -Infinity}', ', "x": nan}', ', "x": inf}',
                                                 ', "x": +1}', ', "x": 01}', ', "x": .5}']))
    elif mutation == "not_object":
        text = json.dumps([event]) if draw(st.booleans()) else draw(st.sampled_from(["", " ", "null", "1", '"x"']))
    elif mutation == "bom":
        text = "\ufeff" + text
    return text
