"""The partner API's questions: similar apps (of a catalog app, or of a new app by its metadata) and
performance predictions. Each is answered by ``serving.answers.answer``; a FAISS search is well under
a millisecond up to 1M apps, so it runs inline on the event loop rather than paying a thread hop."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from models.events import Identifier
from models.predictor import MAX_K, MIN_K
from serving.answers import answer
from serving.dependencies import KeyPartner, services
from serving.errors import AUTH_ERRORS, ApiError, responses
from serving.schemas import DEFAULT_K, PredictRequest, PredictResponse, SimilarByMetadataRequest, SimilarResponse

ANONYMOUS_PARTNER = "anonymous"

router = APIRouter()


@router.get("/v1/apps/{app_id}/similar", tags=["similarity"], response_model=SimilarResponse,
            responses=responses(*AUTH_ERRORS, 404, 422, 503))
async def similar(request: Request, app_id: Annotated[Identifier, Path(description="a catalog app id")],
                  key_partner: KeyPartner, k: int = Query(DEFAULT_K, ge=MIN_K, le=MAX_K, description="how many neighbours"),
                  # Annotated: with `= Query(...)` as the default FastAPI would drop Identifier's constraints
                  partner_id: Annotated[Identifier | None, Query(description="who asks (routes the A/B arm)")] = None,
                  ) -> Response:
    """The k apps most similar to a known app (never the app itself), best first."""
    asker = partner_id or key_partner or ANONYMOUS_PARTNER
    return answer(request, services(request), asker, app_id, "search", lambda predictor: predictor.similar(app_id, k),
                  k=k)


@router.post("/v1/similar", tags=["similarity"], response_model=SimilarResponse,
             responses=responses(*AUTH_ERRORS, 413, 422, 503))
async def similar_new_app(request: Request, body: SimilarByMetadataRequest, key_partner: KeyPartner) -> Response:
    """Cold start: apps similar to a new app given by its metadata (category, features, description...)."""
    asker = body.partner_id or key_partner or ANONYMOUS_PARTNER
    request_id = uuid.uuid4().hex
    app_id = body.app.app_id or f"new:{request_id}"
    return answer(request, services(request), asker, app_id, "search",
                  lambda predictor: predictor.similar_to_metadata(body.app.as_metadata(), body.k),
                  request_id=request_id, k=body.k, cold_start=True)


@router.post("/v1/predict", tags=["prediction"], response_model=PredictResponse,
             responses=responses(*AUTH_ERRORS, 404, 413, 422, 503))
async def predict(request: Request, body: PredictRequest, key_partner: KeyPartner) -> Response:
    """Expected CTR and CVR with 95% intervals, from the neighbours' statistics and the app's own."""
    if (body.app_id is None) == (body.app is None):
        raise ApiError(422, "invalid_request", "give exactly one of app_id (a known app) or app (a new app's metadata)",
                       field="app_id")
    asker = body.partner_id or key_partner or ANONYMOUS_PARTNER
    request_id = uuid.uuid4().hex
    app_id = body.app_id or (body.app.app_id if body.app else None) or f"new:{request_id}"
    metadata = body.app.as_metadata() if body.app is not None else None
    return answer(request, services(request), asker, app_id, "prediction",  # the span covers its neighbour search
                  lambda predictor: predictor.predict(app_id=body.app_id, metadata=metadata, k=body.k),
                  request_id=request_id, k=body.k)
