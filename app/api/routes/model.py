"""What is being served: the bundle's metadata and its view in the MLflow registry."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JSON, Model, State
from app.api.errors import ShapedRoute

router = APIRouter(tags=["model"], route_class=ShapedRoute)


@router.get(
    "/model",
    summary="Metadata, metrics, data hash and the registry view of the bundle being served",
    responses={503: {"description": "The bundle is not loaded yet"}},
)
async def model(state: State, served: Model) -> JSON:
    metadata = served.bundle.metadata
    registry = await state.registry_view.of(served.content_hash)  # cached, bounded by REGISTRY_TIMEOUT_S
    return JSON(
        {
            "bundle_hash": metadata.content_hash,
            "model_version": served.version,
            "library_mismatch": served.library_mismatch,
            "walk": served.bundle.form.walk,
            "candidate": None if state.candidate is None else state.candidate.as_dict(),
            "data_hash": metadata.data_hash,
            "metrics": metadata.metrics,
            "baseline_metrics": metadata.baseline_metrics,
            "metadata": metadata.model_dump(mode="json"),
            **registry,
        }
    )
