"""Where a refusal becomes an answer, for every route: the one renderer and the route classes that call it.

A refusal carries its status: ``RequestError`` (400, 404, 413, 415 or 422, with field-level errors),
``NotReadyError`` and ``OverloadedError`` (503, answered with ``Retry-After``). Each protocol gives the shape of
its error body (``ErrorShape``): the records API's ``{"detail": ..., "request_id": ...}`` (``RECORDS``), V2's
``{"error": "..."}`` (``app.api.routes.v2``). A route answers in its router's shape (``ShapedRoute``); anything else
it raises propagates to the middleware (a 500 carrying the request id). What no route answers (a path no route
has: 404; a method its route does not take: 405) and the middleware's own 500 and 503 are in the shape of the
protocol whose path prefix the request is under (``Shapes``, given by the app's assembly), the records API's
elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.api.deps import JSON
from app.model.schema import RequestError
from app.observability import request_id_var
from app.runtime.admission import RETRY_AFTER_S, OverloadedError
from app.runtime.state import NotReadyError

Refusal = RequestError | NotReadyError | OverloadedError
REFUSALS = (RequestError, NotReadyError, OverloadedError)
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


@dataclass(frozen=True)
class ErrorShape:
    """A protocol's error answers: the body of each refusal, and the status it answers for a refusal's own."""

    body: Callable[[Refusal], dict[str, Any]]
    statuses: Mapping[int, int] = field(default_factory=dict)


def records_body(exc: Refusal) -> dict[str, Any]:
    """The records API's error body: ``detail`` (the field-level errors, or the reason) and the request id."""
    if isinstance(exc, RequestError):
        body: dict[str, Any] = {"detail": exc.errors, "request_id": request_id_var.get()}
        if exc.more:
            body["more_errors"] = exc.more  # errors left out of ``detail`` (MAX_LISTED_ERRORS)
        return body
    if isinstance(exc, NotReadyError):
        return {"detail": f"not ready: {exc.reason}", "status": exc.phase, "request_id": request_id_var.get()}
    return {"detail": exc.reason, "status": "overloaded", "request_id": request_id_var.get()}


RECORDS = ErrorShape(records_body)


def render(exc: Refusal, shape: ErrorShape) -> JSON:
    """The answer to ``exc`` in ``shape``: its status, and ``Retry-After`` on a 503 (not ready, or shed)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
    return JSON(shape.body(exc), status_code=shape.statuses.get(exc.status, exc.status), headers=headers)


def rendering(handler: Endpoint, shape: ErrorShape) -> Endpoint:
    """``handler`` answering its refusals in ``shape``."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except REFUSALS as exc:
            return render(exc, shape)

    return answer


class ShapedRoute(APIRoute):
    """A route answering every refusal (its dependencies' too) in its protocol's ``shape``."""

    shape: ClassVar[ErrorShape] = RECORDS

    def get_route_handler(self) -> Endpoint:
        return rendering(super().get_route_handler(), self.shape)


class DirectRoute(ShapedRoute):
    """A route whose endpoint takes the request alone and is called with it directly, documented as any route.

    FastAPI's own handler solves the endpoint's dependencies, parses its query and body parameters and
    serializes its return value on every request: here the endpoint reads and validates its body itself and
    returns a response, so that work (more per request than the whole floor endpoint of ``bench.serve``) is
    skipped. ``app.api.middleware.DirectRoutes`` calls ``handler`` without the router.
    """

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        self.handler = rendering(endpoint, self.shape)
        return self.handler


Shapes = Mapping[str, ErrorShape]  # a protocol's error shape by the path prefix of its routes ("/v2")


def shape_for(path: str, shapes: Shapes) -> ErrorShape | None:
    """The error shape of the protocol ``path`` is under (the prefix itself, or below it), if any."""
    for prefix, shape in shapes.items():
        if path == prefix or path.startswith(prefix + "/"):
            return shape
    return None


def failure(status: int, message: str) -> RequestError:
    """A refusal no route raised (no such endpoint, a method not allowed, a failure of the server), to render."""
    return RequestError(status, [{"loc": [], "msg": message, "type": "server"}])


def http_errors(shapes: Shapes) -> Handler:
    """The answer to Starlette's ``HTTPException`` (raised by the router: 404 for a path no route has, 405 for a
    method its route does not take, with ``Allow``) in the shape of the protocol the path is under; FastAPI's own
    ``{"detail": ...}`` elsewhere."""

    async def answer(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        path, method = request.scope["path"], request.scope["method"]
        shape = shape_for(path, shapes)
        if shape is None:
            return await http_exception_handler(request, exc)
        if exc.status_code == 404:
            message = f"no endpoint {method} {path} on this server"
        elif exc.status_code == 405:
            message = f"{method} is not allowed on {path}; allowed: {(exc.headers or {}).get('Allow', 'none')}"
        else:
            message = str(exc.detail)
        response = render(failure(exc.status_code, message), shape)
        response.headers.update(exc.headers or {})
        return response

    return answer
