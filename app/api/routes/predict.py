"""The records protocol: one record (micro-batched with concurrent ones) or a batch of records in one model call.

The routes decode and encode; the prediction's lifecycle is the data plane's (``app.runtime.dataplane``). The
request bodies are read and validated here rather than by FastAPI's body parsing: the size limit is enforced
while the body streams, and pydantic-core validates straight from the bytes against the models built from the
bundle (``app.model.schema``). The OpenAPI document shows those models (``document_records``).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import JSON, data_plane, read_json_body
from app.api.errors import DirectRoute
from app.api.openapi import component_schemas, request_body
from app.model.schema import BATCH_MODEL, RECORD_MODEL
from app.runtime.served_model import Row, ServedModel

router = APIRouter(tags=["predict"], route_class=DirectRoute)

RECORD_PATH: Final = "/predict"
BATCH_PATH: Final = "/predict/batch"
ERRORS = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body larger than MAX_BODY_BYTES"},
    415: {"description": "Content-Type is not JSON"},
    422: {"description": "Field-level errors, each message naming its field; more than MAX_BATCH_RECORDS records"},
    503: {
        "description": "The bundle is not loaded yet, or the request was shed (MAX_QUEUED_ROWS rows already queued, "
        "or no prediction within PREDICT_TIMEOUT_S): retry after Retry-After seconds"
    },
}
NOT_LOADED: Final[dict[str, Any]] = {
    "type": "object",
    "description": "Known once the bundle is loaded; see /health/ready.",
}


class PredictResponse(BaseModel):
    prediction: float
    model_version: int | None
    bundle_hash: str


class PredictBatchResponse(BaseModel):
    predictions: list[float]
    model_version: int | None
    bundle_hash: str


@router.post(
    RECORD_PATH,
    summary="Predict one record",
    responses={200: {"model": PredictResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra={"requestBody": request_body(RECORD_MODEL)},
)
async def predict_record(request: Request) -> JSON:
    plane = data_plane(request)
    served = plane.state.served()
    limit = plane.state.settings.max_body_bytes
    prediction = await plane.predict_record(
        served, RECORD_PATH, lambda: read_json_body(request, limit), served.schema.parse_record
    )
    return JSON({"prediction": prediction, "model_version": served.version, "bundle_hash": served.content_hash})


@router.post(
    BATCH_PATH,
    summary="Predict up to MAX_BATCH_RECORDS records in one vectorised call",
    responses={200: {"model": PredictBatchResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra={"requestBody": request_body(BATCH_MODEL)},
)
async def predict_batch(request: Request) -> JSON:
    plane = data_plane(request)
    served = plane.state.served()
    limit = plane.state.settings.max_body_bytes

    def decode(body: bytes) -> tuple[None, list[Row]]:
        return None, served.schema.parse_batch(body)

    _, predictions = await plane.predict_rows(served, BATCH_PATH, lambda: read_json_body(request, limit), decode)
    return JSON({"predictions": predictions, "model_version": served.version, "bundle_hash": served.content_hash})


def document_records(document: dict[str, Any], served: ServedModel | None) -> None:
    """Complete the OpenAPI ``document`` for these routes: the request models of ``served`` and its example
    (placeholders until a bundle is loaded)."""
    schemas = component_schemas(document)
    if served is None:
        schemas.update({RECORD_MODEL: NOT_LOADED, BATCH_MODEL: NOT_LOADED})
        return
    for request_model in (served.schema.record_model, served.schema.batch_model):
        schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[request_model.__name__] = schema
    example = served.bundle.metadata.example
    bodies = {
        RECORD_PATH: request_body(RECORD_MODEL, example),
        BATCH_PATH: request_body(BATCH_MODEL, {"records": [example]}),
    }
    for path, body in bodies.items():
        document["paths"][path]["post"]["requestBody"] = body
