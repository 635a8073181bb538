"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their scripts, styles and icon served by this
server, not a CDN: the pages work offline, in a VPC without egress, and under a strict CSP.

The assets come from the ``fastapi-offline`` package (pinned in the ``serve`` extra), which ships
Swagger UI's and ReDoc's distribution files; its FastAPI wrapper is not used. Swagger UI's online
validator badge (validator.swagger.io) is turned off, and ReDoc's Google Fonts are not loaded.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS_PATH = "/docs/assets"
SWAGGER_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"

router = APIRouter(include_in_schema=False)


def assets() -> StaticFiles:
    """The Swagger UI and ReDoc files, to mount at ``ASSETS_PATH``."""
    return StaticFiles(directory=str(files("fastapi_offline") / "static"))


def served(request: Request, path: str) -> str:
    """``path`` as the browser must ask for it (behind a proxy that mounts the app under a prefix)."""
    return request.scope.get("root_path", "") + path


@router.get(SWAGGER_PATH)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=served(request, request.app.openapi_url), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=served(request, f"{ASSETS_PATH}/swagger-ui-bundle.js"),
        swagger_css_url=served(request, f"{ASSETS_PATH}/swagger-ui.css"),
        swagger_favicon_url=served(request, f"{ASSETS_PATH}/favicon.png"),
        oauth2_redirect_url=served(request, OAUTH2_REDIRECT_PATH), swagger_ui_parameters={"validatorUrl": None})


@router.get(OAUTH2_REDIRECT_PATH)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_PATH)
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=served(request, request.app.openapi_url), title=f"{request.app.title} - ReDoc",
                          redoc_js_url=served(request, f"{ASSETS_PATH}/redoc.standalone.js"),
                          redoc_favicon_url=served(request, f"{ASSETS_PATH}/favicon.png"), with_google_fonts=False)
