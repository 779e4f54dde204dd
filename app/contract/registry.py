"""Read-only view of the MLflow model registry: the entrypoint's look-up, ``GET /model``, the promotion gate.

Serving talks to an ``http(s)://`` tracking server over MLflow's REST API with the standard library only,
so the serving image carries no ``mlflow`` package. It authenticates and checks TLS the way MLflow's own
client does, from the same variables (``RegistryAccess``: ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` or
``_TOKEN``, ``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH``). A local store (``sqlite://`` or a path), used by the
embedded quickstart, goes through the ``mlflow`` client, which only the training environment has.

A registered version carries tags naming its bundle (see ``TAG_*``); they are the link from the registry to
the blobs in the DVC remote.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

TAG_DVC_HASH: Final = "bundle_dvc_hash"
TAG_CONTENT_HASH: Final = "bundle_content_hash"
TAG_DATA_HASH: Final = "data_hash"
TAG_TRAINING_FINGERPRINT: Final = "training_fingerprint"  # app.contract.bundle.training_fingerprint


class RegistryError(RuntimeError):
    """The registry could not be reached or answered with an error."""


class NotFoundError(RegistryError):
    """The model, alias, version or tagged version does not exist."""


class AccessDeniedError(RegistryError):
    """The registry refused the credentials (401) or their permissions (403): retrying cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RegistryAccess:
    """How to authenticate to a tracking server and check its TLS certificate: MLflow's own client options.

    Basic auth (``username`` and ``password``) or a bearer ``token``; ``insecure_tls`` skips certificate
    checks, ``server_cert_path`` is a CA bundle to check against, ``client_cert_path`` a client certificate
    (with its key) for mutual TLS. Secrets never appear in ``repr``.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    insecure_tls: bool = False
    server_cert_path: Path | None = None
    client_cert_path: Path | None = None

    @property
    def authenticates(self) -> bool:
        return bool(self.token or self.username)

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header, as MLflow's client sends it (basic auth wins over a token)."""
        if self.username and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {pair}"}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for ``https://`` tracking servers."""
        context = ssl.create_default_context(cafile=self.server_cert_path)
        if self.insecure_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert_path:
            context.load_cert_chain(self.client_cert_path)
        return context


ANONYMOUS: Final = RegistryAccess()


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    run_id: str | None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def dvc_hash(self) -> str | None:
        return self.tags.get(TAG_DVC_HASH)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": self.aliases,
            "run_id": self.run_id,
            "tags": self.tags,
        }

    @classmethod
    def from_rest(cls, body: dict[str, Any]) -> ModelVersion:
        return cls(
            name=body["name"],
            version=int(body["version"]),
            run_id=body.get("run_id"),
            aliases=list(body.get("aliases", [])),
            tags={t["key"]: t["value"] for t in body.get("tags", [])},
        )


class Registry(Protocol):
    def version_by_alias(self, name: str, alias: str) -> ModelVersion: ...
    def version(self, name: str, version: int) -> ModelVersion: ...
    def versions_tagged(self, key: str, value: str) -> list[ModelVersion]: ...
    def run_metrics(self, run_id: str) -> dict[str, float]: ...


