"""The serving app: FastAPI on the SageMaker hosting contract plus the partner API (/v1).

- ``GET /ping`` (200 once a model is loaded, else 503) and ``POST /invocations`` (JSON or CSV)
  are SageMaker's container contract; ``/v1/...`` is the partner API (API keys, rate limits).
  With keys configured ``/invocations`` needs one too, unless the server runs in SageMaker mode
  (``APPSIM_SAGEMAKER_MODE``: the endpoint's IAM auth is in front of it).
- Every route documents its answers with response models (the OpenAPI schema is checked by
  schemathesis in the tests); answers are built as plain dicts and sent with orjson.
- Handlers are async and answer with orjson; a FAISS search is well under a millisecond up to
  1M apps (exact index to ~100K, HNSW/IVF above), so it runs inline on the event loop rather
  than paying a thread hop; large ``/invocations`` batches go to a thread.
- Every similar/predict answer carries ``request_id``, ``arm`` and ``model_version`` and
  logs a prediction event through the background batcher (``serving/batcher.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, AsyncIterator, Literal

import faiss
import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from models.events import (
    MAX_EVENT_ID_LENGTH, MAX_ID_LENGTH, NOT_UNICODE, SCHEMA_VERSION, Identifier, InvalidEvent, format_ts,
    prediction_record, validate_event,
)
from models.features import METADATA_FIELDS, MetadataError
from models.predictor import MAX_K, MIN_K, Neighbor, PerformancePrediction, UnknownApp
from models.pseudonym import PseudonymKey, load_key, pseudonymize_event
from serving import jsonlines
from serving.batcher import EventBatcher, JournalError, SpillDir
from serving.metrics import ARM_SCOPE_KEY, MetricsMiddleware, ServingMetrics
from serving.model_state import Arm, LoadedModel, ModelManager, ServingState
from serving.security import ApiError, ApiKeys, RateLimiter, open_bucket_store
from serving.settings import ServingSettings, SettingsError, settings_from_env
from serving.sink_backends import open_sink
from serving.sinks import FeedbackSink, encode_line
from serving.tracing import SpanExporter, Tracing, TracingMiddleware

log = logging.getLogger("appsim.serving")

DEFAULT_K = 10
MAX_INSTANCES = 10_000
# /invocations batches larger than this are searched on a worker thread, not the event loop.
INLINE_BATCH = 64
FEEDBACK_TYPES = ("click", "conversion")
ANONYMOUS_PARTNER = "anonymous"
SAGEMAKER_PARTNER = "sagemaker"


class OrjsonResponse(JSONResponse):
    """JSON by orjson. A JSONResponse, so that FastAPI documents each route's response model
    (with a plain Response every 2xx was documented as a string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# --- request and response models (they document the API; answers are built as plain dicts) --
def _json_integer(value: Any) -> Any:
    """JSON Schema counts 97.0 as an integer: take it as 97 (strict validation refuses "97" and true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# What "given" means for each metadata field, as the encoder checks it (models.features): a string
# with a non-blank character, a non-empty list, a number. The schema says "at least one given".
_GIVEN = {"category": {"type": "string", "pattern": r"\S"}, "region": {"type": "string", "pattern": r"\S"},
          "pricing_model": {"type": "string", "pattern": r"\S"}, "features": {"type": "array", "minItems": 1},
          "description": {"type": "string", "pattern": r"\S"}, "avg_rating": {"type": "number"}}
assert set(_GIVEN) == set(METADATA_FIELDS)


class AppMetadata(BaseModel):
    """A new app, known only by its metadata (the catalog's columns); at least one of category,
    region, pricing_model, features, description or avg_rating must be given."""

    # strict: a JSON false is not a rating, nor "10" a k (what the schema says is what is accepted)
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra={
        "example": {"app_id": "new-app-1", "category": "games", "region": "us", "pricing_model": "free",
                    "features": ["multiplayer", "leaderboards"], "description": "Fast arcade racing", "avg_rating": 4.3},
        "anyOf": [{"required": [name], "properties": {name: given}} for name, given in _GIVEN.items()]})
    app_id: Identifier | None = Field(None, description="an id for the new app, logged with the prediction")
    name: str | None = None
    category: str | None = None
    region: str | None = None
    pricing_model: str | None = None
    features: list[str] = Field(default_factory=list)
    description: str | None = None
    avg_rating: float | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _something_to_embed(self) -> "AppMetadata":
        if all(value is None or value == [] or (isinstance(value, str) and not value.strip())
               for value in (getattr(self, name) for name in METADATA_FIELDS)):
            raise ValueError(f"give at least one of {', '.join(METADATA_FIELDS)} "
                             '(e.g. {"category": "games", "features": ["multiplayer"]})')
        return self

    def as_metadata(self) -> dict[str, Any]:
        return self.model_dump(exclude={"app_id", "name"})


class SimilarByMetadataRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    app: AppMetadata
    k: JsonInt = Field(DEFAULT_K, ge=MIN_K, le=MAX_K)
    partner_id: Identifier | None = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(strict=True, json_schema_extra={"oneOf": [
        {"required": ["app_id"], "properties": {"app_id": {"type": "string"}}},
        {"required": ["app"], "properties": {"app": {"type": "object"}}}]})

    app_id: Identifier | None = Field(None, description="a known app; or give `app` for a new one")
    app: AppMetadata | None = None
    k: JsonInt = Field(DEFAULT_K, ge=MIN_K, le=MAX_K, description="neighbours the prediction is made from")
    partner_id: Identifier | None = None


class NeighborOut(BaseModel):
    app_id: str
    score: float


class SimilarResponse(BaseModel):
    request_id: str
    model_version: int
    arm: str
    app_id: str
    neighbors: list[NeighborOut]


class RateOut(BaseModel):
    estimate: float
    low: float
    high: float


class PredictResponse(BaseModel):
    request_id: str
    model_version: int
    arm: str
    app_id: str
    ctr: RateOut
    cvr: RateOut
    interval: float = 0.95
    support_impressions: int
    neighbors: list[NeighborOut]


class FeedbackResponse(BaseModel):
    accepted: int
    event_ids: list[str]


class PingResponse(BaseModel):
    status: Literal["ok"]
    versions: list[int] = Field(description="the model version of each arm")


class InstanceError(BaseModel):
    """One unknown app id in an /invocations batch (the rest of the batch is answered)."""

    app_id: str
    error: str
    message: str


class BatchResponse(BaseModel):
    request_id: str
    predictions: list[SimilarResponse | InstanceError]


class LoadedModelOut(BaseModel):
    arm: str
    weight: float
    model_version: int
    artifact_uri: str
    loaded_at: str
    app_count: int | None = None
    embedding_dim: int | None = None
    index: dict[str, Any] | None = None
    checksum: str | None = None


class ModelsResponse(BaseModel):
    source: str
    mode: Literal["endpoint", "registry"]
    ready: bool
    arms: list[LoadedModelOut]
    refused_versions: dict[str, str] = Field(description="version -> why it is not served")
    swaps: int


class Problem(BaseModel):
    field: str
    in_: str = Field(alias="in")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="a stable code, e.g. invalid_request, unknown_app, rate_limited")
    message: str = Field(description="what is wrong and how to fix it")
    field: str | None = None
    problems: list[Problem] | None = Field(None, description="every invalid field (validation errors)")


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all rendered as ``ErrorResponse``)."""
    return {code: {"model": ErrorResponse, **({"headers": _RETRY_AFTER} if code in (429, 503) else {})}
            for code in codes}


# --- request bodies read by hand (JSON or CSV; one event or a batch), documented as JSON Schema ------
_K = {"type": "integer", "minimum": MIN_K, "maximum": MAX_K, "default": DEFAULT_K}
_APP_ID = {"type": "string", "minLength": 1}
INVOCATION_SCHEMA = {"oneOf": [
    {"type": "object", "required": ["app_id"], "not": {"required": ["instances"]},
     "properties": {"app_id": _APP_ID, "k": _K, "partner_id": {"type": ["string", "null"]}}},
    {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "maxItems": MAX_INSTANCES, "items": {"oneOf": [
            _APP_ID, {"type": "object", "required": ["app_id"], "properties": {"app_id": _APP_ID}}]}},
        "k": _K, "partner_id": {"type": ["string", "null"]}}}]}
