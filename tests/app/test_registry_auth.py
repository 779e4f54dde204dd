"""The registry client against an authenticated MLflow: a real ``mlflow server --app-name basic-auth``, and
TLS through a local HTTPS front with its own certificate authority, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import secrets
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from app.contract.connection import ConnectionSettings, redact
from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DVC_HASH,
    AccessDeniedError,
    NotFoundError,
    RegistryAccess,
    RegistryError,
    RestRegistry,
)
from app.delivery.failures import DeliveryError
from app.delivery.resolve import resolve
from app.runtime.registry_view import RegistryView
from app.settings import Settings
from tests.harness.services import LOOPBACK, RegistryAdmin, S3Server, mlflow_server

READER = "serving-reader"
# Each basic-auth request checks a PBKDF2 hash: generous on a loaded 2-core machine (the default is 5 s).
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class AuthRegistry:
    uri: str
    admin: RegistryAdmin
    reader: RegistryAdmin  # a plain user: MLflow's default permission (READ) only
    model: str
    content_hash: str


@pytest.fixture(scope="module")
def auth_registry(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """A basic-auth ``mlflow server`` holding one model version as ``champion``, and a read-only user."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    admin = RegistryAdmin("admin", secrets.token_urlsafe(16))
    with mlflow_server(workdir, s3, bucket="mlflow-auth", log=workdir / "server.log", admin=admin) as uri:
        reader = RegistryAdmin(READER, secrets.token_urlsafe(16))
        _post(uri, "users/create", {"username": reader.username, "password": reader.password}, admin)
        model, content_hash = f"auth-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        saved = {name: os.environ.get(name) for name in admin.env()}
        os.environ.update(admin.env())  # MLflow's own client reads the same variables
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.create_registered_model(model)
            tags = {TAG_DVC_HASH: "ab" * 16 + ".dir", TAG_CONTENT_HASH: content_hash}
            client.create_model_version(model, source="s3://mlflow-auth/none", tags=tags)
            client.set_registered_model_alias(model, "champion", "1")
        finally:
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        yield AuthRegistry(uri, admin, reader, model, content_hash)


