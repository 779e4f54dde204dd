"""Liveness and readiness: what the container's probes call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import JSON, State

router = APIRouter(prefix="/health", tags=["health"])


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
    served = state.model
    if served is None:
        return JSON({"status": state.status, "reason": state.reason}, status_code=503)
    if (stuck := state.admission.stuck_for()) is not None:
        reason = f"a model call has run for {stuck:.1f}s, past PREDICT_TIMEOUT_S={state.admission.timeout_s:g}s"
        return JSON({"status": "stuck", "reason": reason}, status_code=503)
    body: dict[str, Any] = {"status": "ready", "bundle_hash": served.content_hash, "model_version": served.version}
    if state.candidate is not None:  # what the alias moved to, being loaded or refused (the model above serves)
        body["candidate"] = state.candidate.as_dict()
    return JSON(body)
