"""``GET /v1/models``: what this server serves (versions, arms, traffic weights) and what it refused."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.dependencies import KeyPartner, services
from serving.errors import AUTH_ERRORS, responses
from serving.schemas import ModelsResponse, OrjsonResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse, responses=responses(*AUTH_ERRORS))
async def models(request: Request, key_partner: KeyPartner) -> Response:
    """The loaded versions, their arms and traffic weights, and any refused version."""
    return OrjsonResponse(services(request).manager.describe())