# A CSV body: one app id a line (first column); at least one line must hold an id.
INVOCATION_CSV_SCHEMA = {"type": "string", "pattern": r'(^|[\n\r])[ \t"]*[^\s",]'}
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
# ts: UTC ISO-8601 in 2000..2099 with an offset; the alternatives spell out the calendar (which
# months have 29, 30, 31 days; leap years), so that what the schema allows is what is accepted.
_TS = ("^(20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|20[0-9]{2}-(0[13-9]|1[0-2])-(29|30)"
       "|20[0-9]{2}-(0[13578]|1[02])-31|20([02468][048]|[13579][26])-02-29)"
       "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]00:00)$")


def _event_schema(event_type: str, outcome: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["event_type", "app_id", "campaign_id", "user_id", *outcome],
            "properties": {"event_type": {"const": event_type}, "app_id": _ID, "campaign_id": _ID, "user_id": _ID,
                           "partner_id": _ID, "request_id": {"oneOf": [_ID, {"type": "null"}]},
                           "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID_LENGTH},
                           "ts": {"type": "string", "pattern": _TS}, "schema_version": {"const": SCHEMA_VERSION},
                           **outcome}}


_CLICK = _event_schema("click", {"clicked": {"type": "boolean"}})
_CONVERSION = _event_schema("conversion", {"converted": {"type": "boolean"}})
_CONVERSION["properties"]["revenue"] = {"type": "number", "minimum": 0}


