"""Every error answer of the API, in one place: the exceptions, how each becomes an HTTP answer,
and how the OpenAPI schema documents them.

Code that knows what went wrong raises a specific exception (``ApiError`` here; ``UnknownApp`` and
``MetadataError`` from the model); the handlers installed by ``install`` turn each into the JSON body
``{"error", "message", "field"?, "problems"?}`` (``schemas.ErrorResponse``) that names the problem
and the fix. Handlers run only when something is raised: the answered path pays nothing for them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from models.events import NOT_UNICODE
from models.features import MetadataError
from models.predictor import MAX_K, MIN_K, UnknownApp
from serving.schemas import ErrorResponse, OrjsonResponse

# Answers that any authenticated route can give: a missing/invalid key (401); the rate limit or too
# many failed authentications (429).
AUTH_ERRORS = (401, 429)
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


class ApiError(Exception):
    """An answer that names the problem and the fix: rendered as ``{"error", "message", ...}``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all rendered as ``ErrorResponse``)."""
    return {code: {"model": ErrorResponse, **({"headers": _RETRY_AFTER} if code in (429, 503) else {})}
            for code in codes}


async def api_error(request: Request, error: ApiError) -> Response:
    if error.status == 429:
        request.app.state.metrics.rate_limited.labels(error.code).inc()
    return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)


async def unknown_app(request: Request, error: UnknownApp) -> Response:
    return OrjsonResponse({"error": "unknown_app", "message": str(error), "field": "app_id"}, status_code=404)


async def invalid_metadata(request: Request, error: MetadataError) -> Response:
    return OrjsonResponse({"error": "invalid_metadata", "message": str(error), "field": "app"}, status_code=422)


async def http_error(request: Request, error: StarletteHTTPException) -> Response:
    if error.status_code == 400:  # FastAPI's "error parsing the body": the same answer as every bad JSON body
        return OrjsonResponse({"error": "malformed_json", "message": f"the body is not valid JSON: {error.detail}",
                               "field": "body"}, status_code=422)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {error.detail}; the API is described at /docs"
    return OrjsonResponse({"error": code, "message": message}, status_code=error.status_code, headers=error.headers)


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


def install(app: FastAPI) -> None:
    """Answer every exception the API knows with its JSON error body (``app.state.metrics`` counts 429s)."""
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownApp, unknown_app)  # type: ignore[arg-type]
    app.add_exception_handler(MetadataError, invalid_metadata)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
