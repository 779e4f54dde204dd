"""Connection settings shared by training and serving: the MLflow registry and the DVC remote.

Training (the CLI, the DAG's gate and publish tasks) reads only these; the server's settings
(``app.settings.Settings``) extend them, so both sides use one set of variable names and a server-only
variable (``LOG_LEVEL``, ``PORT``, ...) can never fail a training task. Field names are the environment
variable names (case-insensitive).
"""

from __future__ import annotations

import os
import re
from typing import Final, Self, TypeVar

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.contract.registry import RegistryAccess

DEFAULT_MODEL_NAME: Final = "flight-price"
DEFAULT_ALIAS: Final = "champion"  # promoting a model is moving this alias
DEFAULT_SERVING_PORT: Final = 9000  # where the prediction server listens unless PORT says otherwise
NAME: Final = r"^\S(.*\S)?$"  # a registry name: not empty, no leading or trailing whitespace
# AWS variables that hold credentials: read by the S3 client itself, never written anywhere or printed. Only
# the pull needs them, so the entrypoint drops them before it becomes the server.
S3_CREDENTIAL_VARIABLES: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# MLflow's own variables holding registry secrets: the server keeps them (``GET /model`` reads the registry).
REGISTRY_SECRET_VARIABLES: Final = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class SettingsError(ValueError):
    """The environment is invalid; the message names each offending variable."""


class ConnectionSettings(BaseSettings):
    """Where the registry and the DVC remote are, and which registered model they hold."""

    # An empty variable counts as unset (``BUNDLE_DIR=`` must not mean "serve the working directory").
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True)

    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking server URI for the registry look-up.")
    model_name: str = Field(DEFAULT_MODEL_NAME, pattern=NAME, description="Registered model name.")
    model_alias: str = Field(DEFAULT_ALIAS, pattern=NAME, description="Registry alias to serve.")
    registry_timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one registry request.")
    # Authentication and TLS: MLflow's own client variables, with its meaning.
    mlflow_tracking_username: str | None = Field(None, min_length=1, description="MLflow basic-auth user.")
    mlflow_tracking_password: SecretStr | None = Field(None, description="MLflow basic-auth password (never printed).")
    mlflow_tracking_token: SecretStr | None = Field(None, description="MLflow bearer token (never printed).")
    mlflow_tracking_insecure_tls: bool = Field(False, description="Skip the tracking server's TLS certificate check.")
    mlflow_tracking_server_cert_path: FilePath | None = Field(
        None, description="CA bundle to check the tracking server's TLS certificate against."
    )
    mlflow_tracking_client_cert_path: FilePath | None = Field(
        None, description="Client certificate and key (PEM) for mutual TLS with the tracking server."
    )

    # DVC remote (credentials come from the standard AWS variables)
    dvc_remote_url: str | None = Field(None, description="DVC remote: s3://bucket/prefix or a local directory.")
    dvc_remote_endpoint_url: str | None = Field(None, description="Endpoint of an S3-compatible store.")
    dvc_remote_region: str | None = Field(None, description="Region of the S3 bucket.")
    aws_access_key_id: SecretStr | None = Field(None, description="S3 access key (never printed).")
    aws_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (never printed).")
    aws_session_token: SecretStr | None = Field(None, description="S3 session token (never printed).")

    @field_validator("mlflow_tracking_uri", "dvc_remote_endpoint_url")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?|sqlite|file)://|^/", value):
            raise ValueError("must be an http(s)://, sqlite:// or file:// URI")
        return (value.rstrip("/") or "/") if value else value  # "/" stays the root, not ""

    @model_validator(mode="after")
    def _registry_access(self) -> Self:
        if (self.mlflow_tracking_username is None) != (self.mlflow_tracking_password is None):
            raise ValueError("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD together")
        if self.mlflow_tracking_username is not None and self.mlflow_tracking_token is not None:
            raise ValueError("set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD, not both")
        if self.mlflow_tracking_insecure_tls and self.mlflow_tracking_server_cert_path is not None:
            raise ValueError("set MLFLOW_TRACKING_INSECURE_TLS or MLFLOW_TRACKING_SERVER_CERT_PATH, not both")
        return self

    @property
    def registry_access(self) -> RegistryAccess:
        """How the registry client authenticates and checks TLS."""
        return RegistryAccess(
            username=self.mlflow_tracking_username,
            password=_reveal(self.mlflow_tracking_password),
            token=_reveal(self.mlflow_tracking_token),
            insecure_tls=self.mlflow_tracking_insecure_tls,
            server_cert_path=self.mlflow_tracking_server_cert_path,
            client_cert_path=self.mlflow_tracking_client_cert_path,
        )


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def variable_names(model: type[BaseSettings] = ConnectionSettings) -> set[str]:
    """Every environment variable name a settings model reads."""
    return {name.upper() for name in model.model_fields}


def load_from_environment(model: type[SettingsT]) -> SettingsT:
    """``model`` read from the environment; ``SettingsError`` names every invalid variable."""
    try:
        return model()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part).upper() for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid environment: " + "; ".join(problems)) from None


def load_connection_settings() -> ConnectionSettings:
    """The connection settings from the environment (what training reads)."""
    return load_from_environment(ConnectionSettings)


def redact(text: str) -> str:
    """``text`` without credentials: URI user-info, and any S3 or registry secret from the environment."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    for name in (*S3_CREDENTIAL_VARIABLES, *REGISTRY_SECRET_VARIABLES):
        if len(value := os.environ.get(name, "")) >= 4:  # a very short value would mangle ordinary words
            text = text.replace(value, "***")
    return text