def feedback_schema(max_events: int) -> dict[str, Any]:
    return {"oneOf": [
        {"type": "object", "required": ["events"], "properties": {"events": {
            "type": "array", "minItems": 1, "maxItems": max_events, "items": {"oneOf": [_CLICK, _CONVERSION]},
            "description": f"at most {max_events:,} events (more: 413)"}}},
        _CLICK, _CONVERSION]}

AUTH_ERRORS = (401, 429)  # missing/invalid key; rate limit or too many failed authentications


# --- the app ---------------------------------------------------------------------------------
class Services:
    """What the handlers use, built in the lifespan."""

    def __init__(self, settings: ServingSettings, manager: ModelManager, batcher: EventBatcher | None,
                 pseudonym_key: PseudonymKey | None = None, tracing: Tracing | None = None):
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.manager = manager
        self.batcher = batcher
        self.pseudonym_key = pseudonym_key
        self.keys = ApiKeys(settings.api_keys)
        self.limiter = RateLimiter(open_bucket_store(settings.redis_url, settings.rate_limit_file),
                                   rate=settings.rate_per_second, burst=settings.rate_burst,
                                   failure_rate=settings.auth_failures_per_minute / 60,
                                   failure_burst=settings.auth_failure_burst)

    async def authenticate(self, request: Request, key: str | None) -> str | None:
        """The key's partner after the key and address limits (None when authentication is off)."""
        address = request.client.host if request.client else "unknown"
        return await self.limiter.authenticate(self.keys, key, address)

    def state(self) -> ServingState:
        state = self.manager.state
        if state is None:
            raise ApiError(503, "not_ready", self.manager.not_ready_reason, headers={"Retry-After": "5"})
        return state

    def log_prediction(self, request_id: str, partner_id: str, app_id: str, arm: Arm,
                       neighbors: list[Neighbor], predicted_ctr: float | None = None) -> None:
        if self.batcher is None:
            return
        with self.tracing.span("event logging"):
            self.batcher.submit(prediction_record(
                event_id=uuid.uuid4().hex, ts=datetime.now(timezone.utc), request_id=request_id, partner_id=partner_id,
                app_id=app_id, model_version=arm.model.version, arm=arm.name,
                neighbors=[n.app_id for n in neighbors], scores=[n.score for n in neighbors],
                predicted_ctr=predicted_ctr,
            ))


