"""What is being served: the bundle's metadata and its view in the MLflow registry."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JSON, Model, State

router = APIRouter(tags=["model"])


@router.get(
    "/model",
    summary="Metadata, metrics, data hash and the registry view of the bundle being served",
    responses={503: {"description": "The bundle is not loaded yet"}},
)
async def model(state: State, loaded: Model) -> JSON:
    metadata = loaded.bundle.metadata
    registry = await state.registry_view()  # cached, bounded by REGISTRY_TIMEOUT_S; never on the predict path
    return JSON(
        {
            "bundle_hash": metadata.content_hash,
            "model_version": state.model_version,
            "data_hash": metadata.data_hash,
            "metrics": metadata.metrics,
            "baseline_metrics": metadata.baseline_metrics,
            "metadata": metadata.model_dump(mode="json"),
            **registry,
        }
    )
