"""The server's environment contract: ``Settings`` extends the connection settings training shares.

Every test starts from an environment without any variable the settings read, so only what a test sets counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.contract.connection import (
    DEFAULT_ALIAS,
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVING_PORT,
    ConnectionSettings,
    load_connection_settings,
    redact,
)
from app.contract.store import BUNDLE_NAME
from app.settings import Settings, SettingsError, env_names, load_settings

HASH = "0123456789abcdef0123456789abcdef.dir"
CONNECTION_FIELDS = set(ConnectionSettings.model_fields)
SERVER_ONLY_FIELDS = set(Settings.model_fields) - CONNECTION_FIELDS
# Invalid values of variables only the server reads: training must never fail on them.
SERVER_ONLY_INVALID = [
    ("LOG_LEVEL", "loud"),
    ("PORT", "abc"),
    ("PORT", "0"),
    ("WORKERS", "0"),
    ("LOG_FORMAT", "xml"),
    ("MODEL_HASH", "xyz"),
    ("MODEL_VERSION", "0"),
    ("MAX_BODY_BYTES", "10"),
    ("PULL_RETRIES", "-1"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable the settings read (in any case), nor any MODEL_*/MLFLOW_*/DVC_*/AWS_* one."""
    read = env_names()
    for name in list(os.environ):
        upper = name.upper()
        if upper in read or upper.startswith(("MODEL_", "MLFLOW_", "DVC_", "AWS_")) or upper == "PORT":
            monkeypatch.delenv(name)


def settings_error(loader: Callable[[], object] = load_settings) -> str:
    with pytest.raises(SettingsError) as caught:
        loader()
    message = str(caught.value)
    assert message.startswith("invalid environment: ")
    return message


def test_every_connection_field_is_a_server_field() -> None:
    assert issubclass(Settings, ConnectionSettings)
    assert set(ConnectionSettings.model_fields) <= set(Settings.model_fields)
    assert {"port", "log_level", "model_hash", "model_version", "bundle_dir", "model_dir"} <= SERVER_ONLY_FIELDS
    for name in CONNECTION_FIELDS:  # the server reads a connection variable exactly as training does
        assert Settings.model_fields[name].annotation == ConnectionSettings.model_fields[name].annotation, name
        assert Settings.model_fields[name].default == ConnectionSettings.model_fields[name].default, name


def test_env_names_include_every_variable() -> None:
    names = env_names()
    assert {name.upper() for name in CONNECTION_FIELDS} <= names
    assert names == {name.upper() for name in Settings.model_fields}
    assert {"MLFLOW_TRACKING_URI", "DVC_REMOTE_URL", "AWS_SECRET_ACCESS_KEY", "PORT", "BUNDLE_DIR"} <= names
    assert all(name == name.upper() for name in names)


def test_defaults_in_an_empty_environment() -> None:
    settings = load_settings()
    assert settings.port == DEFAULT_SERVING_PORT and settings.log_level == "info"
    assert settings.model_name == DEFAULT_MODEL_NAME and settings.model_alias == DEFAULT_ALIAS
    assert settings.mlflow_tracking_uri is None and settings.model_hash is None and settings.model_version is None
    assert settings.bundle_dir is None and settings.bundle_path == Path("/models") / BUNDLE_NAME
    connection = load_connection_settings()
    assert type(connection) is ConnectionSettings
    assert connection.model_dump() == settings.model_dump(include=CONNECTION_FIELDS)


def test_load_settings_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("MODEL_VERSION", "3")
    monkeypatch.setenv("MAX_BATCH_RECORDS", "10")
    monkeypatch.setenv("MICROBATCH_MAX_WAIT_MS", "0")
    monkeypatch.setenv("MODEL_NAME", "other-model")
    monkeypatch.setenv("DVC_REMOTE_URL", "s3://bucket/prefix")
    settings = load_settings()
    assert (settings.port, settings.log_level, settings.model_version) == (8123, "debug", 3)
    assert (settings.max_batch_records, settings.microbatch_max_wait_ms) == (10, 0.0)
    assert (settings.model_name, settings.dvc_remote_url) == ("other-model", "s3://bucket/prefix")
    connection = load_connection_settings()
    assert (connection.model_name, connection.dvc_remote_url) == ("other-model", "s3://bucket/prefix")


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("port", "8124")
    monkeypatch.setenv("Model_Alias", "staging")
    settings = load_settings()
    assert settings.port == 8124 and settings.model_alias == "staging"


