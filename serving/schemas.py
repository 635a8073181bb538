"""What goes over the wire: request and response models, the hand-read bodies' JSON Schemas, the
answer bodies and the JSON encoder.

The models document the API (the OpenAPI schema, checked by schemathesis in the tests) and
validate the bodies FastAPI reads; answers are built as plain dicts by ``similar_answer`` and
``predict_answer`` and sent with orjson (FastAPI's own encoder costs 14-26% of throughput).
``/invocations`` and ``/v1/feedback`` read their bodies by hand (JSON, CSV or JSON Lines; one
event or a batch), so their schemas are written out here as JSON Schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from models.events import MAX_EVENT_ID_LENGTH, MAX_ID_LENGTH, SCHEMA_VERSION, Identifier
from models.features import METADATA_FIELDS
from models.predictor import MAX_K, MIN_K, Neighbor, PerformancePrediction
from serving.model_state import Arm

DEFAULT_K = 10
MAX_INSTANCES = 10_000


class OrjsonResponse(JSONResponse):
    """JSON by orjson. A JSONResponse, so that FastAPI documents each route's response model
    (with a plain Response every 2xx was documented as a string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# --- request and response models ---------------------------------------------------------
def json_integer(value: Any) -> Any:
    """JSON Schema counts 97.0 as an integer: take it as 97 (strict validation refuses "97" and true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(json_integer)]

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
    popular_table: dict[str, Any] | None = Field(
        None, description="with APPSIM_POPULAR_APPS: the neighbour export answering popular apps (uri, apps, k), "
                          "or why none does (uri, error)")


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


# --- request bodies read by hand (JSON or CSV; one event or a batch), documented as JSON Schema ------
_K = {"type": "integer", "minimum": MIN_K, "maximum": MAX_K, "default": DEFAULT_K}
_APP_ID = {"type": "string", "minLength": 1}
_INSTANCE_K = {"type": "integer", "minimum": MIN_K, "maximum": MAX_K,
               "description": "neighbours for this instance (default: the body's k)"}
INVOCATION_SCHEMA = {"oneOf": [
    {"type": "object", "required": ["app_id"], "not": {"required": ["instances"]},
     "properties": {"app_id": _APP_ID, "k": _K, "partner_id": {"type": ["string", "null"]}}},
    {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "maxItems": MAX_INSTANCES, "items": {"oneOf": [
            _APP_ID, {"type": "object", "required": ["app_id"], "properties": {"app_id": _APP_ID, "k": _INSTANCE_K}}]}},
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


# --- answers (plain dicts in the shapes above) -------------------------------------------------
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