def create_app(settings: ServingSettings, *, manager: ModelManager | None = None,
               sink: FeedbackSink | None = None, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The ASGI app. ``manager`` and ``sink`` default to what the settings describe; ``span_exporter``
    turns tracing on with that exporter (else ``settings.otlp_endpoint`` decides)."""
    metrics = ServingMetrics()
    tracing = Tracing.configure(settings.otlp_endpoint, settings.trace_sample_ratio, span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One OpenMP thread per search: two threads make one small query 2-2.6x slower here;
        # throughput comes from worker processes instead.
        faiss.omp_set_num_threads(1)
        pseudonym_key = load_key(os.environ, settings.pseudonym_secret_id)
        if pseudonym_key is None and settings.require_pseudonyms:
            raise SettingsError("APPSIM_REQUIRE_PSEUDONYMS is set but there is no pseudonym key: set "
                                "APPSIM_PSEUDONYM_KEY=<key_id>:<secret> or APPSIM_PSEUDONYM_SECRET_ID")
        model_manager = manager or ModelManager(settings)
        feedback_uri = settings.resolved_feedback_uri()
        event_sink = sink or (open_sink(feedback_uri) if feedback_uri else None)
        batcher = None
        if event_sink is not None:
            batcher = EventBatcher(event_sink, SpillDir(settings.spill_dir, fsync=settings.journal_fsync),
                                   max_queue=settings.queue_size, max_batch=settings.batch_size,
                                   flush_seconds=settings.flush_seconds, replay_seconds=settings.replay_seconds,
                                   stall_seconds=settings.stall_seconds).start()
        else:
            log.warning("feedback logging is off: no store or APPSIM_FEEDBACK_URI, prediction events are not recorded")
        if not settings.api_keys:
            log.warning("no API keys configured: /v1 is open (set APPSIM_API_KEYS=partner:key,... to require keys)")
        if pseudonym_key is None:
            log.warning("user ids are stored as sent: set APPSIM_PSEUDONYM_KEY or APPSIM_PSEUDONYM_SECRET_ID")
        services = app.state.services = Services(settings, model_manager, batcher, pseudonym_key, tracing)
        metrics.watch(model_manager, batcher, services.limiter)
        mirror = asyncio.create_task(metrics.mirror_forever()) if metrics.multiprocess else None
        model_manager.start()  # loads in the background: /ping answers 503 until it is done
        try:
            yield
        finally:
            model_manager.stop()
            if batcher is not None:
                batcher.close()  # SIGTERM lands here: every queued event is delivered or spilled
                log.info("event batcher closed: %s", batcher.stats)
            if mirror is not None:
                mirror.cancel()
                metrics.mirror()
            await services.limiter.close()
            metrics.close()
            tracing.shutdown()

    app = FastAPI(
        title="appsim",
        version="1",
        description="Similar apps (FAISS over learned app embeddings) and performance predictions (CTR/CVR "
                    "with intervals), on the SageMaker hosting contract. Errors are JSON naming the problem.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if tracing.on:  # outermost, so the request span covers everything; off, nothing is installed
        app.add_middleware(TracingMiddleware, tracing=tracing)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        if error.status == 429:
            metrics.rate_limited.labels(error.code).inc()
        return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 400:  # FastAPI's "error parsing the body": the same answer as every bad JSON body
            return OrjsonResponse({"error": "malformed_json", "message": f"the body is not valid JSON: {error.detail}",
                                   "field": "body"}, status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {error.detail}; the API is described at /docs"
        return OrjsonResponse({"error": code, "message": message}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problems = []
        for item in error.errors():
            where, *path = item["loc"] or ("body",)
            field = ".".join(str(p) for p in path) or where
            # pydantic's own words for a lone surrogate ("unable to parse raw data as a unicode string") name no fix
            message = NOT_UNICODE if item["type"] == "string_unicode" else item["msg"]
            problems.append({"field": field, "in": where, "message": message})
        first = problems[0]
        message = f"{first['in']} field '{first['field']}': {first['message']}"
        if first["field"] == "k":
            message += f" (k must be an integer from {MIN_K} to {MAX_K})"
        return OrjsonResponse({"error": "invalid_request", "message": message, "field": first["field"],
                               "problems": problems}, status_code=422)

    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                                  description="Your API key (required when the server has keys configured)")

    def services(request: Request) -> Services:
        return request.app.state.services

    # async on purpose: FastAPI runs a plain-def dependency on a worker thread, a thread hop per request.
    async def partner(request: Request, key: str | None = Depends(api_key_header)) -> str | None:
        """Authenticate and rate-limit a /v1 request; returns the key's partner (None when auth is off)."""
        return await services(request).authenticate(request, key)

    async def invocations_partner(request: Request, key: str | None = Depends(api_key_header)) -> str | None:
        """As ``partner``, except in SageMaker mode, where IAM has authenticated the caller already."""
        svc = services(request)
        return None if svc.settings.sagemaker_mode else await svc.authenticate(request, key)

    # --- SageMaker hosting contract ------------------------------------------------------
    @app.get("/ping", tags=["sagemaker"], response_model=PingResponse, responses=errors(503))
    async def ping(request: Request) -> Response:
        svc = services(request)
        state = svc.state()
        stalled = svc.batcher.stall_reason() if svc.batcher is not None else None
        if stalled:  # the watchdog: answers without their events are worse than no answers
            raise ApiError(503, "event_logging_stalled", stalled)
        return OrjsonResponse({"status": "ok", "versions": [arm.model.version for arm in state.arms]})

    @app.post("/invocations", tags=["sagemaker"], response_model=SimilarResponse | BatchResponse,
              responses=errors(*AUTH_ERRORS, 404, 413, 415, 422, 503), openapi_extra={"requestBody": {
                  "required": True, "content": {
                      "application/json": {"schema": INVOCATION_SCHEMA, "example": {"app_id": "app-00001", "k": 10}},
                      # JSON Lines (Batch Transform) is left out: schemathesis cannot generate its bodies
                      "text/csv": {"schema": INVOCATION_CSV_SCHEMA, "example": "app-00001\napp-00002\n"}}}})
    async def invocations(request: Request, key_partner: str | None = Depends(invocations_partner)) -> Response:
        """Similar apps: JSON `{"app_id", "k"}` (one answer) or `{"instances": [...]}`, or CSV with one app id a line.
        Prediction events are logged as for /v1 (partner: the body's partner_id, else the key's, else sagemaker).
        JSON Lines (Batch Transform) answers a bulk-export row per line (serving/jsonlines.py)."""
        svc = services(request)
        state = svc.state()
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type in jsonlines.CONTENT_TYPES:
            lines = jsonlines.parse_lines(body, MAX_INSTANCES)
            answer = await asyncio.to_thread(jsonlines.answer_lines, state, key_partner or SAGEMAKER_PARTNER, lines)
            return Response(answer, media_type=jsonlines.MEDIA_TYPE)
        single, instances, k, asked_by = parse_invocation(body, content_type)
        partner_id = asked_by or key_partner or SAGEMAKER_PARTNER
        request_id = uuid.uuid4().hex
        if single:
            app_id = instances[0]
            with svc.tracing.span("routing"):
                arm = state.route(partner_id, app_id)
            request.scope[ARM_SCOPE_KEY] = arm.name
            with svc.tracing.span("search", k=k):
                neighbors = similar_or_404(arm.model, app_id, k)
            svc.log_prediction(request_id, partner_id, app_id, arm, neighbors)
            return OrjsonResponse(similar_answer(request_id, arm, app_id, neighbors))
        with svc.tracing.span("routing", instances=len(instances)):
            routed = [state.route(partner_id, app_id) for app_id in instances]
        arm_names = {arm.name for arm in routed}
        request.scope[ARM_SCOPE_KEY] = arm_names.pop() if len(arm_names) == 1 else "mixed"
        if len(instances) > INLINE_BATCH:
            predictions = await asyncio.to_thread(batch_similar, svc, state, request_id, partner_id, instances, routed, k)
        else:
            predictions = batch_similar(svc, state, request_id, partner_id, instances, routed, k)
        return OrjsonResponse({"request_id": request_id, "predictions": predictions})

    # --- partner API ---------------------------------------------------------------------
    @app.get("/v1/apps/{app_id}/similar", tags=["similarity"], response_model=SimilarResponse,
             responses=errors(*AUTH_ERRORS, 404, 422, 503))
    async def similar(request: Request, app_id: Annotated[Identifier, Path(description="a catalog app id")],
                      k: int = Query(DEFAULT_K, ge=MIN_K, le=MAX_K, description="how many neighbours"),
                      # Annotated: with `= Query(...)` as the default FastAPI would drop Identifier's constraints
                      partner_id: Annotated[Identifier | None, Query(description="who asks (routes the A/B arm)")] = None,
                      key_partner: str | None = Depends(partner)) -> Response:
        """The k apps most similar to a known app (never the app itself), best first."""
        svc = services(request)
        asker = partner_id or key_partner or ANONYMOUS_PARTNER
        with svc.tracing.span("routing"):
            arm = svc.state().route(asker, app_id)
        request.scope[ARM_SCOPE_KEY] = arm.name
        with svc.tracing.span("search", k=k):
            neighbors = similar_or_404(arm.model, app_id, k)
        request_id = uuid.uuid4().hex
        svc.log_prediction(request_id, asker, app_id, arm, neighbors)
        return OrjsonResponse(similar_answer(request_id, arm, app_id, neighbors))

    @app.post("/v1/similar", tags=["similarity"], response_model=SimilarResponse,
              responses=errors(*AUTH_ERRORS, 413, 422, 503))
    async def similar_new_app(request: Request, body: SimilarByMetadataRequest,
                              key_partner: str | None = Depends(partner)) -> Response:
        """Cold start: apps similar to a new app given by its metadata (category, features, description...)."""
        svc = services(request)
        asker = body.partner_id or key_partner or ANONYMOUS_PARTNER
        request_id = uuid.uuid4().hex
        app_id = body.app.app_id or f"new:{request_id}"
        with svc.tracing.span("routing"):
            arm = svc.state().route(asker, app_id)
        request.scope[ARM_SCOPE_KEY] = arm.name
        try:
            with svc.tracing.span("search", k=body.k, cold_start=True):
                neighbors = arm.model.predictor.similar_to_metadata(body.app.as_metadata(), body.k)
        except MetadataError as error:
            raise ApiError(422, "invalid_metadata", str(error), field="app") from None
        svc.log_prediction(request_id, asker, app_id, arm, neighbors)
        return OrjsonResponse(similar_answer(request_id, arm, app_id, neighbors))

    @app.post("/v1/predict", tags=["prediction"], response_model=PredictResponse,
              responses=errors(*AUTH_ERRORS, 404, 413, 422, 503))
    async def predict(request: Request, body: PredictRequest, key_partner: str | None = Depends(partner)) -> Response:
        """Expected CTR and CVR with 95% intervals, from the neighbours' statistics and the app's own."""
        if (body.app_id is None) == (body.app is None):
            raise ApiError(422, "invalid_request", "give exactly one of app_id (a known app) or app (a new app's metadata)",
                           field="app_id")
        svc = services(request)
        asker = body.partner_id or key_partner or ANONYMOUS_PARTNER
        request_id = uuid.uuid4().hex
        app_id = body.app_id or (body.app.app_id if body.app else None) or f"new:{request_id}"
        with svc.tracing.span("routing"):
            arm = svc.state().route(asker, app_id)
        request.scope[ARM_SCOPE_KEY] = arm.name
        try:
            with svc.tracing.span("prediction", k=body.k):  # its neighbour search included
                if body.app_id is not None:
                    prediction = arm.model.predictor.predict(app_id=body.app_id, k=body.k)
                else:
                    prediction = arm.model.predictor.predict(metadata=body.app.as_metadata(), k=body.k)  # type: ignore[union-attr]
        except UnknownApp as error:
            raise ApiError(404, "unknown_app", str(error), field="app_id") from None
        except MetadataError as error:
            raise ApiError(422, "invalid_metadata", str(error), field="app") from None
        svc.log_prediction(request_id, asker, app_id, arm, prediction.neighbors, prediction.ctr)
        return OrjsonResponse(predict_answer(request_id, arm, app_id, prediction))

    @app.post("/v1/feedback", tags=["feedback"], status_code=202, response_model=FeedbackResponse,
              responses=errors(*AUTH_ERRORS, 413, 422, 503),
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": feedback_schema(settings.feedback_max_events), "example": {"events": [
                  {"event_type": "click", "app_id": "app-00001", "campaign_id": "c-1", "partner_id": "acme",
                   "user_id": "u-123", "clicked": True, "request_id": "9f1c...", "ts": "2026-01-31T12:00:00Z"}]}}}}})
    async def feedback(request: Request, key_partner: str | None = Depends(partner)) -> Response:
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
        metrics.record_feedback(events)
        return OrjsonResponse({"accepted": len(events), "event_ids": [e.event_id for e in events]}, status_code=202)

    @app.get("/v1/models", tags=["models"], response_model=ModelsResponse, responses=errors(*AUTH_ERRORS))
    async def models(request: Request, key_partner: str | None = Depends(partner)) -> Response:
        """The loaded versions, their arms and traffic weights, and any refused version."""
        return OrjsonResponse(services(request).manager.describe())

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format; one scrape covers every worker"}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (``serving.app:app_from_env``): every worker builds its app from the environment."""
    return create_app(settings_from_env())