def test_a_model_hash_alone_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_HASH", HASH)
    assert load_settings().model_hash == HASH
    monkeypatch.setenv("MODEL_HASH", HASH.removesuffix(".dir"))
    assert load_settings().model_hash == HASH.removesuffix(".dir")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *SERVER_ONLY_INVALID,
        ("PORT", "65536"),
        ("MODEL_HASH", HASH.upper()),  # DVC hashes are lower-case hex
        ("MODEL_HASH", HASH[:-5]),
        ("MLFLOW_TRACKING_URI", "ftp://x"),
        ("MLFLOW_TRACKING_URI", "mlflow:5000"),
        ("DVC_REMOTE_ENDPOINT_URL", "ftp://x"),
        ("DVC_REMOTE_ENDPOINT_URL", "/srv/s3"),  # accepted before, as the tracking URI's local forms were
        ("REGISTRY_TIMEOUT_S", "0"),
    ],
)
def test_an_invalid_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    message = settings_error()
    assert f"{variable}:" in message
    assert message.count(":") >= 2 and len(message) > len(f"invalid environment: {variable}: ")


def test_all_invalid_variables_are_named_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    invalid = {"PORT": "0", "LOG_LEVEL": "loud", "MODEL_HASH": "xyz", "MLFLOW_TRACKING_URI": "ftp://x"}
    for variable, value in invalid.items():
        monkeypatch.setenv(variable, value)
    message = settings_error()
    for variable in invalid:
        assert f"{variable}:" in message
    assert message.count("; ") == len(invalid) - 1


def test_a_model_hash_and_a_model_version_are_refused_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_HASH", HASH)
    monkeypatch.setenv("MODEL_VERSION", "3")
    message = settings_error()
    assert "MODEL_HASH" in message and "MODEL_VERSION" in message
    assert load_connection_settings().model_name == DEFAULT_MODEL_NAME  # training does not care


def test_an_invalid_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://user:hunter2-password@mlflow")
    message = settings_error()
    assert "MLFLOW_TRACKING_URI" in message and "hunter2" not in message


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("http://mlflow:5000/", "http://mlflow:5000"),
        ("https://mlflow.example.com/base/", "https://mlflow.example.com/base"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("sqlite:///tmp/mlflow.db", "sqlite:///tmp/mlflow.db"),
        ("/srv/mlruns/", "/srv/mlruns"),
        ("/", "/"),  # the root stays the root: never "", which reads as unset
    ],
)
def test_the_tracking_uri_loses_a_trailing_slash(monkeypatch: pytest.MonkeyPatch, value: str, stored: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    endpoint = value.startswith("http")  # an S3 endpoint is http(s) only
    if endpoint:
        monkeypatch.setenv("DVC_REMOTE_ENDPOINT_URL", value)
    settings = load_settings()
    assert settings.mlflow_tracking_uri == stored and settings.dvc_remote_endpoint_url == (stored if endpoint else None)
    assert load_connection_settings().mlflow_tracking_uri == stored


@pytest.mark.parametrize(
    "variable", ["BUNDLE_DIR", "MLFLOW_TRACKING_URI", "MODEL_NAME", "MODEL_VERSION", "DVC_REMOTE_URL", "PORT"]
)
def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """``BUNDLE_DIR=`` in an env file once meant "serve the working directory"; MLFLOW_TRACKING_URI= was refused."""
    monkeypatch.setenv(variable, "")
    assert load_settings() == Settings()


def test_bundle_path_is_bundle_dir_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    assert load_settings().bundle_path == tmp_path / "models" / BUNDLE_NAME
    monkeypatch.setenv("BUNDLE_DIR", str(tmp_path / "served"))
    settings = load_settings()
    assert settings.bundle_path == tmp_path / "served" and settings.model_dir == tmp_path / "models"
    monkeypatch.delenv("MODEL_DIR")
    assert load_settings().bundle_path == tmp_path / "served"


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret-value",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID1234",
        "AWS_SESSION_TOKEN": "session-token-value-5678",
    }
    for variable, value in secrets.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings()
    connection = load_connection_settings()
    for variable, value in secrets.items():
        for loaded in (settings, connection):
            secret = getattr(loaded, variable.lower())
            assert secret is not None and secret.get_secret_value() == value  # read, so hiding it is meaningful
            for shown in (repr(loaded), str(loaded), loaded.model_dump_json(), str(loaded.model_dump())):
                assert value not in shown, variable


