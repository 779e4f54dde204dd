"""A real image registry on 127.0.0.1, and a client of its HTTP API (the OCI distribution protocol).

``image_registry()`` starts Debian's ``docker-registry`` (the distribution registry, 2.8) with htpasswd basic
auth and its storage in a temporary directory; ``RegistryClient`` pushes and reads blobs, manifests and
indexes as any client does, with the registry's own ``WWW-Authenticate`` challenge answered by the credentials
it was given. The replay's ``publish`` pushes through it; the tests read back what was pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from tests.harness.services import LOOPBACK, Hidden, free_port, running

REGISTRY_SERVER: Final = "/usr/bin/docker-registry"  # Debian's docker-registry
HTPASSWD: Final = "/usr/bin/htpasswd"  # Debian's apache2-utils
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT: Final = ", ".join(
    (
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class RegistryError(RuntimeError):
    """The registry refused a request; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRegistry:
    """A running registry: its host (``127.0.0.1:PORT``) and the one account it accepts."""

    host: str
    username: str
    password: Hidden = field(repr=False)

    def client(self, password: str | None = None) -> RegistryClient:
        return RegistryClient(self.host, self.username, self.password if password is None else password)


@contextmanager
def image_registry(log: Path | None = None) -> Iterator[ImageRegistry]:
    """Debian's docker-registry on 127.0.0.1 (a free port) with htpasswd auth for one generated account."""
    for binary, package in ((REGISTRY_SERVER, "docker-registry"), (HTPASSWD, "apache2-utils")):
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is missing: install Debian's {package} (.ci/run does)")
    username, password = "publisher", Hidden(base64.urlsafe_b64encode(os.urandom(18)).decode())
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="image-registry-") as work:
        htpasswd = Path(work) / "htpasswd"
        made = subprocess.run(
            [HTPASSWD, "-niB", username], input=password, capture_output=True, text=True, check=True
        )  # the password on stdin, never on a command line
        htpasswd.write_text(made.stdout)
        config = Path(work) / "config.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "version": 0.1,
                    "log": {"level": "warn", "accesslog": {"disabled": True}},
                    "storage": {"filesystem": {"rootdirectory": str(Path(work) / "data")}, "delete": {"enabled": True}},
                    "http": {"addr": f"{LOOPBACK}:{port}", "secret": os.urandom(16).hex()},
                    "auth": {"htpasswd": {"realm": "flight-price-tests", "path": str(htpasswd)}},
                }
            )
        )
        with running([REGISTRY_SERVER, "serve", str(config)], f"http://{LOOPBACK}:{port}/", log=log):
            yield ImageRegistry(f"{LOOPBACK}:{port}", username, password)


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class RegistryClient:
    """The distribution API of one registry, over HTTP (a registry on this machine's loopback only)."""

    def __init__(self, host: str, username: str, password: str) -> None:
        if not host.startswith((f"{LOOPBACK}:", "localhost:")):
            raise RegistryError(f"{host}: the tests push only to a registry on this machine's loopback", 0)
        self.host = host
        self.username = username
        self._authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def __repr__(self) -> str:
        return f"RegistryClient({self.host!r}, {self.username!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
        size: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request (``path`` from ``/v2/`` on, or a full upload URL); status, headers, body. 4xx/5xx raise."""
        url = path if path.startswith("http") else f"http://{self.host}{path}"
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", self._authorization)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if size is not None:
            request.add_header("Content-Length", str(size))
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")[:500].strip()
            if error.code == 401:
                raise RegistryError(
                    f"registry {self.host} refused the credentials of {self.username!r} (401): {body}", 401
                ) from None
            if method == "HEAD" and error.code == 404:
                return 404, dict(error.headers), b""
            raise RegistryError(f"{method} {url}: {error.code} {body}", error.code) from None

    def ping(self) -> None:
        """``GET /v2/`` with the credentials: raises at once when the registry refuses them."""
        self.request("GET", "/v2/")

    def has_blob(self, repository: str, blob: str) -> bool:
        return self.request("HEAD", f"/v2/{repository}/blobs/{blob}")[0] == 200

    def push_blob(self, repository: str, blob: str, data: IO[bytes] | bytes, size: int) -> None:
        """A monolithic upload (POST, then PUT with the digest), unless the registry has the blob already."""
        if self.has_blob(repository, blob):
            return
        _, headers, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/", data=b"", size=0)
        location = headers["Location"]
        if not location.startswith("http"):
            location = f"http://{self.host}{location}"
        separator = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{separator}digest={blob}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            size=size,
        )

    def put_manifest(self, repository: str, manifest: dict[str, Any], reference: str | None = None) -> tuple[str, int]:
        """PUT a manifest or index under ``reference`` (a tag; by default its own digest); its digest and size."""
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = sha256_digest(body)
        self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference or digest}",
            data=body,
            headers={"Content-Type": manifest["mediaType"]},
        )
        return digest, len(body)

    def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
        """The manifest or index under ``reference``, as stored (``skopeo inspect --raw``): its media type and JSON."""
        _, headers, body = self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        loaded: dict[str, Any] = json.loads(body)
        return headers.get("Content-Type", ""), loaded

    def blob(self, repository: str, blob: str) -> bytes:
        return self.request("GET", f"/v2/{repository}/blobs/{blob}")[2]

    def catalog(self) -> list[str]:
        repositories: list[str] = json.loads(self.request("GET", "/v2/_catalog")[2])["repositories"]
        return repositories

    def tags(self, repository: str) -> list[str]:
        try:
            tags: list[str] | None = json.loads(self.request("GET", f"/v2/{repository}/tags/list")[2])["tags"]
        except RegistryError as error:
            if error.status == 404:
                return []
            raise
        return tags or []
