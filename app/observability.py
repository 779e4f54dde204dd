"""Structured logs with request ids, and the Prometheus metrics the server exposes at ``GET /metrics``.

Logs are one JSON object per line (or plain text with ``LOG_FORMAT=text``) and carry the id of the request
being served. uvicorn's own loggers get the same handler and format from its first line on (the entrypoint
starts uvicorn with ``log_config``), and uvicorn's access log is replaced by the app's own access line (method,
path, status, latency, request id). Nothing logged comes from the settings' secrets: the settings hold them
as ``SecretStr`` and no log line formats the settings object.

Each app gets its own ``CollectorRegistry``, so several apps (tests) never collide on metric names. With
``WORKERS`` > 1 the entrypoint sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode): every
worker writes its values there and ``GET /metrics``, whichever worker answers it, reports all of them (counters
and histograms summed; the queue depth summed over live workers; ``model_ready`` the lowest of them).
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import time
import traceback
from contextvars import ContextVar
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOGGER_NAME: Final = "app"
MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
# The id of the request the current task is serving ("-" outside a request).
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Probes and scrapes are logged at debug level, so they do not drown the request log (a probe's 503 says what
# the loader already logged).
QUIET_ROUTES: Final = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
_log = logging.getLogger(LOGGER_NAME)

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# Latency buckets in seconds: sub-millisecond to multi-second, dense where a micro-batched predict lands.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Standard LogRecord attributes; anything else passed via ``extra=`` is emitted as a field.
_RECORD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_NOT_FIELDS: Final = frozenset({"request_id", "color_message"})
# uvicorn logs its start-up and shutdown under "uvicorn.error", which reads as an error; they are its server's.
_LOGGER_NAMES: Final = {"uvicorn.error": "uvicorn"}


def _logger(record: logging.LogRecord) -> str:
    return _LOGGER_NAMES.get(record.name, record.name)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call passed with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k not in _NOT_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        exception = "".join(traceback.format_exception(*record.exc_info)).rstrip() if record.exc_info else None
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        return self.line(
            record.created, record.msecs, record.levelname, _logger(record), record.getMessage(), request_id,
            _fields(record), exception,
        )  # fmt: skip

    @staticmethod
    def line(
        created: float,
        msecs: float,
        level: str,
        logger: str,
        message: str,
        request_id: str,
        fields: dict[str, Any],
        exception: str | None = None,
    ) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z",
            "level": level.lower(),
            "logger": logger,
            "message": message,
            "request_id": request_id,
            **fields,
        }
        if exception is not None:
            entry["exception"] = exception
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal: time, level, logger, request id, message, then its fields."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        fields = "".join(f" {key}={value}" for key, value in _fields(record).items())
        line = f"{self.formatTime(record)} {record.levelname} {_logger(record)} [{request_id}] {record.getMessage()}"
        if record.exc_info:
            return f"{line}{fields}\n{self.formatException(record.exc_info)}"
        return line + fields


def log_config(level: str, log_format: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` for the app's and uvicorn's loggers: stderr, one format.

    uvicorn's access log is silenced: the app logs every request itself, with its id and duration. OpenTelemetry's
    loggers (``app.tracing``) write in the same format.
    """
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"stderr": handler},
        "loggers": {
            LOGGER_NAME: {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},  # propagates to "uvicorn"'s handler
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            # the OpenTelemetry SDK's and exporter's own warnings (a collector that does not answer), with tracing on
            "opentelemetry": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


def configure_logging(level: str, log_format: str) -> None:
    """Apply ``log_config`` (the app does at start-up too, for a plain ``uvicorn app.main:app``).

    The formats print no source location, thread or process, so records skip collecting them (the logging
    module's documented switches): finding the caller's frame alone costs more than formatting the line.
    """
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.config.dictConfig(log_config(level, log_format))


class ServerMetrics:
    """The server's Prometheus collectors, in a registry of their own."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests", "HTTP requests served.", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predicted_rows = Counter(
            "predicted_rows", "Rows the model predicted, by route.", ["route"], registry=self.registry
        )
        self.prediction_errors = Counter(
            "prediction_errors", "Prediction requests that failed, by route and reason.", ["route", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.model_info = Gauge(
            "model_info", "The model being served (1 when loaded).", ["model_version", "bundle_hash"],
            registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_ready = Gauge(
            "model_ready", "1 when the bundle is loaded and verified.", registry=self.registry,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.outside_training = Counter(
            "prediction_values_outside_training_range",
            "Values predicted for that lie outside the range the training split held, by feature (served, not "
            "refused: drift to watch).",
            ["feature"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "model_swaps", "Models swapped in while serving (the alias moved).", registry=self.registry
        )
        self.candidates_refused = Counter(
            "model_candidates_refused", "Candidate bundles refused while serving, by failure kind.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.queued_rows = Gauge(
            "prediction_queue_rows", "Rows queued for the model or being predicted (MAX_QUEUED_ROWS bounds it).",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.batch_size = Histogram(
            "microbatch_size",
            "Single records predicted together in one model call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # the labelled series, looked up once per route, method and status
            labels = (route, method, str(status))
            children = self._request_children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def observe_outside_training(self, counts: dict[str, int]) -> None:
        for feature, count in counts.items():
            if count:
                self.outside_training.labels(feature).inc(count)

    def set_model(self, version: str | None, bundle_hash: str) -> None:
        for labels in [sample.labels for metric in self.model_info.collect() for sample in metric.samples]:
            self.model_info.labels(**labels).set(0)  # in multiprocess mode a cleared series would keep its value
        if not self.multiprocess:
            self.model_info.clear()
        self.model_info.labels(version or "", bundle_hash).set(1)
        self.model_ready.set(1)

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)

    def close(self) -> None:
        """This process stops serving: its live gauges leave the multiprocess totals."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def log_request(route: str, method: str, path: str, status: int, seconds: float, request_id: str) -> None:
    """The request's access line (debug level for probes and scrapes), written before the next request is read.

    When the app's logger has just the JSON stream handler ``log_config`` gives it, the line is formatted by that
    handler's formatter and written to its stream under its lock, as ``Handler.handle`` would, without building a
    ``LogRecord`` and the calls around it: those cost several times the line itself on every request. Any other
    configuration (text format, filters, other handlers) gets the record through the logging machinery.
    """
    level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
    if not _log.isEnabledFor(level):
        return
    fields = {"method": method, "path": path, "route": route, "status": status, "duration_ms": round(seconds * 1000, 3)}
    handler = _json_stream_handler(level)
    if handler is not None:
        created = time.time()
        msecs = (created - int(created)) * 1000  # as LogRecord takes them
        level_name = logging.getLevelName(level)
        line = JsonFormatter.line(created, msecs, level_name, LOGGER_NAME, "request", request_id, fields)
        try:
            with handler.lock or contextlib.nullcontext():
                handler.stream.write(line + handler.terminator)
                handler.flush()
            return
        except Exception:  # noqa: S110 (the stream failed: logging below reports it, ``Handler.handleError``)
            pass
    _log.log(level, "request", extra={**fields, "request_id": request_id})


def _json_stream_handler(level: int) -> logging.StreamHandler[Any] | None:
    """The app logger's one handler, if it is a plain stream handler formatting JSON that takes ``level``."""
    handlers = _log.handlers
    if len(handlers) != 1 or _log.filters or _log.propagate:
        return None
    handler = handlers[0]
    if type(handler) is not logging.StreamHandler or handler.filters or level < handler.level:
        return None
    return handler if type(handler.formatter) is JsonFormatter else None
