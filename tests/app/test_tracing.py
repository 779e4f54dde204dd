"""OpenTelemetry tracing (``app.tracing``): the rule that turns it on from the standard ``OTEL_*`` variables; the
micro-batch's span, parented and linked across the requests it serves; the server span's status; and real uvicorn
processes exporting to a real OTLP/HTTP receiver (``tests.harness.otlp``), or, with tracing off, importing no
OpenTelemetry and sending nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from starlette.types import Message, Receive, Scope, Send

from app.api.middleware import TracingMiddleware
from app.api.server import create_app
from app.contract.bundle import load_bundle
from app.runtime.batching import MicroBatcher
from app.runtime.state import ServingState
from app.tracing import DEFAULT_SERVICE_NAME, Tracing, TracingError, tracing_plan
from tests.harness.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import records, settings_for

VERSION = 7
ENDPOINT = "http://collector:4318"

# --- the rule: which variables turn tracing on ---


@pytest.mark.parametrize(
    ("environ", "enabled", "reason"),
    [
        ({}, False, "no OTEL_TRACES_EXPORTER and no OTLP endpoint"),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False, "no OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True, "OTEL_EXPORTER_OTLP_ENDPOINT is set"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{ENDPOINT}/v1/traces"}, True, "TRACES_ENDPOINT is set"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True, "OTEL_TRACES_EXPORTER=otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False, "OTEL_TRACES_EXPORTER=none"),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, False, "OTEL_SDK_DISABLED=true"),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True, "ENDPOINT is set"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False, "OTEL_SDK_DISABLED"),
        ({"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False, "no OTEL_TRACES_EXPORTER"),
    ],
)
def test_the_rule_turns_tracing_on_only_when_asked(environ: dict[str, str], enabled: bool, reason: str) -> None:
    plan = tracing_plan(environ)
    assert (plan.enabled, reason in plan.reason) == (enabled, True), plan


def test_the_plan_names_where_spans_go_and_as_which_service() -> None:
    assert tracing_plan({"OTEL_TRACES_EXPORTER": "otlp"}).endpoint == "http://localhost:4318/v1/traces"  # the SDK's
    base = tracing_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": f"{ENDPOINT}/"})
    assert (base.endpoint, base.service_name, base.sampler) == (
        f"{ENDPOINT}/v1/traces",
        DEFAULT_SERVICE_NAME,
        "parentbased_always_on",
    )
    signal = tracing_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"})
    assert signal.endpoint == "http://t/x"  # the signal's own endpoint is used as is, and wins
    named = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_RESOURCE_ATTRIBUTES": "a=b,service.name=from-attributes"}
    assert tracing_plan(named).service_name == "from-attributes"
    assert tracing_plan({**named, "OTEL_SERVICE_NAME": "svc"}).service_name == "svc"  # OTEL_SERVICE_NAME wins
    ratio = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    assert tracing_plan({**ratio, "OTEL_TRACES_SAMPLER_ARG": "0.25"}).sampler == "parentbased_traceidratio(0.25)"
    excluded = tracing_plan({**named, "OTEL_PYTHON_EXCLUDED_URLS": "health, ^/metrics$"}).excluded
    assert excluded is not None and [
        bool(excluded.search(p)) for p in ("/v2/health/ready", "/metrics", "/predict")
    ] == [
        True,
        True,
        False,
    ]
    fastapi = {"OTEL_PYTHON_EXCLUDED_URLS": "health", "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "predict"}
    excluded = tracing_plan({**named, **fastapi}).excluded  # the FastAPI instrumentation's own variable wins
    assert excluded is not None and excluded.search("/predict") and not excluded.search("/health/live")
    assert tracing_plan(named).excluded is None
    secret = tracing_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:hunter22@collector:4318"})
    assert "hunter22" not in secret.endpoint and "collector:4318" in secret.endpoint  # the log line shows it


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this server ships only"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "TRACES_PR"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: this server exports traces over OTLP"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER=console"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER=sometimes: not one of always_off"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "a ratio between 0 and 1"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "SAMPLER_ARG=half"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: not an http:// or https://"),
        ({"OTEL_PYTHON_EXCLUDED_URLS": "health,(unclosed"}, "OTEL_PYTHON_EXCLUDED_URLS: not comma-separated regular"),
    ],
)
def test_what_the_server_cannot_do_is_refused_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TracingError, match=message.replace("(", r"\(")):
        tracing_plan({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, **environ})


def test_create_app_refuses_grpc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(TracingError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        create_app(settings_for(tmp_path), configure_logs=False)


# --- spans in-process, over an in-memory exporter (never the global provider) ---


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider), exporter
    provider.shutdown()


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format_span_id(span.parent.span_id)


def test_a_batch_of_several_requests_is_a_child_of_the_first_and_links_the_others(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """Three requests, each in its own trace, whose rows go in one model call (the thread is busy with a fourth
    meanwhile): the batch span is the first one's child, links the other two, and the model call is its child,
    made on the batch thread."""
    tracing, exporter = memory
    released = asyncio.Event()

    def predict(rows: list[int]) -> np.ndarray[Any, np.dtype[np.float64]]:
        if rows == [0]:  # hold the thread until the three others are waiting
            asyncio.run_coroutine_threadsafe(released.wait(), loop).result(5)
        return np.asarray(rows, dtype=np.float64) * 2

    async def request(batcher: MicroBatcher[int], row: int) -> float:
        with tracing.tracer.start_as_current_span(f"request {row}", kind=SpanKind.SERVER):
            return await batcher.submit(row)

    async def scenario() -> list[float]:
        batcher: MicroBatcher[int] = MicroBatcher(predict, max_size=8, max_wait_s=0, tracing=tracing)
        first = asyncio.create_task(request(batcher, 0))
        await asyncio.sleep(0.05)  # row 0 is on the thread
        others = [asyncio.create_task(request(batcher, row)) for row in (1, 2, 3)]
        await asyncio.sleep(0.05)
        released.set()
        answers = await asyncio.gather(first, *others)
        await batcher.close()
        return answers

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) == [0.0, 2.0, 4.0, 6.0]
    finally:
        loop.close()
    spans = exporter.get_finished_spans()
    requests = {span.name: span for span in spans if span.name.startswith("request")}
    batches = [span for span in spans if span.name == "microbatch"]
    models = [span for span in spans if span.name == "model.predict"]
    assert [b.attributes["microbatch.size"] for b in batches] == [1, 3]  # type: ignore[index]
    assert [m.attributes["model.rows"] for m in models] == [1, 3]  # type: ignore[index]
    joined = batches[1]
    first_trace, first_span = ids(requests["request 1"])
    assert ids(joined)[0] == first_trace and parent_id(joined) == first_span
    assert [ids(requests["request 2"]), ids(requests["request 3"])] == [
        (format_trace_id(link.context.trace_id), format_span_id(link.context.span_id)) for link in joined.links
    ]
    for name in ("request 2", "request 3"):  # each request's own trace names the batch its row went in
        [event] = requests[name].events
        assert event.name == "microbatch" and event.attributes == {
            "microbatch.size": 3,
            "microbatch.trace_id": ids(joined)[0],
            "microbatch.span_id": ids(joined)[1],
        }
    assert ids(models[1])[0] == ids(joined)[0] and parent_id(models[1]) == ids(joined)[1]
    assert parent_id(batches[0]) == ids(requests["request 0"])[1] and parent_id(models[0]) == ids(batches[0])[1]


def test_rows_of_requests_without_a_span_make_no_batch_or_model_spans(
    memory: tuple[Tracing, InMemorySpanExporter],
) -> None:
    """A path excluded from tracing has no server span: its rows' batch and model call make no root spans either."""
    tracing, exporter = memory

    async def scenario() -> list[float]:
        batcher: MicroBatcher[int] = MicroBatcher(
            lambda rows: np.ones(len(rows)), max_size=8, max_wait_s=0, tracing=tracing
        )
        answers = await asyncio.gather(*(batcher.submit(row) for row in range(3)))
        await batcher.close()
        return answers

    assert asyncio.run(scenario()) == [1.0, 1.0, 1.0]
    assert exporter.get_finished_spans() == ()


