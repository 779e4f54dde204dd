"""Liveness and readiness: what the container's probes call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import JSON, State
from app.api.errors import ShapedRoute

router = APIRouter(prefix="/health", tags=["health"], route_class=ShapedRoute)


@router.get("/live", summary="The process is up")
async def live() -> JSON:
    return JSON({"status": "alive"})


@router.get(
    "/ready",
    summary="200 only when the bundle is loaded and verified and the model answers; 503 with the reason otherwise",
    responses={
        503: {
            "description": "Not ready: the bundle is loading, missing or failed verification, or a model call has "
            "run longer than PREDICT_TIMEOUT_S (stuck)"
        }
    },
)
async def ready(state: State) -> JSON:
    if (why := state.not_ready()) is not None:
        return JSON({"status": why.phase, "reason": why.reason}, status_code=503)
    served = state.served()
    body: dict[str, Any] = {"status": "ready", "bundle_hash": served.content_hash, "model_version": served.version}
    if state.candidate is not None:  # what the alias moved to, being loaded or refused (the model above serves)
        body["candidate"] = state.candidate.as_dict()
    return JSON(body)
