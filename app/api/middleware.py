"""The ASGI middleware around every request: its id, its log line and metrics, and the answers no route gives; its
span, when tracing is on; and the middleware that serves the prediction routes without the router."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Final

import orjson
from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import DirectRoute, Shapes, failure, shape_for
from app.observability import LOGGER_NAME, ServerMetrics, log_request, request_id_var
from app.runtime.admission import RETRY_AFTER_S
from app.runtime.state import ServingState

CLIENT_CLOSED: Final = 499  # the status logged and counted for a request whose client disconnected (nginx's)
# A client's X-Request-ID is kept only if it is short and harmless in a log line; otherwise one is made.
REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_log = logging.getLogger(LOGGER_NAME)


class RequestContextMiddleware:
    """Pure ASGI middleware: request id (``X-Request-ID`` honoured or made, and returned), one log line and
    the metrics per request, and a JSON 500 carrying the request id (never internals) for unhandled errors, in the
    error shape of the protocol the path is under (``shapes``), the records API's otherwise."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, shapes: Shapes | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.shapes: Shapes = shapes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or secrets.token_hex(16)
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing went wrong here
            status = CLIENT_CLOSED
        except asyncio.CancelledError:  # DRAIN_TIMEOUT_S passed during shutdown: closed, not failed
            status = 503
            if not responded:
                closing = [(b"connection", b"close"), (b"retry-after", str(RETRY_AFTER_S).encode())]
                await self._answer(scope, send, 503, "the server is shutting down; retry", [*closing, header])
        except Exception:
            _log.exception("unhandled error", extra={"method": scope["method"], "path": scope["path"]})
            status = 500
            if not responded:
                await self._answer(scope, send, 500, "internal server error", [header])
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status, seconds)
            log_request(route, scope["method"], scope["path"], status, seconds, request_id)
            request_id_var.reset(token)

    async def _answer(
        self, scope: Scope, send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A JSON error answer the middleware writes itself (no route answered): ``detail`` and the request id, in
        the error shape of the path's protocol if it has one."""
        request_id = request_id_var.get()
        shape = shape_for(scope["path"], self.shapes)
        content = (
            {"detail": detail, "request_id": request_id}
            if shape is None
            else shape.body(failure(status, f"{detail} (request id {request_id})"))
        )
        body = orjson.dumps(content)
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})


class TracingMiddleware:
    """Pure ASGI middleware, outermost, added only when tracing is on (``app.tracing``): a SERVER span per request,
    child of the caller's span when a W3C ``traceparent`` header names one, named by the route template
    (``POST /predict``), with the method, route, status (an error from 500 up) and the model being served when the
    request arrived. Outermost, it sees the answer the client gets, the request context's own 500 and 503 too. A
    path ``excluded`` matches gets no span (nor micro-batch and model spans: they find no request span to join)."""

    def __init__(self, app: ASGIApp, state: ServingState, excluded: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.state = state
        self.excluded = excluded  # paths given no span (OTEL_PYTHON_EXCLUDED_URLS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracing = self.state.tracing
        if (
            tracing is None  # not started yet (or stopped): nothing to trace with
            or scope["type"] != "http"
            or (self.excluded is not None and self.excluded.search(scope["path"]))
        ):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        span, token = tracing.start_server_span(method, scope["headers"], self._attributes(scope))
        status: int | None = None

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            error = exc
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            tracing.end_server_span(span, token, method, route, status, error)

    def _attributes(self, scope: Scope) -> dict[str, object]:
        attributes: dict[str, object] = {
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            "model.name": self.state.settings.model_name,
        }
        if (client := scope.get("client")) is not None:
            attributes["client.address"] = client[0]
        if (served := self.state.model) is not None:  # the model a request that starts now is answered by
            attributes["model.bundle_hash"] = served.content_hash
            if served.version is not None:
                attributes["model.version"] = str(served.version)
        return attributes


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if REQUEST_ID.fullmatch(text) else None
    return None


class DirectRoutes:
    """ASGI middleware that serves the app's ``DirectRoute`` routes straight from the request.

    A request whose method and exact path are such a route's skips Starlette's exception middleware, FastAPI's
    exit stack and the router: a third of a single-record prediction's time on the event loop. What answers
    is the same route handler, refusals rendered as the route renders them; anything else propagates as it would
    from the router. Other requests, and other methods on those paths, go on to the app.
    """

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi
        self._routes: dict[tuple[str, str], DirectRoute] | None = None

    def route(self, method: str, path: str) -> DirectRoute | None:
        if self._routes is None:  # known once the routers are included, which is after the middleware is added
            self._routes = {
                (method, route.path): route
                for route in self.fastapi.routes
                if isinstance(route, DirectRoute)
                for method in route.methods
            }
        return self._routes.get((method, path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the request log line and the metrics name
        response = await route.handler(Request(scope, receive, send))
        await response(scope, receive, send)
