"""Answering one question, the same way on every route: route it to its A/B arm, search (or predict)
with that arm's model, log the prediction event, and shape the answer.

Every answer carries ``request_id``, ``arm`` and ``model_version``, and its prediction event goes
through the background batcher (``serving/batcher.py``): the request never waits for a write.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from fastapi import Request

from models.events import prediction_record
from models.predictor import Neighbor, PerformancePrediction, Predictor
from serving.dependencies import Services
from serving.metrics import ARM_SCOPE_KEY
from serving.model_state import Arm
from serving.schemas import OrjsonResponse, predict_answer, similar_answer

# What a route asks of the arm's model: its neighbours, or a prediction made from them.
Search = Callable[[Predictor], "list[Neighbor] | PerformancePrediction"]


def answer(request: Request, svc: Services, partner_id: str, app_id: str, span: str, search: Search, *,
           request_id: str | None = None, **span_attributes: Any) -> OrjsonResponse:
    """The answer for ``app_id`` asked by ``partner_id``: ``search`` runs on the routed arm's model in
    the tracing span ``span``; a prediction's answer has CTR/CVR, a list of neighbours a similar-apps one.
    The model's own exceptions (``UnknownApp``, ``MetadataError``) become their HTTP answers in
    serving/errors.py."""
    request_id = request_id or uuid.uuid4().hex
    with svc.tracing.span("routing"):
        arm = svc.state().route(partner_id, app_id)
    request.scope[ARM_SCOPE_KEY] = arm.name  # the metrics' arm label
    with svc.tracing.span(span, **span_attributes):
        found = search(arm.model.predictor)
    if isinstance(found, PerformancePrediction):
        log_prediction(svc, request_id, partner_id, app_id, arm, found.neighbors, found.ctr)
        return OrjsonResponse(predict_answer(request_id, arm, app_id, found))
    log_prediction(svc, request_id, partner_id, app_id, arm, found)
    return OrjsonResponse(similar_answer(request_id, arm, app_id, found))


def log_prediction(svc: Services, request_id: str, partner_id: str, app_id: str, arm: Arm,
                   neighbors: list[Neighbor], predicted_ctr: float | None = None) -> None:
    """Queue the prediction event of one answer (nothing when the server records no feedback)."""
    if svc.batcher is None:
        return
    with svc.tracing.span("event logging"):
        svc.batcher.submit(prediction_record(
            event_id=uuid.uuid4().hex, ts=datetime.now(timezone.utc), request_id=request_id, partner_id=partner_id,
            app_id=app_id, model_version=arm.model.version, arm=arm.name,
            neighbors=[n.app_id for n in neighbors], scores=[n.score for n in neighbors],
            predicted_ctr=predicted_ctr,
        ))
