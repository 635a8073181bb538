"""What the handlers use: the services container (settings, models, event logging, keys and rate
limits, tracing, metrics), built for the app's lifetime, and the FastAPI dependencies that
authenticate a request.

Handlers get the container with ``services(request)``, a plain attribute read: as a FastAPI
``Depends`` it would cost a dependency resolution on every request. The dependencies are async on
purpose: FastAPI runs a plain-def dependency on a worker thread, a thread hop per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Annotated, AsyncIterator

import faiss
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from models.pseudonym import PseudonymKey, load_key
from serving.batcher import EventBatcher, SpillDir
from serving.errors import ApiError
from serving.metrics import ServingMetrics
from serving.model_state import ModelManager, ServingState
from serving.security import ApiKeys, RateLimiter, open_bucket_store
from serving.settings import ServingSettings, SettingsError
from serving.sink_backends import open_sink
from serving.sinks import FeedbackSink
from serving.tracing import Tracing

log = logging.getLogger("appsim.serving")


class Services:
    """What the handlers use, built when the app starts (``running_services``)."""

    def __init__(self, settings: ServingSettings, manager: ModelManager, batcher: EventBatcher | None,
                 pseudonym_key: PseudonymKey | None = None, tracing: Tracing | None = None,
                 metrics: ServingMetrics | None = None):
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.metrics = metrics or ServingMetrics()
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
        """The loaded arms, or a 503 naming why there are none yet."""
        state = self.manager.state
        if state is None:
            raise ApiError(503, "not_ready", self.manager.not_ready_reason, headers={"Retry-After": "5"})
        return state


@asynccontextmanager
async def running_services(settings: ServingSettings, metrics: ServingMetrics, tracing: Tracing, *,
                           manager: ModelManager | None = None,
                           sink: FeedbackSink | None = None) -> AsyncIterator[Services]:
    """The services for the app's lifetime: models loading in the background (``/ping`` answers 503
    until one is ready), the event batcher; on the way out every queued event is delivered or spilled."""
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
    services = Services(settings, model_manager, batcher, pseudonym_key, tracing, metrics)
    metrics.watch(model_manager, batcher, services.limiter)
    mirror = asyncio.create_task(metrics.mirror_forever()) if metrics.multiprocess else None
    model_manager.start()  # loads in the background: /ping answers 503 until it is done
    try:
        yield services
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


def services(request: Request) -> Services:
    return request.app.state.services


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Your API key (required when the server has keys configured)")


async def partner(request: Request, key: str | None = Depends(api_key_header)) -> str | None:
    """Authenticate and rate-limit a /v1 request; returns the key's partner (None when auth is off)."""
    return await services(request).authenticate(request, key)


async def invocations_partner(request: Request, key: str | None = Depends(api_key_header)) -> str | None:
    """As ``partner``, except in SageMaker mode, where IAM has authenticated the caller already."""
    svc = services(request)
    return None if svc.settings.sagemaker_mode else await svc.authenticate(request, key)


# The key's partner (None when authentication is off), for a route's signature.
KeyPartner = Annotated[str | None, Depends(partner)]
InvocationsPartner = Annotated[str | None, Depends(invocations_partner)]