# --- request handling helpers (pure where they can be) ----------------------------------------
def parse_invocation(body: bytes, content_type: str) -> tuple[bool, list[str], int, str | None]:
    """(single answer?, app ids, k, partner id if the body names one) from an /invocations body."""
    if content_type in ("text/csv", "text/plain"):
        # One app id a line; a CSV row's first column is the id (extra columns are ignored).
        ids = [line.split(",")[0].strip().strip('"') for line in body.decode("utf-8", "replace").splitlines()]
        ids = [i for i in ids if i]
        return False, check_instances(ids), DEFAULT_K, None
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
    k = _json_integer(payload.get("k", DEFAULT_K))
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise ApiError(422, "invalid_k", f"k must be an integer from {MIN_K} to {MAX_K}, got {k!r}", field="k")
    partner_id = payload.get("partner_id")
    if partner_id is not None and not isinstance(partner_id, str):
        raise ApiError(422, "invalid_request", "partner_id must be a string", field="partner_id")
    partner_id = identifier(partner_id, "partner_id") if partner_id else None  # "" names no one
    if "instances" in payload:
        raw = payload["instances"]
        if not isinstance(raw, list):
            raise ApiError(422, "invalid_request", "instances must be a list of app ids or {\"app_id\": ...} objects",
                           field="instances")
        ids = []
        for i, item in enumerate(raw):
            app_id = item.get("app_id") if isinstance(item, dict) else item
            if not isinstance(app_id, str) or not app_id:
                raise ApiError(422, "invalid_request", f"instances[{i}] must be an app id string or an object with "
                               "an app_id", field=f"instances[{i}]")
            ids.append(app_id)
        return False, check_instances(ids), k, partner_id
    app_id = payload.get("app_id")
    if not isinstance(app_id, str) or not app_id:
        raise ApiError(422, "invalid_request", 'app_id is required: {"app_id": "...", "k": 10}', field="app_id")
    return True, [identifier(app_id, "app_id")], k, partner_id


