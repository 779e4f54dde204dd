"""Predictions: one record (micro-batched with concurrent ones) or a batch of records in one model call.

The request bodies are read and validated here rather than by FastAPI's body parsing: the size limit is
enforced while the body streams, and pydantic-core validates straight from the bytes against the models
built from the bundle (``app.schema``). The OpenAPI document still shows those models (see ``app.main``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import JSON, Model, State, read_body

router = APIRouter(tags=["predict"])

RECORD_BODY = {"$ref": "#/components/schemas/PredictRequest"}
BATCH_BODY = {"$ref": "#/components/schemas/PredictBatchRequest"}
ERRORS = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body larger than MAX_BODY_BYTES, or more than MAX_BATCH_RECORDS records"},
    422: {"description": "Field-level errors; each message names its field"},
    503: {"description": "The bundle is not loaded yet"},
}


class PredictResponse(BaseModel):
    prediction: float
    model_version: int | None
    bundle_hash: str


class PredictBatchResponse(BaseModel):
    predictions: list[float]
    model_version: int | None
    bundle_hash: str


def _body(ref: dict[str, str]) -> dict[str, object]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@router.post(
    "/predict",
    summary="Predict one record",
    responses={200: {"model": PredictResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra=_body(RECORD_BODY),
)
async def predict(request: Request, state: State, loaded: Model) -> JSON:
    batcher = loaded.batcher
    batcher.expect()  # lets the micro-batcher wait (bounded) for this record while it is read
    try:
        row = loaded.schema.parse_record(await read_body(request, state.settings.max_body_bytes))
    finally:
        batcher.arrived()
    try:
        prediction = await batcher.predict(row)
    except Exception:
        state.metrics.prediction_errors.labels("/predict", "model").inc()
        raise
    state.metrics.predicted_rows.labels("/predict").inc()
    return JSON(
        {"prediction": prediction, "model_version": state.model_version, "bundle_hash": loaded.bundle.content_hash}
    )


@router.post(
    "/predict/batch",
    summary="Predict up to MAX_BATCH_RECORDS records in one vectorised call",
    responses={200: {"model": PredictBatchResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra=_body(BATCH_BODY),
)
async def predict_batch(request: Request, state: State, loaded: Model) -> JSON:
    rows = loaded.schema.parse_batch(await read_body(request, state.settings.max_body_bytes))
    try:
        predictions = await loaded.predict_batch(rows)
    except Exception:
        state.metrics.prediction_errors.labels("/predict/batch", "model").inc()
        raise
    state.metrics.predicted_rows.labels("/predict/batch").inc(len(rows))
    return JSON(
        {"predictions": predictions, "model_version": state.model_version, "bundle_hash": loaded.bundle.content_hash}
    )
