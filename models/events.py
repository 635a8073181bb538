"""The feedback event schema: the one definition that serving, the simulator and prepare share.

Events arrive as one JSON object per line, in Firehose's layout
(``feedback/YYYY/MM/DD/HH/<name>[.gz]``). ``parse_line`` turns a line into a typed event or
raises ``InvalidEvent`` whose ``reason`` is a short machine-readable code and whose message names
the field and the problem, so prepare can quarantine it without losing it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

SCHEMA_VERSION = 1
EVENT_TYPES = ("prediction", "click", "conversion")
# Event times outside [TS_MIN, TS_MAX) are typos or clock faults (a year-1 ts once reached the store as
# "1-01-01T..."). Fixed bounds, not "now +- skew", so validation gives the same answer on every rerun.
TS_MIN = datetime(2000, 1, 1, tzinfo=timezone.utc)
TS_MAX = datetime(2100, 1, 1, tzinfo=timezone.utc)
MAX_ID_LENGTH = 256
MAX_EVENT_ID_LENGTH = 128
NOT_UNICODE = "contains a lone UTF-16 surrogate (e.g. \\ud800); send valid Unicode text"


def _utf8_encodable(value: str) -> str:
    # json.loads turns "\ud800" into a lone surrogate that no UTF-8 writer can encode: accepted
    # unchecked, it once killed serving's logging thread. Reject it where the event enters.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(NOT_UNICODE) from None
    return value


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_utf8_encodable)]
"""An id field (app, partner, user, campaign, request, arm): 1-256 characters of valid Unicode."""
EventId = Annotated[str, Field(min_length=1, max_length=MAX_EVENT_ID_LENGTH), AfterValidator(_utf8_encodable)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that is neither infinite nor NaN (JSON has no such numbers; "Infinity" strings are refused)."""


def parse_utc(text: str) -> datetime:
    """An ISO-8601 date-time as an aware UTC datetime; no offset means UTC (``Z`` accepted).

    Raises ValueError on anything else. For command-line and config values; event ``ts``
    is stricter (an offset is required), see ``_EventBase``.
    """
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def format_ts(moment: datetime) -> str:
    """An event ``ts`` as written everywhere events are produced: UTC, microseconds, a trailing Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class InvalidEvent(ValueError):
    """A feedback line that cannot be used; ``reason`` is a stable code for quarantine counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _EventBase(BaseModel):
    # Strict on types (a string "true" is not a bool) but tolerant of extra fields, so newer
    # producers that add fields do not get quarantined by an older pipeline.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    event_id: EventId
    ts: datetime
    schema_version: int = SCHEMA_VERSION

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: object) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            raise ValueError("ts must be an ISO-8601 string such as 2026-01-31T12:00:00Z")
        if parsed.tzinfo is None:
            raise ValueError("ts must carry a timezone (UTC, e.g. a trailing Z)")
        parsed = parsed.astimezone(timezone.utc)
        if not TS_MIN <= parsed < TS_MAX:
            raise ValueError(f"ts {value!s} is outside {TS_MIN.year}-01-01..{TS_MAX.year - 1}-12-31; "
                             "send the event's UTC time, e.g. 2026-01-31T12:00:00Z")
        return parsed

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SCHEMA_VERSION or value < 1:
            raise ValueError(f"schema_version {value} is not supported (this code reads 1..{SCHEMA_VERSION})")
        return value

    def to_json_dict(self) -> dict:
        data = self.model_dump(mode="json")
        data["ts"] = format_ts(self.ts)
        return data


class PredictionEvent(_EventBase):
    event_type: Literal["prediction"] = "prediction"
    request_id: Identifier
    partner_id: Identifier
    app_id: Identifier
    model_version: int
    arm: Identifier
    neighbors: list[Identifier]
    scores: list[FiniteFloat]
    predicted_ctr: Annotated[FiniteFloat, Field(ge=0, le=1)] | None = None


def prediction_record(*, event_id: str, ts: datetime, request_id: str, partner_id: str, app_id: str,
                      model_version: int, arm: str, neighbors: list[str], scores: list[float],
                      predicted_ctr: float | None = None) -> dict:
    """A prediction event as the JSON-ready dict ``PredictionEvent(...).to_json_dict()`` gives, without validating.

    Serving logs one per answer from values it made itself; building and dumping a pydantic model
    for each cost more than the rest of the logging. tests/models/test_events.py checks that the two
    agree and that the record parses back as a PredictionEvent.
    """
    return {"event_id": event_id, "ts": format_ts(ts),
            "schema_version": SCHEMA_VERSION, "event_type": "prediction", "request_id": request_id,
            "partner_id": partner_id, "app_id": app_id, "model_version": model_version, "arm": arm,
            "neighbors": neighbors, "scores": scores, "predicted_ctr": predicted_ctr}


class ClickEvent(_EventBase):
    """An ad impression and its outcome."""

    event_type: Literal["click"] = "click"
    app_id: Identifier
    campaign_id: Identifier
    partner_id: Identifier
    user_id: Identifier
    clicked: bool
    request_id: Identifier | None = None


class ConversionEvent(_EventBase):
    event_type: Literal["conversion"] = "conversion"
    app_id: Identifier
    campaign_id: Identifier
    partner_id: Identifier
    user_id: Identifier
    converted: bool
    revenue: Annotated[FiniteFloat, Field(ge=0)] = 0.0
    request_id: Identifier | None = None


FeedbackEvent = Annotated[Union[PredictionEvent, ClickEvent, ConversionEvent], Field(discriminator="event_type")]
_ADAPTER: TypeAdapter[FeedbackEvent] = TypeAdapter(FeedbackEvent)


def _reason_for(error: ValidationError) -> InvalidEvent:
    first = error.errors()[0]
    kind = first["type"]
    field = ".".join(str(p) for p in first["loc"][1:] or first["loc"]) or "event"
    if kind == "json_invalid":
        return InvalidEvent("malformed_json", f"line is not valid JSON ({first['msg']})")
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        return InvalidEvent("unknown_event_type", f"event_type must be one of {', '.join(EVENT_TYPES)}")
    if kind == "missing":
        return InvalidEvent("missing_field", f"required field '{field}' is missing")
    if not first["loc"]:
        return InvalidEvent("malformed_json", "line must be a JSON object, one event per line")
    return InvalidEvent("invalid_field", f"field '{field}': {first['msg']}")


def parse_line(line: str | bytes) -> PredictionEvent | ClickEvent | ConversionEvent:
    """Parse and validate one JSON line, raising ``InvalidEvent`` with a reason code."""
    try:
        return _ADAPTER.validate_json(line)
    except ValidationError as error:
        raise _reason_for(error) from None


def validate_event(data: dict) -> PredictionEvent | ClickEvent | ConversionEvent:
    """Validate an already-decoded event (an API body), raising ``InvalidEvent``. Strict as for a
    line: 1 or "true" is not a bool (the API documents JSON types, and keeps to them)."""
    try:
        return _ADAPTER.validate_python(data, strict=True)
    except ValidationError as error:
        raise _reason_for(error) from None
