"""Real services for tests and benchmarks: a moto S3 server, an ``mlflow server``, Debian's PostgreSQL 15 and
redis-server, on 127.0.0.1 only.

Each is started as a subprocess (its own process group) on a free port and stopped by whoever started it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

BIN: Final = Path(sys.executable).parent
LOOPBACK: Final = "127.0.0.1"
# Fake credentials for the moto server: never real ones, never printed by the code under test.
S3_ENV: Final[dict[str, str]] = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_keys_in_file(path: Path, keys: Mapping[str, str] = S3_ENV) -> dict[str, str]:
    """Write ``keys`` as an S3 credentials file at ``path`` (a mounted Secret) and return the environment that
    points at it: the key variables emptied (empty counts as unset for the S3 client), the file named."""
    path.write_text(
        f"[default]\naws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}\n"
    )
    return {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": os.fspath(path)}


class Hidden(str):
    """A string whose ``repr`` hides it (a password, a URL holding one): pytest prints the arguments of every frame
    of a failure's traceback."""

    def __repr__(self) -> str:
        return "'***'"


class Environment(dict[str, str]):
    """Environment variables whose ``repr`` names them without their values (some hold secrets)."""

    def __repr__(self) -> str:
        return f"Environment({sorted(self)})"


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


def printed(log: Path, text: str, timeout: float = 30) -> str:
    """The process output in ``log`` once it holds ``text`` (or an assertion error after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while text not in (output := log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not printed within {timeout}s:\n{output}"
        time.sleep(0.1)
    return output


def stop(process: subprocess.Popen[bytes], timeout: float = 10, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the process group (SIGTERM unless ``sig`` says otherwise), then SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
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
        args,
        env=Environment({**os.environ, **(env or {})}),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
    password: str = field(repr=False)

    def env(self) -> dict[str, str]:
        """MLflow's client variables for this account."""
        return Environment({"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password})


@contextmanager
def mlflow_server(
    workdir: Path,
    s3: S3Server,
    bucket: str = "mlflow",
    log: Path | None = None,
    admin: RegistryAdmin | None = None,
    backend_store_uri: str | None = None,
    auth_database_uri: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A real ``mlflow server``: artifacts in ``bucket`` on the moto server; tracking and registry in
    ``backend_store_uri`` (e.g. a postgres URL), else in a sqlite file in ``workdir``. With ``admin``, MLflow's
    basic-auth app (every request authenticated; other users get read access), its users in
    ``auth_database_uri``, else in a sqlite file in ``workdir``. ``extra_env``: more of the server's variables.

    A database URL holds a password: it reaches the server through its environment and the auth config file
    (mode 0600), never its command line.
    """
    s3.create_bucket(bucket)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow", path=str(BIN)) or "mlflow"
    args = [
        mlflow, "server", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--artifacts-destination", f"s3://{bucket}/artifacts",
    ]  # fmt: skip
    env = Environment(s3.env())
    if backend_store_uri is None:
        args += ["--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    else:
        env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri
    if admin is not None:
        config = workdir / "basic_auth.ini"
        database = auth_database_uri or f"sqlite:///{workdir / 'basic_auth.db'}"
        config.touch(mode=0o600)
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {database.replace('%', '%%')}\n"
            f"admin_username = {admin.username}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        args += ["--app-name", "basic-auth"]
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": os.fspath(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        }
    env |= extra_env or {}
    url = f"http://{LOOPBACK}:{port}"
    with running(args, f"{url}/health", env=env, timeout=120, log=log):
        yield url


# --- PostgreSQL (Debian's) -------------------------------------------------------------------------------------

POSTGRES_BIN: Final = Path("/usr/lib/postgresql/15/bin")
POSTGRES_USER: Final = "postgres"  # the Debian system user: initdb and postgres refuse to run as root


@dataclass(frozen=True)
class PostgresDatabase:
    """A database and the role owning it (a throwaway password), on a :class:`PostgresServer`."""

    name: str
    user: str
    password: str = field(repr=False)
    host: str = LOOPBACK
    port: int = 5432

    def url(self, scheme: str = "postgresql") -> str:
        """A SQLAlchemy-style URL (``postgresql+psycopg2``, ``db+postgresql`` for Celery, ...) with the password."""
        return Hidden(f"{scheme}://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/{self.name}")


@dataclass(frozen=True)
class PostgresServer:
    """A running postgres: TCP on ``host:port`` (password authentication), its unix socket in ``socket_dir``
    (trust, reachable by root and the ``postgres`` user only: the directory is theirs, mode 0700)."""

    host: str
    port: int
    socket_dir: Path

    def _superuser(self) -> Any:
        connection = _psycopg2().connect(
            host=os.fspath(self.socket_dir), port=self.port, user=POSTGRES_USER, dbname="postgres"
        )
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> PostgresDatabase:
        """A new role ``name`` with a generated password, owning a new database ``name``."""
        sql = _psycopg2().sql
        password = secrets.token_urlsafe(24)
        connection = self._superuser()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)), [password])
                cursor.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return PostgresDatabase(name, name, password, self.host, self.port)


def _psycopg2() -> Any:
    """psycopg2 (a dependency of Airflow's postgres provider), imported when a postgres is used."""
    import psycopg2  # type: ignore[import-untyped]
    import psycopg2.sql  # type: ignore[import-untyped]

    return psycopg2


def _as_postgres(args: list[str]) -> list[str]:
    """``args`` run as the ``postgres`` user when this process is root (setpriv execs: no intermediate process)."""
    if os.geteuid() != 0:
        return args
    return ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", "--", *args]


@contextmanager
def postgres_server(log: Path | None = None, timeout: float = 60) -> Iterator[PostgresServer]:
    """Debian's PostgreSQL 15 in a fresh temporary cluster, listening on 127.0.0.1 only (a free port).

    The cluster lives in its own temporary directory (pytest's are root's, mode 0700: the ``postgres`` user could
    not enter them), removed afterwards. Tuned for tests: no fsync, no statement echo of failed commands (a
    ``CREATE ROLE ... PASSWORD`` must not reach the log).
    """
    base = Path(tempfile.mkdtemp(prefix="test-postgres-"))
    try:
        if os.geteuid() == 0:
            account = pwd.getpwnam(POSTGRES_USER)
            os.chown(base, account.pw_uid, account.pw_gid)
        os.chmod(base, 0o700)
        data, sockets = base / "data", base / "sockets"
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            subprocess.run(_as_postgres(["mkdir", "-m", "0700", os.fspath(data), os.fspath(sockets)]), check=True)
            subprocess.run(
                _as_postgres([
                    os.fspath(POSTGRES_BIN / "initdb"), "-D", os.fspath(data), "-U", POSTGRES_USER, "-E", "UTF8",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions",
                ]),
                stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120, cwd=base,
            )  # fmt: skip
            port = free_port()
            process = subprocess.Popen(
                _as_postgres([
                    os.fspath(POSTGRES_BIN / "postgres"), "-D", os.fspath(data), "-p", str(port),
                    "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={sockets}",
                    "-c", "max_connections=300", "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "log_min_error_statement=panic",
                ]),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=base,
            )  # fmt: skip
            try:
                server = PostgresServer(LOOPBACK, port, sockets)
                _wait_postgres(server, process, timeout)
                yield server
            finally:
                stop(process, timeout=30, sig=signal.SIGINT)  # SIGINT: postgres's fast shutdown
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_postgres(server: PostgresServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    psycopg2 = _psycopg2()

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode} before accepting connections")
        try:
            server._superuser().close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections within {timeout}s") from None
            time.sleep(0.2)


# --- Redis (Debian's) ------------------------------------------------------------------------------------------

REDIS_SERVER: Final = Path("/usr/bin/redis-server")


@contextmanager
def redis_server(log: Path | None = None, timeout: float = 30) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 (a free port), no config file and no persistence; yields its URL."""
    port = free_port()
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [os.fspath(REDIS_SERVER), "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not _redis_pong(port):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode} before answering PING")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {timeout}s")
            time.sleep(0.1)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        stop(process)
        if log:
            out.close()  # type: ignore[union-attr]


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def trickling_server(*, in_headers: bool) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every connection one byte every 0.2 s, forever (in its headers, or in a
    body it declared longer): each byte comes well within any socket timeout."""
    listener = socket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            start = (
                b"HTTP/1.1 200 OK\r\nX-Slow: " if in_headers else b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n{"
            )
            try:
                conn.sendall(start)
                while not stop.wait(0.2):
                    conn.sendall(b"a" if in_headers else b" ")
            except OSError:
                pass

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