@pytest.mark.parametrize(("variable", "value"), SERVER_ONLY_INVALID)
def test_a_server_only_variable_cannot_fail_training(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    assert variable.lower() in SERVER_ONLY_FIELDS
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/")
    connection = load_connection_settings()
    assert connection.mlflow_tracking_uri == "http://mlflow:5000"
    assert not hasattr(connection, variable.lower())
    assert f"{variable}:" in settings_error()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MLFLOW_TRACKING_URI", "ftp://x"), ("REGISTRY_TIMEOUT_S", "0"), ("MODEL_ALIAS", " ")],
)
def test_an_invalid_connection_variable_fails_both(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    assert f"{variable}:" in settings_error(load_connection_settings)
    assert f"{variable}:" in settings_error(load_settings)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    assert settings.port == DEFAULT_SERVING_PORT


# --- URIs that pass a prefix check and then crash the start (issue 25, point 6) ---

PASSWORD_PART = "pa/ss"  # a password holding "/": the netloc of http://user:pa/ss@host is "user:pa"
UNUSABLE_HTTP_URIS = [
    pytest.param("http://h:abc", id="non-numeric-port"),
    pytest.param("http://h:99999", id="port-out-of-range"),
    pytest.param("http://[::1", id="unclosed-bracket"),
    pytest.param("http://::1]:5000", id="unopened-bracket"),
    pytest.param("http://[mlflow]:5000", id="bracketed-name"),
    pytest.param("http://ml flow:5000", id="space-in-host"),
    pytest.param("http://mlflow:5000 ", id="trailing-space"),
    pytest.param("http://mlflow:5000\n", id="trailing-newline"),
    pytest.param("http://:5000", id="no-host"),
    pytest.param("https://", id="nothing-after-the-scheme"),
    pytest.param("http://mlflow:5000?x=1", id="query"),
    pytest.param("http://mlflow:5000#models", id="fragment"),
]


@pytest.mark.parametrize("variable", ["MLFLOW_TRACKING_URI", "DVC_REMOTE_ENDPOINT_URL"])
@pytest.mark.parametrize("value", UNUSABLE_HTTP_URIS)
def test_an_http_uri_that_cannot_be_used_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Each of these passed the old ``^(https?|sqlite|file)://`` check, then crashed the start with a traceback."""
    monkeypatch.setenv(variable, value)
    message = settings_error()
    assert f"{variable}: " in message and len(message) > len(f"invalid environment: {variable}: Value error, ")
    assert f"{variable}:" in settings_error(load_connection_settings)  # training refuses it too


def test_a_password_that_splits_the_host_is_named_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://reader:{PASSWORD_PART}@mlflow:5000")
    message = settings_error()
    assert "MLFLOW_TRACKING_URI:" in message and "percent-encoded" in message
    assert PASSWORD_PART not in message and "pa" not in message.replace("password", "")
    assert "MLFLOW_TRACKING_USERNAME" in message


@pytest.mark.parametrize(
    "value",
    [
        "http://mlflow:5000",
        "https://mlflow.example.com/base",
        "http://[::1]:5000",
        "http://127.0.0.1:5000",
        "https://reader:p%2Fss%40word@mlflow.example.com",  # user-info, percent-encoded, is still fine for MLflow
        "sqlite:////srv/mlflow/my store.db",  # a local store may have a space in its path
        "/srv/mlruns",
    ],
)
def test_a_usable_tracking_uri_is_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    assert load_settings().mlflow_tracking_uri == value


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DVC_REMOTE_ENDPOINT_URL", "https://key:s3cr3t-value@minio:9000"),
        ("DVC_REMOTE_ENDPOINT_URL", "http://key:s3cr3t/value@minio:9000"),
        ("DVC_REMOTE_URL", "s3://key:s3cr3t-value@models/dvc"),
        ("DVC_REMOTE_URL", "https://key:s3cr3t-value@minio:9000/models"),
    ],
)
def test_credentials_in_a_dvc_url_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    """They would be written to MODEL_DIR/.dvc/config and kept in the server's environment: the S3 keys belong
    in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which are never written and are dropped before serving."""
    monkeypatch.setenv(variable, value)
    message = settings_error()
    assert f"{variable}:" in message and "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert "s3cr3t" not in message and "value@" not in message