def _post(uri: str, path: str, body: dict[str, str], user: RegistryAdmin) -> None:
    access = RegistryAccess(username=user.username, password=user.password)
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={**access.headers(), "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S):
        pass


def _access(user: RegistryAdmin) -> RegistryAccess:
    return RegistryAccess(username=user.username, password=user.password)


def test_anonymous_is_refused_with_what_to_set(auth_registry: AuthRegistry) -> None:
    with pytest.raises(AccessDeniedError, match=r"requires authentication \(401\) and no credentials are set"):
        RestRegistry(auth_registry.uri, TIMEOUT_S).version_by_alias(auth_registry.model, "champion")


def test_a_wrong_password_is_refused_as_such(auth_registry: AuthRegistry) -> None:
    wrong = RegistryAccess(username=READER, password="not-the-password")
    with pytest.raises(AccessDeniedError, match=r"refused the credentials \(401\)"):
        RestRegistry(auth_registry.uri, TIMEOUT_S, access=wrong).version_by_alias(auth_registry.model, "champion")


def test_a_read_only_user_reads_every_call_serving_makes(auth_registry: AuthRegistry) -> None:
    registry = RestRegistry(auth_registry.uri, TIMEOUT_S, access=_access(auth_registry.reader))
    champion = registry.version_by_alias(auth_registry.model, "champion")
    assert champion.version == 1 and champion.dvc_hash == "ab" * 16 + ".dir"
    assert registry.version(auth_registry.model, 1).aliases == ["champion"]
    [found] = registry.versions_tagged(TAG_CONTENT_HASH, auth_registry.content_hash)
    assert found.name == auth_registry.model


def test_an_ordinary_user_asking_for_a_model_not_registered_yet_is_told_so(auth_registry: AuthRegistry) -> None:
    """MLflow's basic-auth app answers 403 to the alias of a model that does not exist (it has no permission to
    check); the registry asks for the model, which answers 404: a first training run's gate finds no champion
    instead of failing on a permission it cannot be given."""
    registry = RestRegistry(auth_registry.uri, TIMEOUT_S, access=_access(auth_registry.reader))
    with pytest.raises(NotFoundError):
        registry.version_by_alias("never-registered", "champion")
    with pytest.raises(NotFoundError):  # an alias the existing model does not have is a 404 anyway
        registry.version_by_alias(auth_registry.model, "no-such-alias")


def test_a_read_only_user_cannot_move_the_alias(auth_registry: AuthRegistry) -> None:
    """What the docs advise: serving gets a reader; only the publisher may decide what is served."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        _post(
            auth_registry.uri,
            "registered-models/alias",
            {"name": auth_registry.model, "alias": "champion", "version": "1"},
            auth_registry.reader,
        )
    assert refused.value.code == 403


def test_entrypoint_resolution_refuses_at_once_without_credentials(auth_registry: AuthRegistry) -> None:
    """A 401 is a configuration error: exit code of "credentials", no retries, the variables to set."""
    base = {
        "mlflow_tracking_uri": auth_registry.uri,
        "model_name": auth_registry.model,
        "pull_retries": 5,
        "registry_timeout_s": TIMEOUT_S,
    }
    with pytest.raises(DeliveryError) as denied:
        resolve(Settings(**base))  # type: ignore[arg-type]
    assert denied.value.failure == "credentials" and denied.value.exit_code == 6
    assert "MLFLOW_TRACKING_USERNAME" in str(denied.value)
    reader = {"mlflow_tracking_username": READER, "mlflow_tracking_password": auth_registry.reader.password}
    resolved = resolve(Settings(**base, **reader))  # type: ignore[arg-type]
    assert resolved.version == 1 and resolved.dvc_hash == "ab" * 16 + ".dir"


def test_model_view_reads_the_registry_with_the_servers_credentials(auth_registry: AuthRegistry) -> None:
    settings = ConnectionSettings(
        mlflow_tracking_uri=auth_registry.uri,
        mlflow_tracking_username=READER,
        mlflow_tracking_password=auth_registry.reader.password,
    )
    view = RegistryView(auth_registry.uri, auth_registry.model, TIMEOUT_S, settings.registry_access)
    found = asyncio.run(view.of(auth_registry.content_hash))
    assert found["registry"]["version"] == 1 and found["registry"]["aliases"] == ["champion"]
    anonymous = asyncio.run(
        RegistryView(auth_registry.uri, auth_registry.model, TIMEOUT_S).of(auth_registry.content_hash)
    )
    assert anonymous["registry"] == "unavailable" and "401" in anonymous["reason"]


def test_registry_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-5be1c0d3")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-9a7e6f21")
    assert redact("sent pw-5be1c0d3 and tok-9a7e6f21 to http://u:p@h") == "sent *** and *** to http://***@h"
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    settings = ConnectionSettings(mlflow_tracking_username="u")
    assert settings.registry_access.password == "pw-5be1c0d3"
    assert "pw-5be1c0d3" not in repr(settings) + repr(settings.registry_access)


# TLS: an HTTPS front for the basic-auth server, with a certificate from a throwaway certificate authority.


@dataclass
class HttpsFront:
    url: str
    ca: Path
    authorizations: list[str | None] = field(default_factory=list)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA certificate, and a server certificate for 127.0.0.1 signed by it, with its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture(scope="module")
def https_front(auth_registry: AuthRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsFront]:
    """HTTPS on 127.0.0.1 forwarding GETs (with their Authorization header) to the basic-auth server."""
    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"))
    upstream = auth_registry.uri
    seen: list[str | None] = []

    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization")
            seen.append(authorization)
            headers = {"Authorization": authorization} if authorization else {}
            request = urllib.request.Request(upstream + self.path, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                    status, body = answer.status, answer.read()
            except urllib.error.HTTPError as refused:
                status, body = refused.code, refused.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer((LOOPBACK, 0), Forward)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpsFront(f"https://{LOOPBACK}:{server.server_address[1]}", ca, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_tls_is_checked_against_the_configured_authority(auth_registry: AuthRegistry, https_front: HttpsFront) -> None:
    reader = auth_registry.reader
    trusted = RegistryAccess(username=reader.username, password=reader.password, server_cert_path=https_front.ca)
    assert (
        RestRegistry(https_front.url, TIMEOUT_S, access=trusted)
        .version_by_alias(auth_registry.model, "champion")
        .version
        == 1
    )
    untrusted = RegistryAccess(username=reader.username, password=reader.password)
    with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED"):
        RestRegistry(https_front.url, TIMEOUT_S, access=untrusted).version_by_alias(auth_registry.model, "champion")
    insecure = RegistryAccess(username=reader.username, password=reader.password, insecure_tls=True)
    assert RestRegistry(https_front.url, TIMEOUT_S, access=insecure).version(auth_registry.model, 1).version == 1


def test_a_token_is_sent_as_bearer(auth_registry: AuthRegistry, https_front: HttpsFront) -> None:
    """MLflow's basic-auth app takes no tokens (a token is for servers behind a gateway that does): it
    refuses; the header that reached the server is MLflow's client's ``Bearer <token>``."""
    access = RegistryAccess(token="tok-0f3a9c", server_cert_path=https_front.ca)
    with pytest.raises(AccessDeniedError, match="refused the credentials"):
        RestRegistry(https_front.url, TIMEOUT_S, access=access).version_by_alias(auth_registry.model, "champion")
    assert https_front.authorizations[-1] == "Bearer tok-0f3a9c"


def test_access_settings_refuse_ambiguity(tmp_path: Path) -> None:
    from app.contract.connection import SettingsError, load_from_environment

    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    cases = {
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD together": {"MLFLOW_TRACKING_USERNAME": "u"},
        "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD, not both": {
            "MLFLOW_TRACKING_USERNAME": "u",
            "MLFLOW_TRACKING_PASSWORD": "p",
            "MLFLOW_TRACKING_TOKEN": "t",
        },
        "MLFLOW_TRACKING_INSECURE_TLS or MLFLOW_TRACKING_SERVER_CERT_PATH, not both": {
            "MLFLOW_TRACKING_INSECURE_TLS": "true",
            "MLFLOW_TRACKING_SERVER_CERT_PATH": os.fspath(ca),
        },
        "MLFLOW_TRACKING_SERVER_CERT_PATH": {"MLFLOW_TRACKING_SERVER_CERT_PATH": os.fspath(tmp_path / "absent.pem")},
    }
    for message, env in cases.items():
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with pytest.raises(SettingsError, match=message):
                load_from_environment(ConnectionSettings)
