"""Connection settings shared by training and serving: the MLflow registry and the DVC remote.

Training (the CLI, the DAG's gate and publish tasks) reads only these; the server's settings
(``app.settings.Settings``) extend them, so both sides use one set of variable names and a server-only
variable (``LOG_LEVEL``, ``PORT``, ...) can never fail a training task. Field names are the environment
variable names (case-insensitive).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Final, Self, TypeVar
from urllib.parse import urlsplit

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
# MLflow's own variables holding registry secrets: the server keeps them (``GET /model`` reads the registry); the
# S3 client never reads them.
REGISTRY_SECRET_VARIABLES: Final = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# A URI's user-info in free text: everything after "scheme://" up to the LAST "@" before the next whitespace, quote,
# angle bracket or "://" (an unencoded password may hold "/", "@", "?" or "#", so no host character ends it).
URI_USER_INFO: Final = re.compile(r"(?<=://)(?:(?!://)[^\s\"'<>])+@")
# Whitespace or a control character: never in a usable URL (a trailing space or line break from an env file).
_BLANK_OR_CONTROL: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME: Final = re.compile(r"^[\w.-]+$")  # a DNS name or an IPv4 address (IPv6 goes in brackets)
# What botocore accepts as a bucket name (legacy names included); no ":" (a port) or "@" (user-info).
_S3_BUCKET: Final = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
CREDENTIALS_IN_URL: Final = (
    "must not hold credentials (user:password@): give the S3 keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or a file named by AWS_SHARED_CREDENTIALS_FILE), which are never written to disk and never reach the server"
)


class SettingsError(ValueError):
    """The environment is invalid; the message names each offending variable."""


class ConnectionSettings(BaseSettings):
    """Where the registry and the DVC remote are, and which registered model they hold."""

    # An empty variable counts as unset (``BUNDLE_DIR=`` must not mean "serve the working directory").
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, env_ignore_empty=True)

    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server for the registry look-up (`http(s)://`; `sqlite://` where mlflow is "
        "installed, as in the quickstart). Checked in full at start: a host, a numeric port, no whitespace, no query; "
        "a password in it must be percent-encoded (better: `MLFLOW_TRACKING_USERNAME`/`PASSWORD`).",
        examples=["http://mlflow:5000"],
    )
    model_name: str = Field(
        DEFAULT_MODEL_NAME,
        pattern=NAME,
        description="Registered model name, and the name the V2 routes serve. Unset while the entrypoint serves a "
        "`BUNDLE_DIR`: the name the bundle records (training's params file `name`, else its target column's name; "
        f"`{DEFAULT_MODEL_NAME}` for a bundle that records none).",
    )
    model_alias: str = Field(
        DEFAULT_ALIAS, pattern=NAME, description="Registry alias to serve; promoting a model is moving this alias."
    )
    registry_timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one registry request, in seconds.")
    # Authentication and TLS: MLflow's own client variables, with its meaning.
    mlflow_tracking_username: str | None = Field(
        None,
        min_length=1,
        description="MLflow basic-auth user (with `MLFLOW_TRACKING_PASSWORD`); give the server a read-only user.",
        examples=["serving-reader"],
    )
    mlflow_tracking_password: SecretStr | None = Field(
        None, description="Its password: never printed; the server keeps it, as `GET /model` reads the registry."
    )
    mlflow_tracking_token: SecretStr | None = Field(
        None, description="A bearer token instead of basic auth (not both)."
    )
    mlflow_tracking_insecure_tls: bool = Field(
        False, description="Skip the check of the tracking server's TLS certificate."
    )
    mlflow_tracking_server_cert_path: FilePath | None = Field(
        None,
        description="CA bundle to check the tracking server's certificate against (not with "
        "`MLFLOW_TRACKING_INSECURE_TLS`).",
        examples=["/etc/ssl/registry-ca.pem"],
    )
    mlflow_tracking_client_cert_path: FilePath | None = Field(
        None,
        description="Client certificate and key (PEM) for mutual TLS with the tracking server.",
        examples=["/etc/ssl/registry-client.pem"],
    )

    # DVC remote (credentials come from the standard AWS variables)
    dvc_remote_url: str | None = Field(
        None,
        description="DVC remote: `s3://bucket/prefix` or an absolute directory path (a directory mounted into the "
        "container). Credentials in it (`user:password@`) are refused: give them in the `AWS_*` variables.",
        examples=["s3://models/dvc"],
    )
    dvc_remote_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store (MinIO, moto): an `http(s)://` URL, credentials refused as "
        "in `DVC_REMOTE_URL`; unset for AWS S3.",
        examples=["http://minio:9000"],
    )
    dvc_remote_region: str | None = Field(None, description="Region of the S3 bucket.", examples=["eu-west-1"])
    aws_access_key_id: SecretStr | None = Field(
        None,
        description="S3 access key: read by the S3 client only (botocore's own credential chain, which also reads "
        "`AWS_SHARED_CREDENTIALS_FILE`), never written to a file or printed, and dropped from the environment before "
        "the server starts.",
    )
    aws_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (handled as `AWS_ACCESS_KEY_ID`).")
    aws_session_token: SecretStr | None = Field(None, description="S3 session token (handled as `AWS_ACCESS_KEY_ID`).")

    # The messages below never quote the value: it may hold a password.
    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(("http://", "https://")):
            check_http_url(value)
        elif not re.match(r"^(sqlite|file)://|^/", value):
            raise ValueError("must be an http(s)://, sqlite:// or file:// URI")
        elif _CONTROL.search(value):
            raise ValueError("holds a control character (a line break?)")
        return value.rstrip("/") or "/"  # "/" stays the root, not ""

    @field_validator("dvc_remote_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if holds_credentials(value):
            raise ValueError(CREDENTIALS_IN_URL)
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL (the S3-compatible store's endpoint)")
        check_http_url(value)  # after refusing user-info: no "@" is left in it
        return value.rstrip("/")

    @field_validator("dvc_remote_url")
    @classmethod
    def _remote_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_remote_url(value)
        return value

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


def holds_credentials(url: str) -> bool:
    """Whether a URL (not a local path) holds user-info: any "@" after its "scheme://", wherever an unencoded
    "/", "?" or "#" in a password moved the host's start."""
    _, separator, rest = url.partition("://")
    return bool(separator) and "@" in rest


