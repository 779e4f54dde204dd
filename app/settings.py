"""The environment contract: every variable the entrypoint and the server read, in one settings model.

The Dagger smoke stage, ``docker-compose.yaml``, ``app/prediction.env.example`` and the README use exactly
these names (a test cross-checks them). An invalid value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DVC_HASH: Final = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


class SettingsError(ValueError):
    """The environment is invalid; the message names each offending variable."""


class Settings(BaseSettings):
    """Field names are the environment variable names (case-insensitive)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Server
    host: str = Field("0.0.0.0", description="Interface uvicorn binds.")
    port: int = Field(9000, ge=1, le=65535, description="Port uvicorn binds.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    predict_threads: int = Field(1, ge=1, le=64, description="Threads for one predict call (OpenMP/BLAS).")
    max_batch_records: int = Field(1000, ge=1, le=100_000, description="Most records in one /predict/batch call.")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body accepted, in bytes.")
    microbatch_max_size: int = Field(64, ge=1, le=4096, description="Most single records gathered into one predict.")
    microbatch_max_wait_ms: float = Field(
        2.0, ge=0, le=100, description="Longest a record waits for others to join its batch (0 disables)."
    )

    # Where the bundle lives
    model_dir: Path = Field(Path("/models"), description="Writable directory the bundle is pulled into.")
    bundle_dir: Path | None = Field(None, description="Serve this bundle directory as is (default MODEL_DIR/bundle).")

    # Which bundle: a pinned DVC hash, or the registry's MODEL_NAME@MODEL_ALIAS / MODEL_VERSION
    model_hash: str | None = Field(None, description="Pinned DVC hash of the bundle (skips the registry).")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server URI for the registry look-up.")
    model_name: str = Field("flight-price", min_length=1, description="Registered model name.")
    model_alias: str = Field("champion", min_length=1, description="Registry alias to serve.")
    model_version: int | None = Field(None, ge=1, description="Registry version to serve instead of the alias.")
    registry_timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one registry request.")

    # DVC remote (credentials come from the standard AWS variables)
    dvc_remote_url: str | None = Field(None, description="DVC remote: s3://bucket/prefix or a local directory.")
    dvc_remote_endpoint_url: str | None = Field(None, description="Endpoint of an S3-compatible store.")
    dvc_remote_region: str | None = Field(None, description="Region of the S3 bucket.")
    aws_access_key_id: SecretStr | None = Field(None, description="S3 access key (never printed).")
    aws_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (never printed).")
    aws_session_token: SecretStr | None = Field(None, description="S3 session token (never printed).")
    pull_deadline_s: float = Field(120.0, gt=0, le=3600, description="Overall deadline for pulling the bundle.")
    pull_retries: int = Field(4, ge=0, le=20, description="Retries of a failed pull.")
    pull_backoff_s: float = Field(1.0, ge=0, le=60, description="First retry delay; doubles each retry.")

    @field_validator("model_hash")
    @classmethod
    def _dvc_hash(cls, value: str | None) -> str | None:
        if value is not None and not DVC_HASH.match(value):
            raise ValueError("must be a DVC md5 hash: 32 hex digits, optionally ending in .dir")
        return value

    @field_validator("mlflow_tracking_uri", "dvc_remote_endpoint_url")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?|sqlite|file)://|^/", value):
            raise ValueError("must be an http(s)://, sqlite:// or file:// URI")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _safe(self) -> Self:
        if self.model_version is not None and self.model_hash is not None:
            raise ValueError("set MODEL_HASH or MODEL_VERSION, not both")
        return self

    @property
    def bundle_path(self) -> Path:
        return self.bundle_dir or self.model_dir / "bundle"


def env_names() -> set[str]:
    """Every environment variable name the settings model reads."""
    return {name.upper() for name in Settings.model_fields}


def load_settings() -> Settings:
    """Settings from the environment; ``SettingsError`` names every invalid variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part).upper() for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid environment: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
