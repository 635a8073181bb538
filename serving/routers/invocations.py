"""``POST /invocations``: SageMaker's hosting contract, in three body formats.

- JSON ``{"app_id", "k"}`` (one answer) or ``{"instances": [...], "k"}``, each instance an app id or
  ``{"app_id", "k"}`` (its own k, default the body's); CSV, one app id a line (first column). Answers
  log prediction events as ``/v1`` does (partner: the body's ``partner_id``, else the key's, else
  ``sagemaker``); an unknown app in a batch gets an error entry and the rest is answered.
- JSON Lines (Batch Transform): SageMaker splits an input file by line (``SplitType=Line``), posts
  mini-batches of lines with ``ContentType=application/jsonlines`` and joins the answers line by line
  (``AssembleWith=Line``), so every input line gets exactly one output line, in order. In:
  ``{"app_id": "app-00001", "k": 100}`` or just ``"app-00001"``; out: the row ``appsim neighbors
  export`` writes for that app (steps/export_neighbors.py) plus ``model_version`` and ``arm``; an
  unknown app gets ``{"app_id", "error": "unknown_app", "message"}`` so the output stays aligned with
  the input. A malformed line fails the request with a 422 naming the line (Batch Transform then
  reports the record), never a silently missing output line. Like the local export, it logs no
  prediction events: these are offline tables, not answers a partner acts on.

A batch is searched with one vectorised search per (arm, k); large ones on a worker thread, not the
event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from models.events import Identifier
from models.predictor import MAX_K, MIN_K, Neighbor, UnknownApp
from serving.answers import answer, log_prediction
from serving.dependencies import InvocationsPartner, Services, services
from serving.errors import AUTH_ERRORS, ApiError, responses
from serving.metrics import ARM_SCOPE_KEY
from serving.model_state import Arm, ServingState
from serving.schemas import (
    DEFAULT_K, INVOCATION_CSV_SCHEMA, INVOCATION_SCHEMA, MAX_INSTANCES, BatchResponse, OrjsonResponse, SimilarResponse,
    json_integer, similar_answer,
)
from steps.export_neighbors import neighbor_records

# Batches larger than this are searched on a worker thread, not the event loop.
INLINE_BATCH = 64
SAGEMAKER_PARTNER = "sagemaker"
CSV_TYPES = ("text/csv", "text/plain")
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
JSONLINES_MEDIA_TYPE = "application/jsonlines"

router = APIRouter(tags=["sagemaker"])


@dataclass(frozen=True)
class Invocation:
    """A parsed JSON or CSV body: (app id, k) per instance; ``single`` for the one-answer form."""

    single: bool
    requests: list[tuple[str, int]]
    partner_id: str | None = None  # when the body names one


@router.post("/invocations", response_model=SimilarResponse | BatchResponse,
             responses=responses(*AUTH_ERRORS, 404, 413, 415, 422, 503), openapi_extra={"requestBody": {
                 "required": True, "content": {
                     "application/json": {"schema": INVOCATION_SCHEMA, "example": {"app_id": "app-00001", "k": 10}},
                     # JSON Lines (Batch Transform) is left out: schemathesis cannot generate its bodies
                     "text/csv": {"schema": INVOCATION_CSV_SCHEMA, "example": "app-00001\napp-00002\n"}}}})
async def invocations(request: Request, key_partner: InvocationsPartner) -> Response:
    """Similar apps: JSON `{"app_id", "k"}` (one answer) or `{"instances": [...], "k"}` (each instance an app id or
    `{"app_id", "k"}`), or CSV with one app id a line. Prediction events are logged as for /v1 (partner: the body's
    partner_id, else the key's, else sagemaker). JSON Lines (Batch Transform) answers a bulk-export row per line."""
    svc = services(request)
    state = svc.state()
    body = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type in JSONLINES_TYPES:
        lines = parse_lines(body, MAX_INSTANCES)
        answer_text = await asyncio.to_thread(answer_lines, state, key_partner or SAGEMAKER_PARTNER, lines)
        return Response(answer_text, media_type=JSONLINES_MEDIA_TYPE)
    invocation = parse_invocation(body, content_type)
    partner_id = invocation.partner_id or key_partner or SAGEMAKER_PARTNER
    if invocation.single:
        ((app_id, k),) = invocation.requests
        return answer(request, svc, partner_id, app_id, "search", lambda predictor: predictor.similar(app_id, k), k=k)
    with svc.tracing.span("routing", instances=len(invocation.requests)):
        routed = [state.route(partner_id, app_id) for app_id, _ in invocation.requests]
    arm_names = {arm.name for arm in routed}
    request.scope[ARM_SCOPE_KEY] = arm_names.pop() if len(arm_names) == 1 else "mixed"
    request_id = uuid.uuid4().hex
    if len(routed) > INLINE_BATCH:
        predictions = await asyncio.to_thread(batch_similar, svc, request_id, partner_id, invocation.requests, routed)
    else:
        predictions = batch_similar(svc, request_id, partner_id, invocation.requests, routed)
    return OrjsonResponse({"request_id": request_id, "predictions": predictions})


# --- JSON and CSV bodies ------------------------------------------------------------------------
def parse_invocation(body: bytes, content_type: str) -> Invocation:
    """The instances of a JSON or CSV body, or ``ApiError`` naming the first bad field."""
    if content_type in CSV_TYPES:
        # One app id a line; a CSV row's first column is the id (extra columns are ignored).
        ids = [line.split(",")[0].strip().strip('"') for line in body.decode("utf-8", "replace").splitlines()]
        ids = [i for i in ids if i]
        return Invocation(False, [(app_id, DEFAULT_K) for app_id in check_instances(ids)])
    if content_type not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {content_type} is not supported; send application/json, text/csv or "
                       "application/jsonlines")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(422, "malformed_json", f"the body is not valid JSON: {error}", field="body") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", 'send {"app_id": ..., "k": 10} or {"instances": [...]}', field="body")
    k = checked_k(payload.get("k", DEFAULT_K), "k")
    partner_id = payload.get("partner_id")
    if partner_id is not None and not isinstance(partner_id, str):
        raise ApiError(422, "invalid_request", "partner_id must be a string", field="partner_id")
    partner_id = identifier(partner_id, "partner_id") if partner_id else None  # "" names no one
    if "instances" in payload:
        raw = payload["instances"]
        if not isinstance(raw, list):
            raise ApiError(422, "invalid_request", "instances must be a list of app ids or {\"app_id\": ...} objects",
                           field="instances")
        ids, ks = [], []
        for i, item in enumerate(raw):
            app_id = item.get("app_id") if isinstance(item, dict) else item
            if not isinstance(app_id, str) or not app_id:
                raise ApiError(422, "invalid_request", f"instances[{i}] must be an app id string or an object with "
                               "an app_id", field=f"instances[{i}]")
            ids.append(app_id)
            ks.append(checked_k(item["k"], f"instances[{i}].k") if isinstance(item, dict) and "k" in item else k)
        return Invocation(False, list(zip(check_instances(ids), ks)), partner_id)
    app_id = payload.get("app_id")
    if not isinstance(app_id, str) or not app_id:
        raise ApiError(422, "invalid_request", 'app_id is required: {"app_id": "...", "k": 10}', field="app_id")
    return Invocation(True, [(identifier(app_id, "app_id"), k)], partner_id)


