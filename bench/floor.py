"""The floor of ``bench.serve``: the least an HTTP endpoint can do with the same request.

A minimal FastAPI app on uvicorn that validates one record (``POST /predict``, the record as the body) or a
batch (``POST /predict/batch``, ``{"records": [...]}``) with the same pydantic models this server builds from
the bundle's schema (``app.model.schema.RecordSchema``: types, limits, categories, dates, extra fields refused), and
answers a constant. No model is loaded: what it reaches is what HTTP, JSON and validation allow on this
machine. The bundle is named by ``BUNDLE_DIR``; only its ``metadata.json`` is read (and verified).

Run: ``BUNDLE_DIR=... uvicorn bench.floor:app --no-access-log``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import Response

from app.contract.bundle import read_metadata
from app.model.schema import RecordSchema, RequestError

MAX_RECORDS: Final = 10_000
RECORD_ANSWER: Final = b'{"prediction":0.0}'
BATCH_ANSWER: Final = b'{"predictions":[]}'

schema = RecordSchema.from_metadata(read_metadata(Path(os.environ["BUNDLE_DIR"])), MAX_RECORDS)
app = FastAPI(title="bench floor", openapi_url=None, docs_url=None, redoc_url=None)


def _refused(exc: RequestError) -> Response:
    return Response(b'{"detail":"invalid"}', status_code=exc.status, media_type="application/json")


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        schema.parse_record(await request.body())
    except RequestError as exc:
        return _refused(exc)
    return Response(RECORD_ANSWER, media_type="application/json")


@app.post("/predict/batch")
async def predict_batch(request: Request) -> Response:
    try:
        schema.parse_batch(await request.body())
    except RequestError as exc:
        return _refused(exc)
    return Response(BATCH_ANSWER, media_type="application/json")


@app.get("/health/ready")
async def ready() -> Response:
    return Response(b"{}", media_type="application/json")
