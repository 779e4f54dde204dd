"""The prediction server: ``uvicorn app.main:app`` (port 9000 by default). This module only assembles it.

The bundle loads in the background after start-up (see ``app.serving``); ``create_app`` builds an app from
given settings, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from app.api.deps import JSON, NotReadyError
from app.api.routes import health, metrics, model, predict
from app.observability import LOGGER_NAME, RequestContextMiddleware, configure_logging, request_id_var
from app.schema import RequestError
from app.serving import ServingState
from app.settings import Settings, get_settings

log = logging.getLogger(LOGGER_NAME)

TITLE = "Prediction server"
DESCRIPTION = (
    "Predictions from the model bundle loaded at start-up. Request schemas, allowed categories, bounds and "
    "examples come from the bundle's own metadata."
)
PREDICT_ROUTES = frozenset({"/predict", "/predict/batch"})


def create_app(settings: Settings, *, configure_logs: bool = True) -> FastAPI:
    """The app for ``settings``; its lifespan loads ``settings.bundle_path`` in the background."""
    state = ServingState(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level, settings.log_format)
        loading = asyncio.create_task(state.load(), name="bundle-load")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await state.close()

    app = FastAPI(title=TITLE, description=DESCRIPTION, lifespan=lifespan, default_response_class=JSON)
    app.state.serving = state
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    for router in (predict.router, health.router, model.router, metrics.router):
        app.include_router(router)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSON:
        route = getattr(request.scope.get("route"), "path", "")
        if route in PREDICT_ROUTES:
            state.metrics.prediction_errors.labels(route, "invalid").inc()
        return JSON({"detail": exc.errors, "request_id": request_id_var.get()}, status_code=exc.status)

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSON:
        body = {"detail": f"not ready: {exc.reason}", "status": state.status, "request_id": request_id_var.get()}
        return JSON(body, status_code=503, headers={"Retry-After": "1"})

    def openapi() -> dict[str, Any]:
        return _openapi(app, state)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, state: ServingState) -> dict[str, Any]:
    """The OpenAPI document, with the request models of the bundle actually loaded (cached once it is)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    loaded = state.model
    if loaded is None:
        for name in ("PredictRequest", "PredictBatchRequest"):
            schemas[name] = {"type": "object", "description": "Known once the bundle is loaded; see /health/ready."}
        return document
    example = loaded.bundle.metadata.example
    for request_model in (loaded.schema.record_model, loaded.schema.batch_model):
        schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[request_model.__name__] = schema
    for path, body in (("/predict", example), ("/predict/batch", {"records": [example]})):
        document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"] = body
    app.openapi_schema = document
    return document


app = create_app(get_settings())
