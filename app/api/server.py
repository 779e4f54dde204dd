"""The prediction server's assembly: ``create_app`` builds the app for given settings (``app.main`` builds the one
uvicorn serves; tests and benchmarks build their own). The bundle loads in the background after start-up
(``app.runtime.loader``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from app.api.deps import JSON
from app.api.docs import add_docs
from app.api.errors import http_errors
from app.api.middleware import DirectRoutes, RequestContextMiddleware, TracingMiddleware
from app.api.openapi import openapi_document
from app.api.routes import health, metrics, model, predict, v2
from app.delivery.pull import stop_pulls
from app.observability import LOGGER_NAME, configure_logging
from app.runtime.dataplane import DataPlane
from app.runtime.loader import load_until_ready
from app.runtime.refresh import follow_alias
from app.runtime.state import ServingState
from app.settings import Settings
from app.tracing import tracing_plan

log = logging.getLogger(LOGGER_NAME)

TITLE = "Prediction server"
DESCRIPTION = (
    "Predictions from the model bundle loaded at start-up. Request schemas, allowed categories, bounds and "
    "examples come from the bundle's own metadata."
)


def create_app(settings: Settings, *, configure_logs: bool = True) -> FastAPI:
    """The app for ``settings``; its lifespan loads ``settings.bundle_path`` in the background.

    Tracing follows the ``OTEL_*`` variables as they are now (``app.tracing``: ``TracingError`` if they ask for what
    this server cannot do); when on, the lifespan starts it in the process that serves (each uvicorn worker) and
    flushes it at stop, and the tracing middleware is added; when off, neither."""
    state = ServingState.for_settings(settings)
    tracing = tracing_plan(os.environ)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level, settings.log_format)
        if tracing.enabled:
            from app.tracing import start_tracing

            state.tracing = start_tracing(tracing)  # before the bundle loads: its model's batcher traces too
            log.info(
                "tracing on (%s): spans over OTLP/HTTP to %s as service %s, sampler %s",
                tracing.reason, tracing.endpoint, tracing.service_name, tracing.sampler,
            )  # fmt: skip
        else:
            log.info("tracing off: %s", tracing.reason)
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
            if state.tracing is not None:  # the spans still queued are sent (within FLUSH_TIMEOUT_S)
                running, state.tracing = state.tracing, None
                if not await asyncio.to_thread(running.shutdown):
                    log.warning("tracing: the spans still queued were not all sent within the flush timeout")

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
    if tracing.enabled:  # outermost: its span covers the whole request and sees the answer the client gets
        app.add_middleware(TracingMiddleware, state=state, excluded=tracing.excluded)
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