def checked_k(value: Any, field: str, label: str | None = None) -> int:
    """``value`` as a k, checked as /v1 checks it (an integer from MIN_K to MAX_K; 10.0 is 10), else a 422
    naming ``field`` (``label``, if given, names it in the message)."""
    k = json_integer(value)
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise ApiError(422, "invalid_k", f"{label or field} must be an integer from {MIN_K} to {MAX_K}, got {value!r}",
                       field=field)
    return k


def check_instances(ids: list[str]) -> list[str]:
    if not ids:
        raise ApiError(422, "invalid_request", "no app ids in the request", field="instances")
    if len(ids) > MAX_INSTANCES:
        raise ApiError(413, "too_many_instances",
                       f"{len(ids)} instances in one request; send at most {MAX_INSTANCES} per request", field="instances")
    return [identifier(app_id, f"instances[{i}]") for i, app_id in enumerate(ids)]


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def identifier(value: Any, field: str) -> str:
    """``value`` as an event id field (models.events.Identifier), or a 422 naming the field and the problem."""
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError as error:
        raise ApiError(422, "invalid_request", f"{field}: {error.errors()[0]['msg']}", field=field) from None


# --- JSON Lines bodies ----------------------------------------------------------------------------
def parse_lines(body: bytes, max_lines: int) -> list[tuple[str, int]]:
    """(app id, k) per non-blank line, or ``ApiError`` 422 naming the first bad line."""
    requests = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ApiError(422, "malformed_json", f"line {number} is not JSON: {error}", field=f"line {number}") from None
        app_id, k = (item, DEFAULT_K) if isinstance(item, str) else (
            (item.get("app_id"), item.get("k", DEFAULT_K)) if isinstance(item, dict) else (None, None))
        if not isinstance(app_id, str) or not app_id:
            raise ApiError(422, "invalid_request", f'line {number} must be {{"app_id": "...", "k": 10}} or an app id '
                           'string', field=f"line {number}")
        requests.append((app_id, checked_k(k, f"line {number}", f"line {number}: k")))
    if not requests:
        raise ApiError(422, "invalid_request", "no lines in the request", field="body")
    if len(requests) > max_lines:
        raise ApiError(413, "too_many_instances", f"{len(requests)} lines in one request; send at most {max_lines} "
                       "(lower MaxPayloadInMB or set BatchStrategy=MultiRecord with smaller mini-batches)", field="body")
    return requests


