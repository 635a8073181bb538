"""The serving app: FastAPI on the SageMaker hosting contract plus the partner API (/v1).

- ``GET /ping`` (200 once a model is loaded, else 503) and ``POST /invocations`` (JSON, CSV or
  JSON Lines) are SageMaker's container contract; ``/v1/...`` is the partner API (API keys, rate
  limits). With keys configured ``/invocations`` needs one too, unless the server runs in SageMaker
  mode (``APPSIM_SAGEMAKER_MODE``: the endpoint's IAM auth is in front of it).
- The parts, in the FastAPI full-stack template's manner: ``schemas`` (what goes over the wire),
  ``dependencies`` (the services container and authentication), ``errors`` (every error answer),
  ``answers`` (route, search, log, answer: one function for every question), ``routers/`` (one
  module per route group). This module wires them and adds the middleware.
- Handlers are async and answer with orjson; every similar/predict answer carries ``request_id``,
  ``arm`` and ``model_version`` and logs a prediction event through the background batcher.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import orjson
from fastapi import FastAPI

from serving import errors
from serving.dependencies import running_services
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.model_state import ModelManager
from serving.routers import docs, feedback, health, invocations, models, similarity
from serving.schemas import OrjsonResponse
from serving.settings import ServingSettings, settings_from_env
from serving.sinks import FeedbackSink
from serving.tracing import SpanExporter, Tracing, TracingMiddleware


def create_app(settings: ServingSettings, *, manager: ModelManager | None = None,
               sink: FeedbackSink | None = None, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The ASGI app. ``manager`` and ``sink`` default to what the settings describe; ``span_exporter``
    turns tracing on with that exporter (else ``settings.otlp_endpoint`` decides)."""
    metrics = ServingMetrics()
    tracing = Tracing.configure(settings.otlp_endpoint, settings.trace_sample_ratio, span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings, metrics, tracing, manager=manager, sink=sink) as services:
            app.state.services = services
            yield

    app = FastAPI(
        title="appsim",
        version="1",
        description="Similar apps (FAISS over learned app embeddings) and performance predictions (CTR/CVR "
                    "with intervals), on the SageMaker hosting contract. Errors are JSON naming the problem.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # Served from this server's own copy of the assets (routers/docs.py), never a CDN.
        docs_url=None, redoc_url=None,
    )
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if tracing.on:  # outermost, so the request span covers everything; off, nothing is installed
        app.add_middleware(TracingMiddleware, tracing=tracing)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(invocations.router)
    app.include_router(similarity.router)
    app.include_router(feedback.router(settings.feedback_max_events))
    app.include_router(models.router)
    # After the API's routes: a request is matched against the routes in order.
    app.include_router(docs.router)
    app.mount(docs.ASSETS_PATH, docs.assets(), name="docs-assets")
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (``serving.app:app_from_env``): every worker builds its app from the environment."""
    return create_app(settings_from_env())


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