def test_a_failed_model_call_marks_the_batch_and_the_model_spans(memory: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = memory

    def predict(rows: list[int]) -> np.ndarray[Any, np.dtype[np.float64]]:
        raise RuntimeError("the model broke")

    async def scenario() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(predict, max_size=8, max_wait_s=0, tracing=tracing)
        with tracing.tracer.start_as_current_span("request"), pytest.raises(RuntimeError, match="the model broke"):
            await batcher.submit(1)
        await batcher.close()

    asyncio.run(scenario())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    for name in ("microbatch", "model.predict"):
        assert spans[name].status.status_code is StatusCode.ERROR
        assert [event.name for event in spans[name].events] == ["exception"]


@dataclass
class Answering:
    """An ASGI app answering ``status`` for a route it names, or raising."""

    status: int
    raises: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = type("Route", (), {"path": "/things/{id}"})()
        if self.raises:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def served(
    memory: tuple[Tracing, InMemorySpanExporter],
    app: Answering,
    tmp_path: Path,
    headers: list[tuple[bytes, bytes]],
    excluded: re.Pattern[str] | None = None,
) -> tuple[ReadableSpan, ...]:
    """The spans of one request to ``app`` through the tracing middleware."""
    tracing, exporter = memory
    state = ServingState.for_settings(settings_for(tmp_path))
    state.tracing = tracing
    middleware = TracingMiddleware(app, state, excluded)
    scope = {"type": "http", "method": "GET", "path": "/things/1", "headers": headers, "client": ("10.0.0.1", 5)}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    async def call() -> None:
        await middleware(scope, receive, send)

    with contextlib.suppress(RuntimeError):  # what the raising app raised, after the span ended
        asyncio.run(call())
    return exporter.get_finished_spans()


@pytest.mark.parametrize(
    ("app", "status", "error"),
    [
        (Answering(200), 200, False),
        (Answering(404), 404, False),
        (Answering(503), 503, True),
        (Answering(500, raises=True), None, True),
    ],
)
def test_the_server_span_names_the_route_and_marks_server_errors(
    memory: tuple[Tracing, InMemorySpanExporter], tmp_path: Path, app: Answering, status: int | None, error: bool
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    [span] = served(memory, app, tmp_path, [(b"traceparent", f"00-{trace_id}-{caller}-01".encode())])
    assert span.name == "GET /things/{id}" and span.kind is SpanKind.SERVER
    assert ids(span)[0] == trace_id and parent_id(span) == caller
    attributes = dict(span.attributes or {})
    assert attributes.get("http.response.status_code") == status
    assert {k: attributes[k] for k in ("http.request.method", "http.route", "url.path", "model.name")} == {
        "http.request.method": "GET",
        "http.route": "/things/{id}",
        "url.path": "/things/1",
        "model.name": "flight-price",
    }
    assert span.status.status_code is (StatusCode.ERROR if error else StatusCode.UNSET)
    if app.raises:
        assert attributes["error.type"] == "RuntimeError" and span.events[0].name == "exception"


def test_an_excluded_path_gets_no_span(memory: tuple[Tracing, InMemorySpanExporter], tmp_path: Path) -> None:
    assert served(memory, Answering(200), tmp_path, [], re.compile("^/things/")) == ()
    assert len(served(memory, Answering(200), tmp_path, [], re.compile("^/health"))) == 1


# --- real uvicorn processes and a real OTLP/HTTP receiver ---


@pytest.mark.integration
def test_the_entrypoint_refuses_grpc_at_start_naming_the_variable(bundle_dir: Path) -> None:
    env = {
        **os.environ,
        "BUNDLE_DIR": str(bundle_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.entrypoint"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2  # the settings' exit code, before any delivery
    assert "entrypoint: error: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this server ships only the OTLP/HTTP exporter" in (
        done.stderr
    )


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with otlp_receiver() as receiver:
        yield receiver


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


@pytest.fixture(scope="module")
def traced_server(bundle_dir: Path, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """uvicorn with two worker processes, as production runs it (``WORKERS=2``), exporting to the receiver."""
    port = free_port()
    env = {
        "BUNDLE_DIR": str(bundle_dir),
        "MODEL_VERSION": str(VERSION),
        "MLFLOW_TRACKING_URI": "",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "flight-price-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: spans leave within a tenth of a second
        "OTEL_PYTHON_EXCLUDED_URLS": "^/health/",  # the readiness polls below
    }
    log = tmp_path_factory.mktemp("traced") / "server.log"
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port), "--workers", "2"]
    url = f"http://{LOOPBACK}:{port}"
    with running(args, f"{url}/health/ready", env=env, timeout=120, log=log) as process:
        yield Server(url, process.pid, log)


def post(client: httpx.Client, path: str, body: Any, headers: Mapping[str, str] | None = None) -> httpx.Response:
    """POST, retrying the 503 a worker still loading the bundle answers (as a client does)."""
    deadline = time.monotonic() + 60
    while True:
        answer = client.post(path, json=body, headers=dict(headers or {}))
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def trace_of(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans if span.trace_id == trace_id}


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.integration
def test_a_real_server_exports_each_requests_spans_under_the_callers_trace(
    traced_server: Server, receiver: Receiver, bundle_dir: Path
) -> None:
    metadata = load_bundle(bundle_dir).metadata
    record, rows = metadata.example, records(metadata, 3, seed=5)
    with httpx.Client(base_url=traced_server.url, timeout=30) as client:
        # a 503 from the worker still loading would be its own trace: each retry sends a new traceparent
        while True:
            trace_id, caller, header = traceparent()
            answer = client.post("/predict", json=record, headers={"traceparent": header})
            if answer.status_code != 503:
                break
            time.sleep(0.2)
        assert answer.status_code == 200
        untraced = post(client, "/predict", record)
        assert untraced.status_code == 200
        bad_trace, bad_caller, bad_header = traceparent()
        refused = post(client, "/predict", {**record, "unknown": 1}, {"traceparent": bad_header})
        assert refused.status_code == 422
        batch_trace, _, batch_header = traceparent()
        assert post(client, "/predict/batch", {"records": rows}, {"traceparent": batch_header}).status_code == 200
        assert client.get("/nowhere").status_code == 404

    def answered(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        """The spans but those of a 503 from a worker still loading the bundle (retried: see ``post``)."""
        return [span for span in spans if span.attributes.get("http.response.status_code") != 503]

    def complete(spans: list[ReceivedSpan]) -> bool:
        """Every span of every request: each uvicorn worker exports on its own schedule, in its own batches."""
        names = {(span.trace_id, span.name) for span in answered(spans)}
        others = {span.trace_id for span in answered(spans)} - {trace_id, bad_trace, batch_trace}
        return (
            {(trace_id, name) for name in ("POST /predict", "microbatch", "model.predict")}
            | {(bad_trace, "POST /predict"), (batch_trace, "POST /predict/batch"), (batch_trace, "model.predict")}
            <= names
            and any(
                {(other, "POST /predict"), (other, "microbatch"), (other, "model.predict")} <= names for other in others
            )
            and any(span.attributes.get("url.path") == "/nowhere" for span in spans)
        )

    spans = answered(receiver.wait_for(complete, timeout=60))

    traced = trace_of(spans, trace_id)
    server, batch, model = traced["POST /predict"], traced["microbatch"], traced["model.predict"]
    assert server.parent_span_id == caller and server.kind == 2  # SPAN_KIND_SERVER, the caller's span its parent
    assert server.attributes | {"client.address": None} == {
        "http.request.method": "POST",
        "http.route": "/predict",
        "http.response.status_code": 200,
        "url.path": "/predict",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "client.address": None,
        "model.name": "flight-price",
        "model.version": str(VERSION),
        "model.bundle_hash": answer.json()["bundle_hash"],
    }
    assert server.status_code == 0  # unset: a success
    assert batch.parent_span_id == server.span_id and batch.attributes == {"microbatch.size": 1}
    assert model.parent_span_id == batch.span_id and model.attributes == {"model.rows": 1}
    assert server.resource["service.name"] == "flight-price-test"
    # every span comes from a worker, which set tracing up itself: never from the parent uvicorn forked them from
    pids = {span.resource["process.pid"] for span in spans}
    assert traced_server.pid not in pids and {parent_pid(pid) for pid in pids} == {traced_server.pid}

    [fresh] = [
        span for span in spans if span.name == "POST /predict" and span.trace_id not in (trace_id, bad_trace)
    ]  # no traceparent: a trace of its own, with its own children
    assert fresh.parent_span_id == "" and fresh.attributes["http.response.status_code"] == 200
    assert set(trace_of(spans, fresh.trace_id)) == {"POST /predict", "microbatch", "model.predict"}

    refused_spans = trace_of(spans, bad_trace)
    assert set(refused_spans) == {"POST /predict"}  # refused before any row was batched
    refused_span = refused_spans["POST /predict"]
    assert refused_span.parent_span_id == bad_caller and refused_span.attributes["http.response.status_code"] == 422
    assert refused_span.status_code == 0  # a client's error is not the server's

    batched = trace_of(spans, batch_trace)  # the batch route: the model call straight under the request
    assert batched["model.predict"].parent_span_id == batched["POST /predict/batch"].span_id
    assert batched["model.predict"].attributes == {"model.rows": 3}
    assert batched["POST /predict/batch"].attributes["http.route"] == "/predict/batch"

    unmatched = [span for span in spans if span.attributes.get("url.path") == "/nowhere"]
    assert [(s.name, s.attributes["http.response.status_code"], "http.route" in s.attributes) for s in unmatched] == [
        ("GET", 404, False)
    ]
    assert not [span for span in spans if span.attributes.get("url.path", "").startswith("/health/")]  # excluded
    assert "tracing on (OTEL_EXPORTER_OTLP_ENDPOINT is set)" in traced_server.log.read_text()


NO_TRACING = textwrap.dedent(
    """
    import os, sys, time
    from fastapi.testclient import TestClient
    from app.api.middleware import TracingMiddleware
    from app.api.server import create_app
    from app.contract.bundle import read_metadata
    from app.settings import load_settings

    def serve_some(environ):
        os.environ.update(environ)
        app = create_app(load_settings())
        example = read_metadata(app.state.serving.settings.bundle_path).example
        with TestClient(app) as client:
            for _ in range(600):
                if client.get("/health/ready").status_code == 200:
                    break
                time.sleep(0.05)
            assert [client.post("/predict", json=example).status_code for _ in range(3)] == [200] * 3
            assert client.post("/predict/batch", json={"records": [example] * 3}).status_code == 200
            state = app.state.serving
            assert state.tracing is None and state.model.tracing is None
        assert not [m.cls for m in app.user_middleware if m.cls is TracingMiddleware]
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert loaded == [], loaded

    serve_some({})  # no OTEL_* variable at all
    # the kill switch wins over an endpoint that would turn tracing on (the receiver's)
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[1]}
    serve_some({**disabled, "OTEL_BSP_SCHEDULE_DELAY": "10"})
    time.sleep(0.2)  # twenty schedule delays, had anything been queued
    from opentelemetry import trace
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # none was ever installed
    print("untraced")
    """
)


@pytest.mark.integration
def test_off_the_server_imports_no_opentelemetry_adds_no_middleware_and_sends_nothing(bundle_dir: Path) -> None:
    """The off path costs nothing: in a server process built with no ``OTEL_*`` variable, then with
    ``OTEL_SDK_DISABLED=true`` beside an endpoint (a receiver's, which would turn tracing on otherwise), no tracing
    middleware is in the stack, the served model has no tracing, and after predictions on both routes not one
    OpenTelemetry module was imported, so no tracer provider exists; the receiver got nothing."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env |= {"BUNDLE_DIR": str(bundle_dir), "LOG_LEVEL": "warning"}
    with otlp_receiver() as receiver:
        done = subprocess.run(
            [sys.executable, "-c", NO_TRACING, receiver.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "untraced"), done.stderr[-3000:]
        assert receiver.posts == [] and receiver.received() == []