# --- batch answers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Search:
    """One vectorised search: the batch rows asking ``arm`` for ``k`` neighbours, and their artifact rows."""

    arm: Arm
    k: int
    rows: list[int]
    positions: np.ndarray


def plan_searches(requests: Sequence[tuple[str, int]], routed: Sequence[Arm]
                  ) -> tuple[list[dict[str, Any] | None], list[Search]]:
    """An ``unknown_app`` entry for each app its arm's model does not know (the rest of the batch is
    answered), and one search per (arm, k) for the others."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    groups: dict[tuple[int, int], tuple[Arm, list[int]]] = {}
    for row, ((app_id, k), arm) in enumerate(zip(requests, routed)):
        positions = arm.model.predictor.artifact.positions
        if app_id in positions:
            groups.setdefault((id(arm), k), (arm, []))[1].append(row)
        else:
            answers[row] = {"app_id": app_id, "error": "unknown_app", "message": str(UnknownApp(app_id, len(positions)))}
    searches = []
    for (_, k), (arm, rows) in groups.items():
        positions = arm.model.predictor.artifact.positions
        searches.append(Search(arm, k, rows, np.array([positions[requests[row][0]] for row in rows], dtype=np.int64)))
    return answers, searches


def batch_similar(svc: Services, request_id: str, partner_id: str, requests: list[tuple[str, int]],
                  routed: list[Arm]) -> list[dict[str, Any]]:
    """The answers of a JSON or CSV batch, each logged as a prediction event."""
    answers, searches = plan_searches(requests, routed)
    for search in searches:
        app_ids = search.arm.model.predictor.artifact.app_ids
        found, scores = search.arm.model.predictor.similar_rows(search.positions, search.k)
        for row, row_found, row_scores in zip(search.rows, found, scores):
            app_id = requests[row][0]
            neighbors = [Neighbor(app_ids[p], float(s)) for p, s in zip(row_found, row_scores) if p >= 0]
            log_prediction(svc, request_id, partner_id, app_id, search.arm, neighbors)
            answers[row] = similar_answer(request_id, search.arm, app_id, neighbors)
    return answers  # type: ignore[return-value]


def answer_lines(state: ServingState, partner_id: str, requests: list[tuple[str, int]]) -> bytes:
    """One JSON line per request, in order: the bulk-export row of each app."""
    answers, searches = plan_searches(requests, [state.route(partner_id, app_id) for app_id, _ in requests])
    for search in searches:
        records = neighbor_records(search.arm.model.predictor, search.positions, search.k)
        for row, record in zip(search.rows, records):
            answers[row] = {**record, "model_version": search.arm.model.version, "arm": search.arm.name}
    return b"".join(orjson.dumps(answer) + b"\n" for answer in answers)
