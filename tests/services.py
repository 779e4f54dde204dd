"""Real services for tests and benchmarks: a moto S3 server and an ``mlflow server``, on 127.0.0.1 only.

Each is started as a subprocess on a free port and stopped by whoever started it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

BIN: Final = Path(sys.executable).parent
LOOPBACK: Final = "127.0.0.1"
# Fake credentials for the moto server: never real ones, never printed by the code under test.
S3_ENV: Final[dict[str, str]] = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 2xx (or raise, with the process's exit if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group, then SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        except ProcessLookupError:
            pass


@contextmanager
def running(
    args: list[str],
    ready_url: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args`` in its own process group, wait for ``ready_url``, and always stop it."""
    out = log.open("wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_http(ready_url, timeout, process)
        yield process
    finally:
        stop(process)
        if log:
            out.close()  # type: ignore[union-attr]


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """What a client needs to reach this store (credentials are the fake ones)."""
        return {**S3_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint_url, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url}

    def client(self) -> Any:
        """A boto3 S3 client for this store, with the fake credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"), timeout=5)


def blob_key(prefix: str, md5: str) -> str:
    """Where DVC 3 keeps a blob in a remote: ``<prefix>/files/md5/<2 hex>/<rest>``."""
    return f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"


@contextmanager
def moto_server(port: int | None = None, log: Path | None = None) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1."""
    port = port or free_port()
    url = f"http://{LOOPBACK}:{port}"
    with running([str(BIN / "moto_server"), "-H", LOOPBACK, "-p", str(port)], f"{url}/moto-api/", log=log, timeout=30):
        yield S3Server(url)


@dataclass(frozen=True)
class RegistryAdmin:
    """The admin account of an ``mlflow server --app-name basic-auth`` (a throwaway password per server)."""

    username: str
    password: str

    def env(self) -> dict[str, str]:
        """MLflow's client variables for this account."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


@contextmanager
def mlflow_server(
    workdir: Path,
    s3: S3Server,
    bucket: str = "mlflow",
    log: Path | None = None,
    admin: RegistryAdmin | None = None,
) -> Iterator[str]:
    """A real ``mlflow server``: sqlite backend in ``workdir``, artifacts in ``bucket`` on the moto server; with
    ``admin``, MLflow's basic-auth app (every request authenticated; other users get read access)."""
    s3.create_bucket(bucket)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow", path=str(BIN)) or "mlflow"
    args = [
        mlflow, "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{bucket}/artifacts",
    ]  # fmt: skip
    env = s3.env()
    if admin is not None:
        config = workdir / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
            f"admin_username = {admin.username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        args += ["--app-name", "basic-auth"]
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": os.fspath(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        }
    url = f"http://{LOOPBACK}:{port}"
    with running(args, f"{url}/health", env=env, timeout=120, log=log):
        yield url