def check_http_url(value: str) -> None:
    """``ValueError`` unless ``value`` (``http(s)://...``) is a URL urllib and botocore can use: no whitespace, a
    host (a name, an IPv4 address or a bracketed IPv6 address), a numeric port, no query or fragment, and
    user-info (MLflow's basic auth) only before the host, percent-encoded. No message quotes the value."""
    if _BLANK_OR_CONTROL.search(value):
        raise ValueError("holds whitespace or a control character (a trailing space or line break?)")
    rest = value.partition("://")[2]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in rest[len(authority) :]:
        raise ValueError(
            "holds an '@' after its host: a password holding '/', '?' or '#' must be percent-encoded (%2F, %3F, "
            "%23), or better given in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    host = authority.rpartition("@")[2]
    try:
        parts = urlsplit(value)
    except ValueError:  # unbalanced "[" / "]", or no IPv6 address between them
        raise ValueError("its host's brackets are unbalanced or hold no IPv6 address") from None
    if "[" in host or "]" in host:
        bracketed = re.fullmatch(r"\[([^\[\]]+)\](?::[^:]*)?", host)
        try:
            ipaddress.IPv6Address(bracketed.group(1) if bracketed else "")
        except ValueError:
            raise ValueError("its host's brackets are unbalanced or hold no IPv6 address") from None
    elif not parts.hostname or not _HOST_NAME.match(parts.hostname):
        raise ValueError("names no host, or a host that is no DNS name or IP address")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:  # unset is None; ":0", ":99999", ":abc" (or a password's piece, split off by a "/") are not ports
        raise ValueError("its port is not a number from 1 to 65535")
    if "?" in rest or "#" in rest:
        raise ValueError("must not have a query (?...) or a fragment (#...)")


def check_remote_url(value: str) -> None:
    """``ValueError`` unless ``value`` is a DVC remote serving can use: ``s3://<bucket>[/<prefix>]`` or an absolute
    directory path (a relative one would be read relative to ``MODEL_DIR/.dvc``); never one holding credentials."""
    if value.startswith("/"):
        if _CONTROL.search(value) or value != value.strip():
            raise ValueError("holds a control character, or starts or ends with whitespace")
        return
    if holds_credentials(value):
        raise ValueError(CREDENTIALS_IN_URL)
    if not value.startswith("s3://"):
        raise ValueError("must be s3://bucket/prefix or an absolute directory path")
    if _BLANK_OR_CONTROL.search(value):
        raise ValueError("holds whitespace or a control character (a trailing space or line break?)")
    bucket = value.removeprefix("s3://").partition("/")[0]
    if not _S3_BUCKET.match(bucket):
        raise ValueError("must be s3://bucket/prefix with a valid bucket name (no port, nothing else before the /)")
    if "?" in value or "#" in value:
        raise ValueError("must not have a query (?...) or a fragment (#...)")


def redact(text: str) -> str:
    """``text`` without credentials: URI user-info (up to the last "@" before the host, so a password holding
    "/" or "@" goes too), and any S3 or registry secret from the environment."""
    text = URI_USER_INFO.sub("***@", text)
    for name in (*S3_CREDENTIAL_VARIABLES, *REGISTRY_SECRET_VARIABLES):
        if len(value := os.environ.get(name, "")) >= 4:  # a very short value would mangle ordinary words
            text = text.replace(value, "***")
    return text