def check_feedback_size(payload: Any, max_events: int) -> None:
    """413 naming the limit for a batch that is too large ever to be accepted (retrying cannot help)."""
    if isinstance(payload, dict) and isinstance(payload.get("events"), list) and len(payload["events"]) > max_events:
        raise ApiError(413, "too_many_events", f"{len(payload['events']):,} events in one request; send at most "
                       f"{max_events:,} per request (split the batch)", field="events")


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


def similar_or_404(model: LoadedModel, app_id: str, k: int) -> list[Neighbor]:
    try:
        return model.predictor.similar(app_id, k)
    except UnknownApp as error:
        raise ApiError(404, "unknown_app", str(error), field="app_id") from None


def batch_similar(svc: Services, state: ServingState, request_id: str, partner_id: str,
                  app_ids: list[str], routed: list[Arm], k: int) -> list[dict[str, Any]]:
    """Answers for many app ids (each routed to its arm), one vectorised search per arm;
    unknown ids get an error entry instead of failing the batch."""
    answers: list[dict[str, Any] | None] = [None] * len(app_ids)
    for arm in state.arms:
        rows = [i for i, chosen in enumerate(routed) if chosen is arm]
        if not rows:
            continue
        predictor = arm.model.predictor
        positions, scores = predictor.similar_many([app_ids[i] for i in rows], k)
        for row, found, found_scores in zip(rows, positions, scores):
            app_id = app_ids[row]
            if app_id not in predictor.artifact.positions:
                answers[row] = {"app_id": app_id, "error": "unknown_app",
                                "message": str(UnknownApp(app_id, len(predictor.artifact.app_ids)))}
                continue
            neighbors = [Neighbor(predictor.artifact.app_ids[p], float(s)) for p, s in zip(found, found_scores) if p >= 0]
            svc.log_prediction(request_id, partner_id, app_id, arm, neighbors)
            answers[row] = similar_answer(request_id, arm, app_id, neighbors)
    return answers  # type: ignore[return-value]


