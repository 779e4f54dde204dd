"""What a connection may cost the server before the app sees its request: the bounds a proxy such as Envoy or
nginx would put in front, kept by the HTTP protocol itself (``uvicorn --http app.api.limits:BoundedHttpProtocol``,
which the entrypoint passes).

- The request line and headers: at most ``MAX_HEADER_BYTES`` bytes and ``MAX_HEADERS`` headers (431), sent
  within ``HEADER_TIMEOUT_S`` of the connection opening or the request's first byte (408; an idle connection is
  closed without an answer).
- The body: sent whole within ``BODY_TIMEOUT_S`` of the headers (408). A slow or stalled body is closed, so the
  bytes it made the server hold are freed.
- Body bytes in flight: a request declaring a body reserves its size (``Content-Length``, capped at
  ``MAX_BODY_BYTES``; a chunked one reserves ``MAX_BODY_BYTES``) from the worker's ``MAX_BODY_BYTES_IN_FLIGHT``
  until its response is sent. One that does not fit is answered 503 with ``Retry-After`` before any of its body
  is read.

A refusal here is written by the protocol, in the app's error shape (``{"detail": ...}``), and closes the
connection: its unread bytes are never read. Every limit comes from the settings (``app.settings``), read once
per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, ClassVar, Final

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.runtime.admission import RETRY_AFTER_S
from app.settings import Settings, get_settings

LOG_EVERY_S: Final = 1.0  # refusals of one status are logged at most this often


class Refused(Exception):
    """Raised inside a parser callback once the request has been answered and its connection closed: it stops
    the parser from going on with the rest of the bytes."""


class BodyBudget:
    """The body bytes one worker's connections have reserved (event loop only)."""

    def __init__(self) -> None:
        self.reserved = 0

    def take(self, size: int, limit: int) -> bool:
        if self.reserved + size > limit:
            return False
        self.reserved += size
        return True

    def give_back(self, size: int) -> None:
        self.reserved -= size


class Refusals:
    """One log line per status and second at most, counting the refusals it stands for: a flood of hostile
    connections must not become a flood of log lines (event loop only)."""

    def __init__(self) -> None:
        self.last_logged: dict[int, float] = {}
        self.unlogged: dict[int, int] = {}

    def note(self, status: int, detail: str, logger: logging.Logger) -> None:
        now = time.monotonic()
        if now - self.last_logged.get(status, -LOG_EVERY_S) < LOG_EVERY_S:
            self.unlogged[status] = self.unlogged.get(status, 0) + 1
            return
        also = self.unlogged.pop(status, 0)
        self.last_logged[status] = now
        logger.warning(
            "refused a request before the app: %d %s%s", status, detail, f" (and {also} more since)" if also else ""
        )


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, timing and in-flight bounds (see the module docstring)."""

    budget: ClassVar[BodyBudget] = BodyBudget()  # shared by every connection of this worker
    refusals: ClassVar[Refusals] = Refusals()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: Settings = get_settings()  # the server's settings, read once per process
        self._awaiting_headers = True  # between a request's first byte (or the connection opening) and its headers
        self._header_bytes = 0
        self._header_count = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._reservations: deque[int] = deque()  # body bytes reserved per request, oldest first (pipelining)

    # The connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        while self._reservations:
            self.budget.give_back(self._reservations.popleft())
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # answered and closed: the rest is never read
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Refused):
                return
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        if self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes")

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    # The request's parts, as the parser sees them
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._header_count = 0
        if self._header_timer is None:
            self._start_header_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"the request has more than {self.limits.max_headers} headers")
            raise Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        reserve = self._body_size()
        if reserve:
            if not self.budget.take(reserve, self.limits.max_body_bytes_in_flight):
                self._refuse(
                    503,
                    f"overloaded: request bodies already in flight leave no room for {reserve} more bytes "
                    f"(MAX_BODY_BYTES_IN_FLIGHT={self.limits.max_body_bytes_in_flight})",
                    retry_after=True,
                )
                raise Refused
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_too_slow)
        self._reservations.append(reserve)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._reservations:
            self.budget.give_back(self._reservations.popleft())
        super().on_response_complete()

    def _body_size(self) -> int:
        """What the request's body may cost: its declared length (at most ``MAX_BODY_BYTES``, past which the app
        refuses it), ``MAX_BODY_BYTES`` for a chunked one, 0 without one."""
        for name, value in self.headers:
            if name == b"content-length":
                return min(int(value), self.limits.max_body_bytes) if value.isdigit() else 0
            if name == b"transfer-encoding":
                return self.limits.max_body_bytes
        return 0

    # Timers
    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # an idle connection: nothing to answer
            return
        self._refuse(
            408,
            f"the request line and headers did not arrive within HEADER_TIMEOUT_S={self.limits.header_timeout_s:g}s",
        )

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        cycle.disconnected = True  # the app's next receive() is a disconnect; its sends are dropped
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
            return
        cycle.response_started = True
        self._refuse(408, f"the request body did not arrive within BODY_TIMEOUT_S={self.limits.body_timeout_s:g}s")

    # Answering without the app
    def _refuse(self, status: int, detail: str, *, retry_after: bool = False) -> None:
        """Answer ``status`` with ``detail`` in the app's error shape and close the connection."""
        self._cancel_timers()
        body = orjson.dumps({"detail": detail})
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_S)
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
        self.refusals.note(status, detail, self.logger)
