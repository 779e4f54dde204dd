"""The prediction server's assembly: ``create_app`` builds the app for given settings (``app.main`` builds the one
uvicorn serves; tests and benchmarks build their own). The bundle loads in the background after start-up
(``app.runtime.loader``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from app.api.deps import JSON, NotReadyError
from app.api.middleware import RequestContextMiddleware
from app.api.openapi import openapi_document
from app.api.routes import health, metrics, model, predict, v2
from app.delivery.pull import stop_pulls
from app.model.schema import RequestError
from app.observability import configure_logging, request_id_var
from app.runtime.admission import RETRY_AFTER_S, OverloadedError
from app.runtime.loader import load_until_ready
from app.runtime.refresh import follow_alias
from app.runtime.state import ServingState
from app.settings import Settings

TITLE = "Prediction server"
DESCRIPTION = (
    "Predictions from the model bundle loaded at start-up. Request schemas, allowed categories, bounds and "
    "examples come from the bundle's own metadata."
)


def create_app(settings: Settings, *, configure_logs: bool = True) -> FastAPI:
    """The app for ``settings``; its lifespan loads ``settings.bundle_path`` in the background."""
    state = ServingState.for_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level, settings.log_format)
        tasks = [asyncio.create_task(load_until_ready(state), name="bundle-load")]
        if settings.follows_alias:
            tasks.append(asyncio.create_task(follow_alias(state), name="follow-alias"))
        try:
            yield
        finally:
            stop_pulls()  # a candidate's pull must not outlive the server
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.close()

    app = FastAPI(title=TITLE, description=DESCRIPTION, lifespan=lifespan, default_response_class=JSON)
    app.state.serving = state
    app.add_middleware(predict.DirectRoutes, fastapi=app)  # inside the request context: added first
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    for router in (predict.router, health.router, model.router, metrics.router, v2.router):
        app.include_router(router)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSON:
        body: dict[str, Any] = {"detail": exc.errors, "request_id": request_id_var.get()}
        if exc.more:
            body["more_errors"] = exc.more  # errors left out of ``detail`` (MAX_LISTED_ERRORS)
        return JSON(body, status_code=exc.status)

    @app.exception_handler(NotReadyError)
    async def not_ready(_: Request, exc: NotReadyError) -> JSON:
        body = {"detail": f"not ready: {exc.reason}", "status": state.status, "request_id": request_id_var.get()}
        return JSON(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(OverloadedError)
    async def overloaded(_: Request, exc: OverloadedError) -> JSON:
        body = {"detail": exc.reason, "status": "overloaded", "request_id": request_id_var.get()}
        return JSON(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    documents: dict[str, dict[str, Any]] = {}  # by the served bundle's content hash

    def openapi() -> dict[str, Any]:
        served = state.model
        if served is None:
            return openapi_document(app, None)
        if served.content_hash not in documents:
            documents.clear()
            documents[served.content_hash] = openapi_document(app, served)
        return documents[served.content_hash]

    app.openapi = openapi  # type: ignore[method-assign]
    return app