@pytest.mark.parametrize(
    "value",
    [
        "models/dvc",  # relative: DVC would read it relative to MODEL_DIR/.dvc
        "gs://models/dvc",
        "s3://",
        "s3:///dvc",
        "s3://models:9000/dvc",
        "s3://mo dels/dvc",
        "s3://models/dvc ",
        "s3://models/dvc?versionId=1",
        "s3://models!/dvc",
        "/srv/dvc-remote\n",
    ],
)
def test_a_dvc_remote_url_that_cannot_be_used_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DVC_REMOTE_URL", value)
    assert "DVC_REMOTE_URL:" in settings_error()


@pytest.mark.parametrize(
    "value", ["s3://models", "s3://models/dvc", "s3://my.models-1/flight/price/", "/srv/dvc remote", "/"]
)
def test_a_usable_dvc_remote_url_is_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DVC_REMOTE_URL", value)
    assert load_settings().dvc_remote_url == value


# --- redact: a URI's whole user-info, wherever it stands in a line ---


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        pytest.param(
            "MLflow at http://reader:p@ss@mlflow:5000 is unreachable: [Errno 111] Connection refused",
            "MLflow at http://***@mlflow:5000 is unreachable: [Errno 111] Connection refused",
            id="at-in-password",
        ),
        pytest.param(
            "GET http://reader:pa/ss@mlflow:5000/api/2.0/mlflow/registered-models/alias failed",
            "GET http://***@mlflow:5000/api/2.0/mlflow/registered-models/alias failed",
            id="slash-in-password",
        ),
        pytest.param(
            "copy from https://u:a/b@c@h1:443/base to s3://key:s@cr/t@bucket/dvc, then mail ops@example.com",
            "copy from https://***@h1:443/base to s3://***@bucket/dvc, then mail ops@example.com",
            id="two-uris-and-an-address",
        ),
        pytest.param(
            "remotes=http://a:b@h1,http://c:d/e@h2/x",
            "remotes=http://***@h1,http://***@h2/x",
            id="two-uris-no-space",
        ),
        pytest.param(
            '{"uri": "http://a:p@ss@h1/x", "owner": "admin@example.com"}',
            '{"uri": "http://***@h1/x", "owner": "admin@example.com"}',
            id="json",
        ),
        pytest.param(
            "see <https://dvc.org/doc> and http://mlflow:5000/#/models (mail dev@example.com) at 12:00",
            "see <https://dvc.org/doc> and http://mlflow:5000/#/models (mail dev@example.com) at 12:00",
            id="no-credentials",
        ),
    ],
)
def test_redact_hides_the_whole_user_info(line: str, redacted: str) -> None:
    assert redact(line) == redacted
