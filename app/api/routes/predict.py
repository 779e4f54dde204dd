"""Predictions: one record (micro-batched with concurrent ones) or a batch of records in one model call.

The request bodies are read and validated here rather than by FastAPI's body parsing: the size limit is
enforced while the body streams, and pydantic-core validates straight from the bytes against the models
built from the bundle (``app.model.schema``). The OpenAPI document shows those models (``app.api.openapi``) through
``request_bodies``. Every failed prediction request is counted here, by route and reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import JSON, read_json_body, served_model, serving_state
from app.model.schema import BATCH_MODEL, RECORD_MODEL, RequestError
from app.observability import ServerMetrics
from app.runtime.admission import OverloadedError

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestOnlyRoute(APIRoute):
    """A route whose endpoint takes the request alone and is called with it directly, documented as any route.

    FastAPI's own handler solves the endpoint's dependencies, parses its query and body parameters and
    serializes its return value on every request: here the endpoint reads and validates its body itself and
    returns a response, so that work (more per request than the whole floor endpoint of ``bench.serve``) is
    skipped.
    """

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class DirectRoutes:
    """ASGI middleware that serves the app's ``RequestOnlyRoute`` routes straight from the request.

    A request whose method and exact path are such a route's skips Starlette's exception middleware, FastAPI's
    exit stack and the router: a third of a single-record prediction's time on the event loop. What answers
    is the same endpoint, and the app's exception handlers still answer the exceptions they handle; anything
    else propagates as it would from the router. Other requests, and other methods on those paths, go on to
    the app.
    """

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi
        self._routes: dict[tuple[str, str], RequestOnlyRoute] | None = None

    def route(self, method: str, path: str) -> RequestOnlyRoute | None:
        if self._routes is None:  # known once the routers are included, which is after the middleware is added
            self._routes = {
                (method, route.path): route
                for route in self.fastapi.routes
                if isinstance(route, RequestOnlyRoute)
                for method in route.methods
            }
        return self._routes.get((method, path))

    def handler(self, exc: Exception) -> ExceptionHandler | None:
        handlers: dict[Any, ExceptionHandler] = self.fastapi.exception_handlers  # by exception class
        return next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the request log line and the metrics name
        request = Request(scope, receive, send)
        endpoint: Endpoint = route.endpoint
        try:
            response = await endpoint(request)
        except Exception as exc:
            if (handler := self.handler(exc)) is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


router = APIRouter(tags=["predict"], route_class=RequestOnlyRoute)

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


class PredictResponse(BaseModel):
    prediction: float
    model_version: int | None
    bundle_hash: str


class PredictBatchResponse(BaseModel):
    predictions: list[float]
    model_version: int | None
    bundle_hash: str


def request_body(model_name: str, example: object | None = None) -> dict[str, Any]:
    """The OpenAPI request body of a route whose JSON body is the request model ``model_name``."""
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model_name}"}}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


def request_bodies(example: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each prediction route's request body, with the loaded bundle's example record."""
    return {
        RECORD_PATH: request_body(RECORD_MODEL, example),
        BATCH_PATH: request_body(BATCH_MODEL, {"records": [example]}),
    }


@contextmanager
def counting_failures(metrics: ServerMetrics, route: str) -> Iterator[None]:
    """Count a request that fails: ``invalid`` for a refused body, ``disconnected`` when the client went away
    mid-body, ``overloaded`` when it was shed, ``model`` for anything else."""
    try:
        yield
    except RequestError:
        metrics.prediction_errors.labels(route, "invalid").inc()
        raise
    except OverloadedError:
        metrics.prediction_errors.labels(route, "overloaded").inc()
        raise
    except ClientDisconnect:
        metrics.prediction_errors.labels(route, "disconnected").inc()
        raise
    except Exception:
        metrics.prediction_errors.labels(route, "model").inc()
        raise


@router.post(
    RECORD_PATH,
    summary="Predict one record",
    responses={200: {"model": PredictResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra={"requestBody": request_body(RECORD_MODEL)},
)
async def predict_record(request: Request) -> JSON:
    state = serving_state(request)
    served = served_model(state)
    batcher, admission = served.batcher, state.admission
    served.usage.active += 1  # a model swapped out meanwhile is closed only after this request
    try:
        with counting_failures(state.metrics, RECORD_PATH):
            admission.check_room()  # shed before the body is read
            batcher.expect()  # lets the micro-batcher wait (bounded) for this record while it is read
            try:
                row = served.schema.parse_record(await read_json_body(request, state.settings.max_body_bytes))
            finally:
                batcher.arrived()
            served.check_open()
            with admission.admitted(1):
                prediction = await admission.answer(batcher.submit(row))
    finally:
        served.usage.active -= 1
    state.metrics.predicted_rows.labels(RECORD_PATH).inc()
    return JSON({"prediction": prediction, "model_version": served.version, "bundle_hash": served.content_hash})


@router.post(
    BATCH_PATH,
    summary="Predict up to MAX_BATCH_RECORDS records in one vectorised call",
    responses={200: {"model": PredictBatchResponse}, **ERRORS},  # type: ignore[dict-item]
    openapi_extra={"requestBody": request_body(BATCH_MODEL)},
)
async def predict_batch(request: Request) -> JSON:
    state = serving_state(request)
    served = served_model(state)
    served.usage.active += 1
    try:
        with counting_failures(state.metrics, BATCH_PATH):
            state.admission.check_room()  # shed before the body is read
            rows = served.schema.parse_batch(await read_json_body(request, state.settings.max_body_bytes))
            with state.admission.admitted(len(rows)):
                predictions = await state.admission.answer(served.run_batch(rows))
    finally:
        served.usage.active -= 1
    state.metrics.predicted_rows.labels(BATCH_PATH).inc(len(rows))
    return JSON({"predictions": predictions, "model_version": served.version, "bundle_hash": served.content_hash})