def similar_answer(request_id: str, arm: Arm, app_id: str, neighbors: list[Neighbor]) -> dict[str, Any]:
    return {"request_id": request_id, "model_version": arm.model.version, "arm": arm.name, "app_id": app_id,
            "neighbors": [{"app_id": n.app_id, "score": n.score} for n in neighbors]}


def predict_answer(request_id: str, arm: Arm, app_id: str, prediction: PerformancePrediction) -> dict[str, Any]:
    return {
        "request_id": request_id, "model_version": arm.model.version, "arm": arm.name, "app_id": app_id,
        "ctr": {"estimate": prediction.ctr, "low": prediction.ctr_low, "high": prediction.ctr_high},
        "cvr": {"estimate": prediction.cvr, "low": prediction.cvr_low, "high": prediction.cvr_high},
        "interval": 0.95,
        "support_impressions": prediction.support_impressions,
        "neighbors": [{"app_id": n.app_id, "score": n.score} for n in prediction.neighbors],
    }


def validate_feedback(payload: Any, key_partner: str | None) -> list[Any]:
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


class BodyLimitMiddleware:
    """413 for bodies over the limit (SageMaker's 6 MB), by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read up to the limit before the app sees anything.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any) -> None:
        body = orjson.dumps({"error": "payload_too_large",
                             "message": f"the request body is over {self.max_bytes:,} bytes (SageMaker's limit is 6 MB); "
                                        "send fewer instances per request"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
