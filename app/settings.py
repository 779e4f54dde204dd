"""The environment contract of the serving container: every variable the entrypoint and the server read.

``Settings`` extends the connection settings training shares (``app.contract.connection``) with what only
the server needs. Each field's description is the reference text: ``docs/configuration.md``'s settings table and
``app/prediction.env.example`` are generated from them (``python -m app.settings_reference --write``). The Dagger
smoke stage, ``docker-compose.yaml`` and the Kubernetes manifests use exactly these names (tests cross-check
them). An invalid value stops start-up with a message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from app.contract.connection import (
    DEFAULT_SERVING_PORT,
    ConnectionSettings,
    SettingsError,
    load_from_environment,
    variable_names,
)
from app.contract.store import BUNDLE_NAME, DVC_HASH

__all__ = ["Settings", "SettingsError", "env_names", "get_settings", "load_settings"]


class Settings(ConnectionSettings):
    """Field names are the environment variable names (case-insensitive)."""

    # Server
    host: str = Field("0.0.0.0", description="Interface uvicorn binds.")
    port: int = Field(DEFAULT_SERVING_PORT, ge=1, le=65535, description="Port uvicorn binds.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="uvicorn worker processes, each loading its own model; `/metrics` counts all of them "
        "(prometheus_client's multiprocess mode, in `PROMETHEUS_MULTIPROC_DIR`, by default a fresh directory under "
        "the temporary directory).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="Log line format of the app's and uvicorn's lines alike; one access line per request (method, "
        "path, status, latency, request id).",
    )
    max_batch_records: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most records in one `/predict/batch` call (or rows in one V2 infer request).",
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body accepted, in bytes.")
    microbatch_max_size: int = Field(
        64, ge=1, le=4096, description="Most single `/predict` records gathered into one model call."
    )
    microbatch_max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="Longest a record waits for others to join its batch, in milliseconds (0 disables).",
    )
    max_queued_rows: int = Field(
        32_000,
        ge=1,
        le=1_000_000,
        description="Most rows queued for the model or being predicted (at least `MAX_BATCH_RECORDS`; about 0.4 s of "
        "batch work on a 2-core machine); a request past it is answered 503 with `Retry-After` at once.",
    )
    predict_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest a request waits for its prediction, in seconds, before a 503 with `Retry-After`; a model "
        "call running longer turns `/health/ready` to 503 (`stuck`) until it returns.",
    )
    drain_timeout_s: int = Field(
        20,
        ge=1,
        le=3600,
        description="Longest a SIGTERM waits for in-flight requests before closing them, in seconds; keep it below "
        "the orchestrator's grace period (Kubernetes' `terminationGracePeriodSeconds`, 30 by default).",
    )

    # What a connection may cost before the app sees it (app.api.limits; the arithmetic: docs/configuration.md)
    max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1_048_576,
        description="Largest request line and headers, in bytes; past it the connection is answered 431 and closed.",
    )
    max_headers: int = Field(100, ge=8, le=1000, description="Most request headers; past it a 431.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest a connection may take to send its request line and headers, from its opening or the "
        "request's first byte: past it a 408 (an idle connection is closed without one).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest a request may take to send its whole body once its headers are in: past it a 408 and "
        "the connection is closed.",
    )
    max_body_bytes_in_flight: int = Field(
        16_000_000,
        ge=1024,
        description="Request body bytes all connections of a worker may have in flight (each request reserves its "
        "`Content-Length`, at most `MAX_BODY_BYTES`, or `MAX_BODY_BYTES` if chunked, until its answer is sent); a "
        "request that does not fit is answered 503 with `Retry-After` before any of its body is read. At least "
        "`MAX_BODY_BYTES`.",
    )
    max_listed_errors: int = Field(
        20,
        ge=1,
        le=1000,
        description="Most field errors a 422 lists in `detail`; `more_errors` says how many were left out (V2: "
        '"and N more").',
    )

    # Where the bundle lives
    model_dir: Path = Field(
        Path("/models"),
        description="Writable directory the bundle is pulled into: it lands in `MODEL_DIR/bundle`, beside a cache "
        "of the store's objects in `MODEL_DIR/.dvc/cache` (a restart finds them there); the image runs as non-root "
        "and its root filesystem may be read-only.",
    )
    bundle_dir: Path | None = Field(
        None,
        description="Serve this bundle directory as is: no registry look-up, no pull (still verified).",
        examples=["/models/bundle"],
    )

    # Which bundle: a pinned DVC hash, or the registry's MODEL_NAME@MODEL_ALIAS / MODEL_VERSION
    model_hash: str | None = Field(
        None,
        description="Pinned DVC hash of the bundle (`<md5>.dir`: 32 hex digits, then `.dir`): the registry is not "
        "consulted.",
        examples=["0123456789abcdef0123456789abcdef.dir"],
    )
    model_version: int | None = Field(
        None,
        ge=1,
        description="Registry version to serve instead of the alias (not with `MODEL_HASH`).",
        examples=[3],
    )

    # Following the alias
    model_refresh_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="Seconds between the running server's checks of `MODEL_ALIAS`: a moved alias is pulled, "
        "verified, loaded, warmed and swapped in without a restart (0 turns it off; off whenever `MODEL_HASH`, "
        "`MODEL_VERSION` or `BUNDLE_DIR` pins the bundle). Its pulls need S3 credentials the server can reach: "
        "`AWS_SHARED_CREDENTIALS_FILE` (a mounted file) or a pod role, since the `AWS_*` keys are dropped at start.",
    )

    allow_schema_change: bool = Field(
        False,
        description="Let the alias refresh swap in a candidate whose request schema (features, kinds, types, "
        "categories, limits) or target differs from the served model's so that its clients' requests would be "
        "refused or misread; otherwise it is refused, named in `/model` and `/health/ready`, counted "
        '(`model_candidates_refused_total{reason="schema"}`) and not pulled again until the alias moves.',
    )

    # Pulling it
    pull_deadline_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Overall deadline for delivering the bundle, in seconds: the registry look-up and the pull, all "
        "attempts and back-off included.",
    )
    pull_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Retries of a failed pull or registry look-up (unreachable, timed out); bad credentials and "
        "missing objects fail at once.",
    )
    pull_backoff_s: float = Field(1.0, ge=0, le=60, description="First retry delay, in seconds; doubles each retry.")

    @field_validator("model_hash")
    @classmethod
    def _dvc_hash(cls, value: str | None) -> str | None:
        if value is not None and not DVC_HASH.match(value):
            raise ValueError("must be a DVC md5 hash: 32 hex digits, optionally ending in .dir")
        return value

    @model_validator(mode="after")
    def _safe(self) -> Self:
        if self.model_version is not None and self.model_hash is not None:
            raise ValueError("set MODEL_HASH or MODEL_VERSION, not both")
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"MAX_BODY_BYTES_IN_FLIGHT={self.max_body_bytes_in_flight} is below MAX_BODY_BYTES="
                f"{self.max_body_bytes}: a body of the largest size would always be refused"
            )
        if self.max_queued_rows < self.max_batch_records:
            raise ValueError(
                f"MAX_QUEUED_ROWS={self.max_queued_rows} is below MAX_BATCH_RECORDS={self.max_batch_records}: "
                "a full batch would always be shed"
            )
        return self

    @property
    def bundle_path(self) -> Path:
        return self.bundle_dir or self.model_dir / BUNDLE_NAME

    @property
    def pinned(self) -> bool:
        """A bundle was named outright (``MODEL_HASH``, ``MODEL_VERSION``, ``BUNDLE_DIR``): no alias to follow."""
        return self.model_hash is not None or self.model_version is not None or self.bundle_dir is not None

    @property
    def follows_alias(self) -> bool:
        """The running server checks ``MODEL_ALIAS`` every ``MODEL_REFRESH_S`` and swaps in a moved alias's bundle.

        The entrypoint passes the bundle it delivered (``BUNDLE_DIR``, ``MODEL_VERSION``) to the server and turns
        refreshing off (``MODEL_REFRESH_S=0``) when the user pinned one, so here only the switch and the places
        to follow from count.
        """
        return (
            self.model_refresh_s > 0
            and self.model_hash is None
            and bool(self.mlflow_tracking_uri)
            and bool(self.dvc_remote_url)
        )


def env_names() -> set[str]:
    """Every environment variable name the serving settings read."""
    return variable_names(Settings)


def load_settings() -> Settings:
    """Settings from the environment; ``SettingsError`` names every invalid variable."""
    return load_from_environment(Settings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