class Deadline:
    """A whole request's time limit: when it passes, the request's sockets are shut down, so a server that trickles
    its answer (each byte within the socket timeout) cannot hold the calling thread past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._timer.cancel()

    def track(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None:
                self._sockets.append(sock)
            if self.expired:
                self._cut_locked()

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            self._cut_locked()

    def _cut_locked(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once

    def connection(self, kind: type[http.client.HTTPConnection]) -> Any:
        """A connection factory for ``kind`` whose sockets this deadline cuts."""

        def make(host: str, **options: Any) -> http.client.HTTPConnection:
            connection = kind(host, **options)
            connect = connection.connect

            def connect_tracked() -> None:
                connect()
                self.track(connection.sock)

            connection.connect = connect_tracked  # type: ignore[method-assign]
            return connection

        return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.deadline.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.deadline = deadline
        self.tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.deadline.connection(http.client.HTTPSConnection), req, context=self.tls)


class RestRegistry:
    """MLflow's REST API (``/api/2.0/mlflow/...``) over urllib; each request is bounded by ``timeout`` in all
    (``Deadline``), not only between two bytes."""

    def __init__(self, tracking_uri: str, timeout: float = 5.0, access: RegistryAccess = ANONYMOUS) -> None:
        self.base = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
        self.timeout = timeout
        self._headers = access.headers()
        self._tls: ssl.SSLContext | None = None
        if self.base.startswith("https://"):
            try:
                self._tls = access.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"the TLS certificate settings cannot be used: {exc}") from None

    def _get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}/{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310 (http(s) checked by Settings)
        with Deadline(self.timeout) as deadline:
            handlers: list[urllib.request.BaseHandler] = [_HTTPHandler(deadline)]
            if self._tls is not None:
                handlers.append(_HTTPSHandler(deadline, self._tls))
            try:
                return self._answer(urllib.request.build_opener(*handlers), request)
            except RegistryError:
                if deadline.expired:
                    raise RegistryError(
                        f"MLflow at {self.base.removesuffix('/api/2.0/mlflow')} did not answer within "
                        f"REGISTRY_TIMEOUT_S={self.timeout:g}s"
                    ) from None
                raise

    def _answer(self, opener: urllib.request.OpenerDirector, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except urllib.error.HTTPError as exc:
            detail = _error_message(exc)
            if exc.code in (401, 403):
                raise AccessDeniedError(_denied(exc.code, bool(self._headers), detail), exc.code) from None
            if exc.code == 404 or "RESOURCE_DOES_NOT_EXIST" in detail or "not found" in detail.lower():
                raise NotFoundError(detail) from None
            raise RegistryError(f"MLflow answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"MLflow at {self.base.removesuffix('/api/2.0/mlflow')} is unreachable: {reason}"
            ) from None

    def version_by_alias(self, name: str, alias: str) -> ModelVersion:
        try:
            found = self._get("registered-models/alias", name=name, alias=alias)
        except AccessDeniedError as denied:
            # MLflow's basic-auth app answers 403, not 404, to an alias of a model that does not exist yet (it
            # cannot check the permission of a missing model): ask for the model itself, which says 404 then.
            if denied.status != 403:
                raise
            self._get("registered-models/get", name=name)  # NotFoundError when the model does not exist
            raise
        return ModelVersion.from_rest(found["model_version"])

    def version(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.from_rest(self._get("model-versions/get", name=name, version=str(version))["model_version"])

    def versions_tagged(self, key: str, value: str) -> list[ModelVersion]:
        body = self._get("model-versions/search", filter=f"tags.{key} = '{value}'")
        versions = [ModelVersion.from_rest(v) for v in body.get("model_versions", [])]
        # search results omit aliases on some MLflow versions: read each version in full
        return [self.version(v.name, v.version) for v in versions]

    def run_metrics(self, run_id: str) -> dict[str, float]:
        metrics = self._get("runs/get", run_id=run_id)["run"].get("data", {}).get("metrics", [])
        return {str(m["key"]): float(m["value"]) for m in metrics}


def _denied(code: int, sent_credentials: bool, detail: str) -> str:
    if code == 403:
        return f"MLflow refused access (403: the user lacks permission to read this model): {detail}"
    if sent_credentials:
        return f"MLflow refused the credentials (401): {detail}"
    return f"MLflow requires authentication (401) and no credentials are set: {detail}"


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return f"{body.get('error_code', exc.code)}: {body.get('message', '')}"
    except (ValueError, OSError):
        return f"HTTP {exc.code}"


class LocalRegistry:
    """A local MLflow store (sqlite or file) through the ``mlflow`` client: the embedded quickstart only."""

    def __init__(self, tracking_uri: str) -> None:
        try:
            from mlflow.exceptions import MlflowException
        except ImportError as exc:
            raise RegistryError(
                f"MLFLOW_TRACKING_URI={tracking_uri} is a local store, which needs the mlflow package; "
                "point it at an http(s):// tracking server instead"
            ) from exc
        self._client = mlflow_client(tracking_uri)
        self._error = MlflowException

    def _convert(self, mv: Any) -> ModelVersion:
        return ModelVersion(
            name=mv.name, version=int(mv.version), run_id=mv.run_id, aliases=list(mv.aliases), tags=dict(mv.tags)
        )

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._error as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
                raise NotFoundError(str(exc)) from None
            raise RegistryError(str(exc)) from None

    def version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return self._convert(self._call(self._client.get_model_version_by_alias, name, alias))

    def version(self, name: str, version: int) -> ModelVersion:
        return self._convert(self._call(self._client.get_model_version, name, str(version)))

    def versions_tagged(self, key: str, value: str) -> list[ModelVersion]:
        found = self._call(self._client.search_model_versions, f"tags.{key} = '{value}'")
        return [self.version(mv.name, int(mv.version)) for mv in found]

    def run_metrics(self, run_id: str) -> dict[str, float]:
        run = self._call(self._client.get_run, run_id)
        return {str(k): float(v) for k, v in run.data.metrics.items()}


def mlflow_client(tracking_uri: str) -> Any:
    """The ``mlflow`` client for ``tracking_uri`` as tracking store and registry alike (training environments).

    Passing both URIs explicitly leaves MLflow's process-global configuration (an Airflow task's, a test's)
    as it was.
    """
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def registry_for(tracking_uri: str, timeout: float = 5.0, access: RegistryAccess = ANONYMOUS) -> Registry:
    """The registry client for a tracking URI: REST for http(s), the mlflow client for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return RestRegistry(tracking_uri, timeout, access)
    return LocalRegistry(tracking_uri)
