"""``POST /v1/feedback``: click and conversion events from partners, acknowledged once durable.

The body is read by hand (one event or ``{"events": [...]}``) and every event is validated with
models/events.py, the boundary prepare reads with; the 202 is sent once the events are fsynced in
the local journal (serving/batcher.py), which forwards them to the sink.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from models.events import ClickEvent, ConversionEvent, InvalidEvent, format_ts, validate_event
from models.pseudonym import pseudonymize_event
from serving.batcher import JournalError
from serving.dependencies import KeyPartner, services
from serving.errors import AUTH_ERRORS, ApiError, responses
from serving.schemas import FeedbackResponse, OrjsonResponse, feedback_schema
from serving.sinks import encode_line

FEEDBACK_TYPES = ("click", "conversion")


def router(max_events: int) -> APIRouter:
    """The feedback route; built per app because its documented batch limit is a setting."""
    feedback_router = APIRouter(tags=["feedback"])
    feedback_router.add_api_route(
        "/v1/feedback", feedback, methods=["POST"], status_code=202, response_model=FeedbackResponse,
        responses=responses(*AUTH_ERRORS, 413, 422, 503),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": feedback_schema(max_events), "example": {"events": [
                {"event_type": "click", "app_id": "app-00001", "campaign_id": "c-1", "partner_id": "acme",
                 "user_id": "u-123", "clicked": True, "request_id": "9f1c...", "ts": "2026-01-31T12:00:00Z"}]}}}}})
    return feedback_router


async def feedback(request: Request, key_partner: KeyPartner) -> Response:
    """Click and conversion events: `{"events": [...]}` or one event object. `event_id` and `ts` are
    filled in when missing (send your own `event_id` so retries are de-duplicated). The 202 is sent
    once the events are on the server's disk (fsynced); after a 503 send them again with the same `event_id`s."""
    svc = services(request)
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise ApiError(422, "malformed_json", f"the body is not valid JSON: {error}", field="body") from None
    check_feedback_size(payload, svc.settings.feedback_max_events)
    events = validate_feedback(payload, key_partner)
    if svc.pseudonym_key is not None:  # before the journal: a raw user id never touches a disk
        events = [pseudonymize_event(event, svc.pseudonym_key) for event in events]
    if svc.batcher is None:
        raise ApiError(503, "feedback_disabled", "this server records no feedback (no store or APPSIM_FEEDBACK_URI)")
    try:
        with svc.tracing.span("event logging", events=len(events)):
            await svc.batcher.journal.commit([encode_line(e.to_json_dict()) for e in events],
                                             svc.settings.journal_timeout_seconds)
    except JournalError as error:
        raise ApiError(503, "not_recorded", f"{error}; the events are not acknowledged: retry with the same "
                       "event_ids (retries are de-duplicated by event_id)", headers={"Retry-After": "1"}) from None
    svc.metrics.record_feedback(events)
    return OrjsonResponse({"accepted": len(events), "event_ids": [e.event_id for e in events]}, status_code=202)


def check_feedback_size(payload: Any, max_events: int) -> None:
    """413 naming the limit for a batch that is too large ever to be accepted (retrying cannot help)."""
    if isinstance(payload, dict) and isinstance(payload.get("events"), list) and len(payload["events"]) > max_events:
        raise ApiError(413, "too_many_events", f"{len(payload['events']):,} events in one request; send at most "
                       f"{max_events:,} per request (split the batch)", field="events")


def validate_feedback(payload: Any, key_partner: str | None) -> list[ClickEvent | ConversionEvent]:
    """Click/conversion events from a feedback body, or ``ApiError`` 422 naming the event and field."""
    if isinstance(payload, dict) and "events" in payload:
        raw = payload["events"]
        if not isinstance(raw, list) or not raw:
            raise ApiError(422, "invalid_request", "events must be a non-empty list of event objects", field="events")
    else:
        raw = [payload]
    now = format_ts(datetime.now(timezone.utc))
    events = []
    for i, item in enumerate(raw):
        where = f"events[{i}]"
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_event", f"{where} must be a JSON object", field=where)
        if item.get("event_type") not in FEEDBACK_TYPES:
            raise ApiError(422, "invalid_event", f"{where}.event_type must be one of {', '.join(FEEDBACK_TYPES)} "
                           "(prediction events are logged by the server itself)", field=f"{where}.event_type")
        filled = {"event_id": uuid.uuid4().hex, "ts": now, **item}
        if key_partner and "partner_id" not in item:
            filled["partner_id"] = key_partner
        try:
            events.append(validate_event(filled))
        except InvalidEvent as error:
            raise ApiError(422, error.reason, f"{where}: {error.detail}", field=where) from None
    return events
