"""A tiny OTLP/HTTP trace receiver on 127.0.0.1: what a collector's ``/v1/traces`` endpoint gets, decoded with the
protocol's own messages (``opentelemetry-proto``), for tests to read back the spans a server exported."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness.services import LOOPBACK


def value_of(value: AnyValue) -> Any:
    """An attribute's value as Python (the kinds the server sends: string, int, double, bool)."""
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, its ids as lowercase hex (as in ``traceparent``), empty ``parent_span_id`` for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    links: list[tuple[str, str]]  # (trace id, span id) of each link
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]


@dataclass
class Receiver:
    """The receiver's address and what it got: every span, and every export request's path."""

    url: str
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout: float = 15) -> list[ReceivedSpan]:
        """The spans received once ``found`` holds for them (raise when it does not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found(spans := self.received()):
                return spans
            time.sleep(0.05)
        raise TimeoutError(f"not received within {timeout}s; got {[s.name for s in self.received()]}")

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: value_of(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            events=[(e.name, {a.key: value_of(a.value) for a in e.attributes}) for e in span.events],
                            resource=resource,
                        )
                    )
        with self.lock:
            self.spans.extend(spans)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            with receiver.lock:
                receiver.posts.append(self.path)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(404 if self.path != "/v1/traces" else 415)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            receiver.add(request)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """An OTLP/HTTP receiver on a free port of 127.0.0.1 (its base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes),
    stopped on exit."""
    server = ThreadingHTTPServer((LOOPBACK, 0), BaseHTTPRequestHandler)
    receiver = Receiver(f"http://{LOOPBACK}:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(receiver)
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
