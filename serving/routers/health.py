"""Operations: ``GET /ping`` (SageMaker's health check; 200 once a model is loaded and event logging
runs) and ``GET /metrics`` (Prometheus; one scrape covers every worker). Both are open."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from serving.dependencies import services
from serving.errors import ApiError, responses
from serving.schemas import OrjsonResponse, PingResponse

router = APIRouter()


@router.get("/ping", tags=["sagemaker"], response_model=PingResponse, responses=responses(503))
async def ping(request: Request) -> Response:
    svc = services(request)
    state = svc.state()
    stalled = svc.batcher.stall_reason() if svc.batcher is not None else None
    if stalled:  # the watchdog: answers without their events are worse than no answers
        raise ApiError(503, "event_logging_stalled", stalled)
    return OrjsonResponse({"status": "ok", "versions": [arm.model.version for arm in state.arms]})


@router.get("/metrics", tags=["operations"], response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text format; one scrape covers every worker"}})
async def prometheus_metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
