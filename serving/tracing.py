"""OpenTelemetry spans for a request: request -> routing -> search -> prediction -> event logging.

Off by default. ``APPSIM_OTLP_ENDPOINT`` (e.g. ``http://127.0.0.1:4318/v1/traces``, the ADOT
collector's OTLP/HTTP receiver, which forwards to X-Ray: docs/aws-deployment.md) turns it on;
spans leave on a background thread (``BatchSpanProcessor``), never on the request path.

With tracing off nothing is installed: no middleware, and ``Tracing.span()`` returns one shared
``nullcontext`` (a ``with`` on it costs tens of nanoseconds), so handlers need no ``if``.
Each app has its own provider, set up in each worker process (no global provider: apps in one
test process never share one). An incoming W3C ``traceparent`` header continues the caller's trace.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

SERVICE_NAME = "appsim-serving"
SPAN_NAMES = ("request", "routing", "search", "prediction", "event logging")
_OFF = nullcontext()


class Tracing:
    """One app's tracer; ``Tracing()`` is tracing off."""

    def __init__(self, provider: TracerProvider | None = None):
        self._provider = provider
        self._tracer = provider.get_tracer("appsim.serving") if provider is not None else None

    @classmethod
    def configure(cls, otlp_endpoint: str | None, sample_ratio: float = 1.0,
                  exporter: SpanExporter | None = None) -> "Tracing":
        """On when an OTLP endpoint or an exporter is given. ``exporter`` (tests, benchmarks) gets each
        span as it ends; the OTLP exporter goes through a batch on a background thread."""
        if exporter is None and not otlp_endpoint:
            return cls()
        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}),
                                  sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        return cls(provider)

    @property
    def on(self) -> bool:
        return self._tracer is not None

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Any]:
        """A child span of the current request's span; a shared no-op when tracing is off."""
        if self._tracer is None:
            return _OFF
        return self._tracer.start_as_current_span(name, attributes=attributes or None)

    def request_span(self, scope: dict) -> AbstractContextManager[Any]:
        assert self._tracer is not None
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return self._tracer.start_as_current_span(
            "request", context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]})

    def shutdown(self) -> None:
        """Flush what is still batched and stop (the app's shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()


class TracingMiddleware:
    """The ``request`` span around every HTTP request (installed only when tracing is on)."""

    def __init__(self, app: Any, tracing: Tracing):
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.tracing.request_span(scope) as current:
            async def send_with_status(message: dict) -> None:
                if message["type"] == "http.response.start":
                    current.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        current.set_status(trace.StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, send_with_status)
