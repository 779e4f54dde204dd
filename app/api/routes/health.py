"""Liveness and readiness: what the container's probes call."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JSON, State

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="The process is up")
async def live() -> JSON:
    return JSON({"status": "alive"})


@router.get(
    "/ready",
    summary="200 only when the bundle is loaded and verified; 503 with the reason otherwise",
    responses={503: {"description": "Not ready: the bundle is loading, missing or failed verification"}},
)
async def ready(state: State) -> JSON:
    served = state.model
    if served is None:
        return JSON({"status": state.status, "reason": state.reason}, status_code=503)
    return JSON({"status": "ready", "bundle_hash": served.content_hash, "model_version": served.version})
