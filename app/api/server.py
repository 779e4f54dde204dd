"""The prediction server's assembly: ``create_app`` builds the app for given settings (``app.main`` builds the one
uvicorn serves; tests and benchmarks build their own). The bundle loads in the background after start-up
(``app.runtime.loader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from app.api.deps import JSON
from app.api.docs import add_docs
from app.api.errors import http_errors
from app.api.middleware import DirectRoutes, RequestContextMiddleware
from app.api.openapi import openapi_document
from app.api.routes import health, metrics, model, predict, v2
from app.delivery.pull import stop_pulls
from app.observability import configure_logging
from app.runtime.dataplane import DataPlane
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

    # Swagger UI and ReDoc with their assets from the image, not FastAPI's CDN (app.api.docs)
    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSON,
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    app.state.serving = state
    app.state.dataplane = DataPlane(state)
    app.add_middleware(DirectRoutes, fastapi=app)  # inside the request context: added first
    shapes = {v2.router.prefix: v2.V2Route.shape}  # what no route answers, under /v2, in the protocol's shape
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, shapes=shapes)
    app.add_exception_handler(HTTPException, http_errors(shapes))
    for router in (predict.router, health.router, model.router, metrics.router, v2.router):
        app.include_router(router)

    documents: dict[str, dict[str, Any]] = {}  # by the served bundle's content hash
    protocols = (functools.partial(v2.document_v2, model_name=settings.model_name), predict.document_records)

    def openapi() -> dict[str, Any]:
        served = state.model
        if served is None:
            return openapi_document(app, None, protocols)
        if served.content_hash not in documents:
            documents.clear()
            documents[served.content_hash] = openapi_document(app, served, protocols)
        return documents[served.content_hash]

    app.openapi = openapi  # type: ignore[method-assign]
    return app
