"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it, then spans over OTLP/HTTP.

The rule (``tracing_plan``), read once when the app is built:

1. ``OTEL_SDK_DISABLED=true`` turns tracing off, whatever else is set;
2. ``OTEL_TRACES_EXPORTER``, when set, decides: ``otlp`` on, ``none`` off, any other exporter is refused;
3. unset, tracing is on when an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
   ``OTEL_EXPORTER_OTLP_ENDPOINT``), and off otherwise: unlike the SDK's own default (``otlp`` to
   ``localhost:4318``), a server nobody asked to trace sends nothing;
4. on, the protocol (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``) must be
   ``http/protobuf`` (the default): the image ships only the OTLP/HTTP exporter, so ``grpc`` (or ``http/json``) is
   refused at start with ``TracingError``, as are an endpoint that is not an ``http(s)://`` URL and a sampler
   (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``) the SDK does not know, which it would silently replace.

On, ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` (else ``OTEL_PYTHON_EXCLUDED_URLS``) names the request paths given no span.

Off, nothing here imports OpenTelemetry and the app adds no middleware: the request path runs as if tracing did not
exist, but for an ``is None`` test per micro-batch and per batch request. On, ``start_tracing`` builds this process's
``TracerProvider`` (in each uvicorn worker, from the app's lifespan: never in a parent that forks or spawns them)
with a ``BatchSpanProcessor`` over the OTLP/HTTP exporter, which reads its own variables (endpoint, headers,
timeout, compression, certificates), as the processor reads ``OTEL_BSP_*`` and the provider the sampler;
``Tracing.shutdown`` flushes what is queued when the server stops. ``docs/tracing.md`` lists the spans.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from app.contract.connection import SettingsError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

T = TypeVar("T")
DEFAULT_SERVICE_NAME: Final = "prediction-server"  # OTEL_SERVICE_NAME's default (the V2 server metadata's name)
TRACER_NAME: Final = "app"
FLUSH_TIMEOUT_S: Final = 5.0  # at most this long at stop to send the spans still queued; the rest are dropped
DEFAULT_ENDPOINT: Final = "http://localhost:4318"  # the SDK's, with OTEL_TRACES_EXPORTER=otlp and no endpoint
PROTOCOL: Final = "http/protobuf"
SAMPLERS: Final = frozenset(
    {"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
     "parentbased_traceidratio"}
)  # fmt: skip
RATIO_SAMPLERS: Final = frozenset({"traceidratio", "parentbased_traceidratio"})
# HTTP methods semantic conventions name as such; any other is "_OTHER" (with the original in another attribute).
KNOWN_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})


class TracingError(SettingsError):
    """The ``OTEL_*`` variables ask for tracing this server cannot do: refused at start, the variable named."""


@dataclass(frozen=True)
class TracingPlan:
    """Whether this server traces, and why (the start-up log line says it)."""

    enabled: bool
    reason: str
    endpoint: str = ""  # where spans go, when enabled
    service_name: str = ""
    sampler: str = ""
    excluded: re.Pattern[str] | None = None  # request paths given no span (probes, say), when asked for


def _value(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()


def tracing_plan(environ: Mapping[str, str]) -> TracingPlan:
    """The rule in this module's docstring, applied to ``environ``; ``TracingError`` for what cannot be done."""
    if _value(environ, "OTEL_SDK_DISABLED").lower() == "true":
        return TracingPlan(False, "OTEL_SDK_DISABLED=true")
    exporters = {name.strip().lower() for name in _value(environ, "OTEL_TRACES_EXPORTER").split(",")} - {""}
    traces_endpoint = _value(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_endpoint = _value(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporters:
        if unknown := sorted(exporters - {"otlp", "none"}):
            raise TracingError(
                f"OTEL_TRACES_EXPORTER={','.join(unknown)}: this server exports traces over OTLP only "
                "(OTEL_TRACES_EXPORTER=otlp, or none for no traces)"
            )
        if "otlp" not in exporters:
            return TracingPlan(False, "OTEL_TRACES_EXPORTER=none")
    elif not (traces_endpoint or base_endpoint):
        return TracingPlan(False, "no OTEL_TRACES_EXPORTER and no OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) set")

    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        if protocol := _value(environ, name):
            if protocol.lower() != PROTOCOL:
                raise TracingError(
                    f"{name}={protocol}: this server ships only the OTLP/HTTP exporter; set it to {PROTOCOL} (or "
                    "unset it) and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (4318 by "
                    "default), not its gRPC port (4317)"
                )
            break
    if traces_endpoint:
        endpoint, variable = traces_endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    else:
        base, variable = base_endpoint or DEFAULT_ENDPOINT, "OTEL_EXPORTER_OTLP_ENDPOINT"
        endpoint = f"{base.removesuffix('/')}/v1/traces"  # as the exporter appends the signal's path
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingError(f"{variable}: not an http:// or https:// URL with a host: {_redacted(endpoint)}")

    sampler = _value(environ, "OTEL_TRACES_SAMPLER").lower() or "parentbased_always_on"
    if sampler not in SAMPLERS:
        raise TracingError(f"OTEL_TRACES_SAMPLER={sampler}: not one of {', '.join(sorted(SAMPLERS))}")
    if sampler in RATIO_SAMPLERS and (argument := _value(environ, "OTEL_TRACES_SAMPLER_ARG")):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingError(f"OTEL_TRACES_SAMPLER_ARG={argument}: a ratio between 0 and 1 for {sampler}")
        sampler = f"{sampler}({ratio:g})"

    service_name = _value(environ, "OTEL_SERVICE_NAME") or _resource_service_name(environ) or DEFAULT_SERVICE_NAME
    why = "OTEL_TRACES_EXPORTER=otlp" if exporters else f"{variable} is set"
    return TracingPlan(True, why, _redacted(endpoint), service_name, sampler, _excluded(environ))


def _excluded(environ: Mapping[str, str]) -> re.Pattern[str] | None:
    """The paths to give no span: ``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS``, else ``OTEL_PYTHON_EXCLUDED_URLS`` (the
    OpenTelemetry FastAPI instrumentation's variables): comma-separated regular expressions, any of which found
    (``re.search``) in a request's path excludes it."""
    for name in ("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS"):
        if patterns := [pattern.strip() for pattern in _value(environ, name).split(",") if pattern.strip()]:
            try:
                return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
            except re.error as exc:
                raise TracingError(f"{name}: not comma-separated regular expressions: {exc}") from None
    return None


def _resource_service_name(environ: Mapping[str, str]) -> str:
    """``service.name`` from ``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,...``), if it is there."""
    for item in _value(environ, "OTEL_RESOURCE_ATTRIBUTES").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return ""


def _redacted(url: str) -> str:
    from app.contract.connection import redact

    return redact(url)


def start_tracing(plan: TracingPlan) -> Tracing:
    """This process's tracing for an enabled ``plan``: a ``TracerProvider`` (installed as the global one unless
    one is already), its ``BatchSpanProcessor`` and OTLP/HTTP exporter. Call it in the process that serves."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # the other OTEL_RESOURCE_ATTRIBUTES too; the process id tells the workers of one server apart
    resource = Resource.create({"service.name": plan.service_name, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER (checked by the plan)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # none installed yet in this process
        trace.set_tracer_provider(provider)
    return Tracing(provider)


class Tracing:
    """A process's running tracing: the spans the server makes, over ``provider``."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        self._trace = trace
        self._context = context
        self._propagator = TraceContextTextMapPropagator()  # W3C traceparent and tracestate

    # --- the server span (app.api.middleware.TracingMiddleware) ---

    def start_server_span(
        self, method: str, headers: Iterable[tuple[bytes, bytes]], attributes: dict[str, Any]
    ) -> tuple[Span, object]:
        """A SERVER span for a request, the caller's span (``traceparent``) its parent, made the current span;
        ``end_server_span`` with the token returned ends it."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        known = method if method in KNOWN_METHODS else "_OTHER"
        attributes["http.request.method"] = known
        if known != method:
            attributes["http.request.method_original"] = method
        span = self.tracer.start_span(
            known if known != "_OTHER" else "HTTP", parent, self._trace.SpanKind.SERVER, attributes
        )
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def end_server_span(
        self, span: Span, token: object, method: str, route: str | None, status: int | None, error: BaseException | None
    ) -> None:
        """Name the span by its route template (``POST /predict``; the method alone for a request no route
        matched), record the answer's status (an error from 500 up, or an exception), end it, restore the context."""
        from opentelemetry.trace import Status, StatusCode

        try:
            if route is not None:
                span.set_attribute("http.route", route)
                span.update_name(f"{method if method in KNOWN_METHODS else 'HTTP'} {route}")
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error is not None:
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
            elif status is not None and status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        finally:
            span.end()
            self._context.detach(token)  # type: ignore[arg-type]

    # --- the micro-batch and the model call (app.runtime.batching, app.runtime.served_model) ---

    def current_span(self) -> Span:
        """The span of the request being served here (the server span), or an invalid one outside a request."""
        return self._trace.get_current_span()

    def start_batch(self, requests: list[Span], size: int) -> Span | None:
        """The span of a micro-batch holding the rows of ``requests`` (their server spans, in arrival order), or
        None when none of them has one (paths excluded from tracing).

        A batch has one parent however many requests it serves: the first request's span, whose row opened it.
        The others are links of the batch span, and each of their spans gets a ``microbatch`` event naming the
        batch's trace and span, so every request's trace says which batch predicted its row.
        """
        requests = [span for span in requests if span.get_span_context().is_valid]
        if not requests:
            return None
        context = self._trace.set_span_in_context(requests[0])
        links = [self._trace.Link(span.get_span_context()) for span in requests[1:]]
        span = self.tracer.start_span("microbatch", context, attributes={"microbatch.size": size}, links=links)
        if len(requests) > 1:
            batch = span.get_span_context()
            event: dict[str, str | int] = {
                "microbatch.size": size,
                "microbatch.trace_id": self._trace.format_trace_id(batch.trace_id),
                "microbatch.span_id": self._trace.format_span_id(batch.span_id),
            }
            for request in requests[1:]:
                request.add_event("microbatch", event)
        return span

    def end_batch(self, span: Span, error: BaseException | None) -> None:
        if error is not None:
            self._fail(span, error)
        span.end()

    def under(self, span: Span) -> Context:
        """A context whose current span is ``span``: the parent to give a span started on another thread."""
        return self._trace.set_span_in_context(span)

    def model_call(self, parent: Context, rows: int, call: Callable[[], T]) -> T:
        """``call()`` (the model's prediction of ``rows`` rows) in a ``model.predict`` span under ``parent``, a
        context given explicitly: the call runs on a batch thread (or in a callback of the event loop), where the
        request's context is not the current one."""
        with self.tracer.start_as_current_span("model.predict", parent, attributes={"model.rows": rows}):
            return call()

    def bind_model_call(self, rows: int, call: Callable[[], T]) -> Callable[[], T]:
        """``call`` to run on another thread in a ``model.predict`` span under the span current here and now."""
        if not self._trace.get_current_span().get_span_context().is_valid:  # an excluded path: no request span
            return call
        context = self._context.get_current()
        return lambda: self.model_call(context, rows, call)

    def _fail(self, span: Span, error: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))

    # --- stop ---

    def shutdown(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Flush the spans still queued and stop the exporter, waiting at most ``timeout_s`` (a collector that does
        not answer must not hold the server's stop): whether it finished in time."""
        stopping = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout_s)
        return not stopping.is_alive()
