"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import State
from app.api.errors import ShapedRoute
from app.observability import METRICS_CONTENT_TYPE

router = APIRouter(tags=["metrics"], route_class=ShapedRoute)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)
