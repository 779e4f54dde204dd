"""Airflow 3 as it runs in production, from real parts on 127.0.0.1, and a small client of its REST API.

The parts, each its own process (process group) with its log in a file:

- Debian's PostgreSQL 15: Airflow's metadata database, Celery's result backend, MLflow's tracking/registry
  store and MLflow's auth store (one database and role each, throwaway passwords);
- a moto S3 server (DVC remote, MLflow artifacts, the DAG's work area), reached by the DAG's tasks through a
  :class:`SwitchableProxy` a test can turn off (S3 "down") and on again;
- ``mlflow server`` with the basic-auth app; the tasks use an ordinary account the admin creates, as compose does;
- Debian's redis-server: the Celery broker;
- ``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer`` (and, for CeleryExecutor, ``airflow
  celery worker`` processes), configured through environment variables only.

The environment of the Airflow components is two mappings: :func:`common_env`, whose names
(:data:`COMMON_ENV_NAMES`) are those of the compose file's common Airflow environment, and :func:`machine_env`,
what this machine needs besides (home, ports, folders, loopback binds, short poll intervals).

What listens, checked with ``ss -ltnp`` while the stack ran (Airflow 3.3.2, celery provider 3.26.0; the tests
assert it through :meth:`AirflowStack.listening`):

- api-server: ``[api] host``/``port`` (``AIRFLOW__API__HOST=127.0.0.1``, a free port), one uvicorn worker.
- scheduler: its health server binds ``[scheduler] scheduler_health_check_server_host``, 0.0.0.0 by default: set
  to 127.0.0.1 here (free port; ``ENABLE_HEALTH_CHECK`` is on, the stack waits on ``/health``). Its log server
  (``airflow.utils.serve_logs``, started when the executor serves logs: LocalExecutor and CeleryExecutor do)
  binds ``host=""``, i.e. every interface, IPv4 and IPv6, with no setting for the address: turned off with
  ``--skip-serve-logs``.
- triggerer: the same log server on ``[logging] trigger_log_server_port`` (8794): ``--skip-serve-logs``.
- celery worker: the same log server on ``[logging] worker_log_server_port`` (8793): ``--skip-serve-logs``;
  Celery itself listens on nothing (it connects to redis).
- dag-processor: no listening socket.
- postgres, redis-server, moto, mlflow (uvicorn): 127.0.0.1 only; the S3 proxy is a thread of the test process.

Seen: only 127.0.0.1 sockets, under both executors (api-server, scheduler health, postgres, redis, moto, mlflow,
the proxy). The price of the log servers being off: the API server reads a finished task's log from the log
folder it shares with the scheduler (LocalExecutor); a Celery worker's log stays in that worker's own folder (no
shared folder, no log server, no remote logging: the amazon provider is not installed), and the API server would
look for the worker's log server at the task's hostname (``worker-a``), so the tests read those logs from the
workers' folders instead. Task instances record ``localhost`` under LocalExecutor (``getfqdn()``, from
/etc/hosts) and the worker's name under Celery (:func:`worker_hostname`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx

from tests.harness.services import (
    BIN,
    LOOPBACK,
    S3_ENV,
    Environment,
    PostgresDatabase,
    RegistryAdmin,
    S3Server,
    free_port,
    mlflow_server,
    moto_server,
    postgres_server,
    redis_server,
    stop,
    wait_http,
)

REPO: Final = Path(__file__).resolve().parents[2]
DAGS: Final = REPO / "orchestration" / "dags"
DAG_ID: Final = "train_flight_price_model"
TASKS: Final = ("ingest", "validate", "split", "fit_transformer", "train", "evaluate", "gate", "publish")  # its tasks
AIRFLOW: Final = str(BIN / "airflow")
BUCKET: Final = "production-models"  # DVC remote and the DAG's work area
MLFLOW_BUCKET: Final = "production-mlflow"
MODEL_ALIAS: Final = "champion"
# The worker name a task instance records (``AIRFLOW__CORE__HOSTNAME_CALLABLE`` -> :func:`worker_hostname`).
HOSTNAME_ENV: Final = "AIRFLOW_STACK_HOSTNAME"
# Variables of the outer environment that must not reach the Airflow components.
FOREIGN: Final = ("AIRFLOW", "AWS_", "MLFLOW_", "DVC_", "MODEL_", "TRAINING_", "PYTEST_", "_AIRFLOW")
TERMINAL: Final = frozenset({"success", "failed"})

# The names of the compose file's common Airflow environment (orchestration/docker-compose.yaml), in its order:
# tests/orchestration/test_compose.py checks the two agree.
COMMON_ENV_NAMES: Final = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
    "AIRFLOW__CORE__LOAD_EXAMPLES",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
    "TRAINING_WORK_URL",
    "DVC_REMOTE_URL",
    "DVC_REMOTE_ENDPOINT_URL",
    "DVC_REMOTE_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MODEL_NAME",
    "MODEL_ALIAS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def common_env_names() -> frozenset[str]:
    """The names of the common Airflow environment (what compose's ``x-airflow-common`` environment must hold)."""
    return frozenset(COMMON_ENV_NAMES)


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the stack: the name in ``AIRFLOW_STACK_HOSTNAME``, else the FQDN.

    Airflow 3.3 imports it by dotted path (``conf.getimport``) in the scheduler and API server
    (``airflow.utils.net.get_hostname``) and in the task runner (``airflow.sdk.api.client.get_hostname``): the
    latter is what a task instance records as its ``hostname``.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


# --- secrets and redaction ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackSecrets:
    """Throwaway secrets of one stack (generated per session, never printed: :meth:`redact` hides them)."""

    fernet_key: str = field(repr=False)
    jwt_secret: str = field(repr=False)
    api_secret_key: str = field(repr=False)
    aws_secret_access_key: str = field(repr=False)
    airflow_admin: RegistryAdmin = field(repr=False)  # username/password of the FAB admin
    mlflow_admin: RegistryAdmin = field(repr=False)
    mlflow_user: RegistryAdmin = field(repr=False)  # the DAG's ordinary MLflow account

    @classmethod
    def generate(cls) -> StackSecrets:
        from cryptography.fernet import Fernet

        return cls(
            fernet_key=Fernet.generate_key().decode(),
            jwt_secret=secrets.token_urlsafe(32),
            api_secret_key=secrets.token_urlsafe(32),
            aws_secret_access_key=secrets.token_urlsafe(30),
            airflow_admin=RegistryAdmin("admin", secrets.token_urlsafe(16)),
            mlflow_admin=RegistryAdmin("admin", secrets.token_urlsafe(16)),
            mlflow_user=RegistryAdmin("airflow", secrets.token_urlsafe(16)),
        )

    def values(self) -> list[str]:
        return [
            self.fernet_key,
            self.jwt_secret,
            self.api_secret_key,
            self.aws_secret_access_key,
            self.airflow_admin.password,
            self.mlflow_admin.password,
            self.mlflow_user.password,
        ]


def redact(text: str, hidden: list[str]) -> str:
    """``text`` without any of ``hidden`` and without URL user-info (``postgresql://user:password@``)."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    for value in hidden:
        if value:
            text = text.replace(value, "***")
    return text


# --- the S3 proxy ------------------------------------------------------------------------------------------------


class SwitchableProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (a 127.0.0.1 port); :meth:`switch` off makes it reset
    every connection (accepted ones included, open ones closed), as a store that went down."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = (LOOPBACK, upstream_port)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._on = threading.Event()
        self._on.set()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0  # connections reset while off
        self._listener = socket.create_server((LOOPBACK, self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="s3-proxy", daemon=True)
        self._thread.start()

    @property
    def on(self) -> bool:
        return self._on.is_set()

    def switch(self, on: bool) -> None:
        if on:
            self._on.set()
            return
        self._on.clear()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def close(self) -> None:
        self._closing.set()
        self.switch(False)
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._on.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
            with self._lock:
                self._open.discard(source)
            with contextlib.suppress(OSError):
                source.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees ``connection reset``, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


# --- the environment ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the stack's services are (what the common environment points at)."""

    metadata_db: PostgresDatabase
    result_db: PostgresDatabase
    broker_url: str
    api_port: int
    s3_endpoint: str  # the proxy in front of moto: what the DAG's tasks use
    mlflow_uri: str
    model_name: str


def common_env(executor: str, endpoints: Endpoints, stack_secrets: StackSecrets) -> dict[str, str]:
    """The environment every Airflow component gets, under the compose file's names (:data:`COMMON_ENV_NAMES`)."""
    env = {
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": endpoints.metadata_db.url("postgresql+psycopg2"),
        "AIRFLOW__CELERY__RESULT_BACKEND": endpoints.result_db.url("db+postgresql"),
        "AIRFLOW__CELERY__BROKER_URL": endpoints.broker_url,
        "AIRFLOW__CORE__FERNET_KEY": stack_secrets.fernet_key,
        "AIRFLOW__API_AUTH__JWT_SECRET": stack_secrets.jwt_secret,
        "AIRFLOW__API__SECRET_KEY": stack_secrets.api_secret_key,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{LOOPBACK}:{endpoints.api_port}/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
        "TRAINING_WORK_URL": f"s3://{BUCKET}/training-work",
        "DVC_REMOTE_URL": f"s3://{BUCKET}/{endpoints.model_name}",
        "DVC_REMOTE_ENDPOINT_URL": endpoints.s3_endpoint,
        "DVC_REMOTE_REGION": S3_ENV["AWS_DEFAULT_REGION"],
        "MLFLOW_TRACKING_URI": endpoints.mlflow_uri,
        "MLFLOW_TRACKING_USERNAME": stack_secrets.mlflow_user.username,
        "MLFLOW_TRACKING_PASSWORD": stack_secrets.mlflow_user.password,
        "MODEL_NAME": endpoints.model_name,
        "MODEL_ALIAS": MODEL_ALIAS,
        "AWS_ACCESS_KEY_ID": S3_ENV["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": stack_secrets.aws_secret_access_key,
    }
    assert tuple(env) == COMMON_ENV_NAMES  # one place for the names
    return env


def machine_env(
    home: Path, api_port: int, health_port: int, log_folder: Path, log_server_ports: tuple[int, int]
) -> dict[str, str]:
    """What this machine needs besides the common environment (not in compose: its containers get these from
    the image, their hostnames and volumes)."""
    return {
        # Where Airflow keeps its files, and where the DAGs and the project's code are (the image's /opt/airflow).
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(home / "tmp"),  # a local work area (the DAG without TRAINING_WORK_URL) lives under it
        "HOME": str(home),
        # Loopback only, free ports: the API server, the scheduler's health server; the log servers are off
        # (--skip-serve-logs), their ports set anyway so nothing ever takes 8793/8794.
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_ports[0]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_server_ports[1]),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(log_folder),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.harness.airflow_stack.worker_hostname",
        # A 2-core machine and a linear DAG: two task processes at most; short poll intervals keep runs quick.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        # Nothing but 127.0.0.1 is ever contacted: no outer proxy for any client.
        "NO_PROXY": "*",
        "no_proxy": "*",
    }


def outer_env() -> dict[str, str]:
    """This process's environment without anything Airflow, AWS, MLflow, DVC or the DAG would read."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(FOREIGN) and "PROXY" not in k.upper()}


# --- processes ---------------------------------------------------------------------------------------------------


@dataclass
class Component:
    """One long-running process of the stack, its own process group, its output in ``log``."""

    name: str
    args: list[str]
    env: dict[str, str] = field(repr=False)  # holds the secrets
    log: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=20)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _run(args: list[str], env: dict[str, str], log: Path, hidden: list[str], timeout: float = 300) -> None:
    """A one-shot Airflow command; fails with the redacted tail of its output (never its arguments)."""
    with log.open("ab") as out:
        done = subprocess.run(args[:], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{log.stem} failed ({done.returncode}):\n{tail(log, hidden)}")


def tail(log: Path, hidden: list[str], lines: int = 60) -> str:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return f"({log} not written)"
    return redact("\n".join(text.splitlines()[-lines:]), hidden)


@contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_mlflow_user(uri: str, admin: RegistryAdmin, user: RegistryAdmin) -> None:
    """The DAG's ordinary account, created by the admin as compose's mlflow-users job does."""
    from mlflow.server import get_app_client

    try:
        with _environ(admin.env()):
            get_app_client("basic-auth", tracking_uri=uri).create_user(user.username, user.password)
    except Exception as exc:  # raised anew: the client's frames hold the passwords
        raise RuntimeError(f"creating MLflow user {user.username!r} failed: {type(exc).__name__}") from None


# --- the REST client ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A finished DAG run as the API shows it."""

    run_id: str
    state: str
    seconds: float  # trigger to end, on the test's clock
    task_instances: dict[str, dict[str, Any]]

    def states(self) -> dict[str, str | None]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances.items()}


class AirflowClient:
    """The API server's public REST API (``/api/v2``) with a JWT from the FAB auth manager's ``/auth/token``."""

    def __init__(self, base_url: str, account: RegistryAdmin, timeout: float = 30) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)
        try:
            answer = self._http.post("/auth/token", json={"username": account.username, "password": account.password})
        except httpx.HTTPError as exc:  # raised anew: the request's frames hold the password
            raise RuntimeError(f"POST /auth/token failed: {type(exc).__name__}") from None
        if answer.status_code != 201:
            raise RuntimeError(f"POST /auth/token answered {answer.status_code}")
        self._http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                               f"{response.text[:2000]}")  # fmt: skip
        return response.json()

    def dag_status(self, dag_id: str) -> int:
        return self._http.get(f"/api/v2/dags/{dag_id}").status_code

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Until the dag-processor has parsed the DAG (GET answers 200)."""
        deadline = time.monotonic() + timeout
        while (status := self.dag_status(dag_id)) != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} not parsed within {timeout}s (GET answers {status})")
            time.sleep(0.5)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": paused}))
        return result

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        body = {"logical_date": None, "conf": conf}
        return str(self._ok(self._http.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body))["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._ok(self._http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))
        return result

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """state, try_number, hostname, queued_when, start_date, end_date, ... of each task of the run."""
        body = self._ok(self._http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))
        return list(body["task_instances"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_poll: Callable[[dict[str, str | None]], None] | None = None,
        interval: float = 0.5,
    ) -> dict[str, Any]:
        """Poll until the run ends (success or failed), printing each change of its task states."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        last: dict[str, str | None] = {}
        while True:
            states = self.task_states(dag_id, run_id)
            if on_poll is not None:
                on_poll(states)
            if states != last:
                summary = ", ".join(f"{t}={s}" for t, s in sorted(states.items()) if s)
                print(f"  [{time.monotonic() - started:6.1f}s] {run_id}: {summary}", flush=True)
                last = states
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{run_id} still {run['state']} after {timeout}s: {states}")
            time.sleep(interval)

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value, deserialised by the API server."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        value = self._ok(self._http.get(path, params={"deserialize": "true"}))["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task's log as the UI reads it (every line, one JSON object per structured line)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        body = self._ok(self._http.get(path, params={"full_content": "true"}, headers={"Accept": "application/json"}))
        content = body["content"]
        if isinstance(content, str):
            return content
        return "\n".join(json.dumps(line, default=str) if not isinstance(line, str) else line for line in content)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the stack ---------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class AirflowStack:
    """The running stack; :meth:`close` (or the ``start`` context manager) stops every process it started."""

    root: Path
    secrets: StackSecrets
    s3: S3Server
    proxy: SwitchableProxy
    mlflow_uri: str
    model_name: str
    endpoints: Endpoints
    api_url: str
    health_url: str
    components: dict[str, Component] = field(default_factory=dict)
    service_logs: dict[str, Path] = field(default_factory=dict)
    client: AirflowClient | None = None
    executor: str = "LocalExecutor"
    workers: tuple[str, ...] = ()
    log_server_ports: tuple[int, int] = field(default_factory=lambda: (free_port(), free_port()))

    def __repr__(self) -> str:  # short, and nothing of the environments (assertion messages show it)
        return f"AirflowStack(api={self.api_url}, executor={self.executor}, root={self.root})"

    # -- environment

    def hidden(self) -> list[str]:
        """Every secret of the stack (for :func:`redact`)."""
        return [*self.secrets.values(), self.endpoints.metadata_db.password, self.endpoints.result_db.password]

    def env(self, executor: str, home: Path | None = None, log_folder: Path | None = None) -> dict[str, str]:
        home = home or self.root / "airflow-home"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return Environment(
            {
                **outer_env(),
                **common_env(executor, self.endpoints, self.secrets),
                **machine_env(
                    home,
                    self.endpoints.api_port,
                    int(self.health_url.rsplit(":", 1)[1].split("/")[0]),
                    log_folder or self.root / "task-logs",
                    self.log_server_ports,
                ),
            }
        )

    # -- processes

    def start_component(self, name: str, args: list[str], env: dict[str, str]) -> Component:
        component = Component(name, [AIRFLOW, *args], env, self.root / "logs" / f"{name}.log", REPO)
        if old := self.components.get(name):
            old.stop()
        self.components[name] = component
        component.start()
        return component

    def stop_component(self, name: str) -> None:
        if component := self.components.pop(name, None):
            component.stop()

    def close(self) -> None:
        """Stop every component at once (each is its own process group; one by one, their shutdowns add up)."""
        if self.client is not None:
            self.client.close()
        stopping = [self.components.pop(name) for name in reversed(list(self.components))]
        threads = [threading.Thread(target=c.stop, name=f"stop-{c.name}") for c in stopping]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def check_alive(self) -> None:
        dead = [c.name for c in self.components.values() if not c.alive()]
        if dead:
            raise RuntimeError(f"stopped unexpectedly: {dead}\n{self.logs(dead)}")

    def logs(self, names: list[str] | None = None, lines: int = 60) -> str:
        """The redacted tail of each named component's (or service's) log, for failure messages."""
        paths = {**self.service_logs, **{n: c.log for n, c in self.components.items()}}
        chosen = names if names is not None else list(paths)
        return "\n".join(
            f"--- {name} ({paths[name]}) ---\n{tail(paths[name], self.hidden(), lines)}"
            for name in chosen
            if name in paths
        )

    def listening(self) -> list[tuple[str, str]]:
        """(local address, ``ss`` process column) of every listening TCP socket owned by a process this process
        started, the stack's and its children (``ss -ltnp``)."""
        pids = _descendants(os.getpid()) | {os.getpid()}  # this process: the S3 proxy
        found = []
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            fields = line.split()
            if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
                found.append((fields[3], " ".join(fields[5:])))
        return found

    # -- executors

    def start_core(self) -> None:
        """api-server, scheduler (LocalExecutor), dag-processor and triggerer; wait until each answers."""
        env = self.env("LocalExecutor")
        self.start_component("api-server", ["api-server"], env)
        self.start_component("scheduler", ["scheduler", "--skip-serve-logs"], env)
        self.start_component("dag-processor", ["dag-processor"], env)
        self.start_component("triggerer", ["triggerer", "--skip-serve-logs"], env)
        for name, url in (("api-server", f"{self.api_url}/api/v2/version"), ("scheduler", self.health_url)):
            try:
                wait_http(url, 180, self.components[name].process)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{name}: {exc}\n{self.logs([name])}") from None
        self.client = AirflowClient(self.api_url, self.secrets.airflow_admin)

    def use_celery(self, workers: tuple[str, ...] = ("worker-a", "worker-b")) -> None:
        """Restart only what changes: the scheduler with CeleryExecutor, and a Celery worker per name, each with a
        fresh empty directory of its own as HOME, TMPDIR, AIRFLOW_HOME and log folder (no path shared with the
        other components but the code: the repository, as the image would hold it), concurrency 1."""
        self.stop_component("scheduler")
        self.executor, self.workers = "CeleryExecutor", workers
        self.start_component("scheduler", ["scheduler", "--skip-serve-logs"], self.env("CeleryExecutor"))
        for name in workers:
            home = self.root / name
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            env = Environment({**self.env("CeleryExecutor", home=home, log_folder=home / "logs"), HOSTNAME_ENV: name})
            self.start_component(
                name,
                ["celery", "worker", "--concurrency", "1", "--skip-serve-logs", "--celery-hostname", f"{name}@%h"],
                env,
            )
        try:
            wait_http(self.health_url, 180, self.components["scheduler"].process)
            self._wait_for_workers(workers, 180)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{self.logs(['scheduler', *workers])}") from None

    def use_local(self) -> None:
        """Back to LocalExecutor (the Celery workers stopped), if the stack is not on it."""
        if self.executor == "LocalExecutor":
            return
        for name in self.workers:
            self.stop_component(name)
        self.stop_component("scheduler")
        self.executor, self.workers = "LocalExecutor", ()
        self.start_component("scheduler", ["scheduler", "--skip-serve-logs"], self.env("LocalExecutor"))
        wait_http(self.health_url, 180, self.components["scheduler"].process)

    def _wait_for_workers(self, names: tuple[str, ...], timeout: float) -> None:
        from celery import Celery  # type: ignore[import-untyped]

        app = Celery(broker=self.endpoints.broker_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive()
                answered = {next(iter(reply)).split("@")[0] for reply in app.control.ping(timeout=1.0)}
                if set(names) <= answered:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"celery workers answering: {sorted(answered)}, expected {sorted(names)}")
                time.sleep(1)
        finally:
            app.close()


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, grandchildren, ...), from /proc."""
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, set()).add(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), set()) - found:
            found.add(child)
            todo.append(child)
    return found


@contextmanager
def start(root: Path, model_name: str) -> Iterator[AirflowStack]:
    """The whole stack under ``root`` (logs in ``root/logs``), LocalExecutor; stopped on exit, whatever happens."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack_secrets = StackSecrets.generate()
    with ExitStack() as exits:
        postgres = exits.enter_context(postgres_server(log=logs / "postgres.log"))
        metadata_db = postgres.create_database("airflow")
        result_db = postgres.create_database("celery_results")
        mlflow_db = postgres.create_database("mlflow")
        mlflow_auth_db = postgres.create_database("mlflow_auth")
        s3 = exits.enter_context(moto_server(log=logs / "moto.log"))
        s3.create_bucket(BUCKET)
        proxy = SwitchableProxy(int(s3.endpoint_url.rsplit(":", 1)[1]))
        exits.callback(proxy.close)
        broker_url = exits.enter_context(redis_server(log=logs / "redis.log"))
        api_port, health_port = free_port(), free_port()
        endpoints = Endpoints(
            metadata_db,
            result_db,
            broker_url,
            api_port,
            proxy.url,
            f"http://{LOOPBACK}:{free_port()}",  # replaced by the server's URL below
            model_name,
        )
        stack = AirflowStack(
            root=root,
            secrets=stack_secrets,
            s3=s3,
            proxy=proxy,
            mlflow_uri="",
            model_name=model_name,
            endpoints=endpoints,
            api_url=f"http://{LOOPBACK}:{api_port}",
            health_url=f"http://{LOOPBACK}:{health_port}/health",
            service_logs={n: logs / f"{n}.log" for n in ("postgres", "moto", "redis", "mlflow", "db-migrate")},
        )
        exits.callback(stack.close)
        # The metadata database is migrated while MLflow starts (each takes tens of seconds).
        migrate = stack.start_component("db-migrate", ["db", "migrate"], stack.env("LocalExecutor"))
        mlflow_uri = exits.enter_context(
            mlflow_server(
                root / "mlflow",
                s3,
                bucket=MLFLOW_BUCKET,
                log=logs / "mlflow.log",
                admin=stack_secrets.mlflow_admin,
                backend_store_uri=mlflow_db.url("postgresql"),
                auth_database_uri=mlflow_auth_db.url("postgresql"),
                # No job runner (a dozen huey consumers on a 2-core machine): the DAG starts no MLflow jobs.
                extra_env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        )
        create_mlflow_user(mlflow_uri, stack_secrets.mlflow_admin, stack_secrets.mlflow_user)
        stack.mlflow_uri = mlflow_uri
        stack.endpoints = replace(endpoints, mlflow_uri=mlflow_uri)
        assert migrate.process is not None
        if migrate.process.wait(300) != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{stack.logs(['db-migrate'])}")
        stack.components.pop("db-migrate")
        env = stack.env("LocalExecutor")
        # The FAB provider's `airflow users create`, its password from the environment, not the command line (where
        # any process could read it); --password=...: a generated password may start with "-".
        admin = stack_secrets.airflow_admin
        create_admin = (
            "import os, sys; from airflow.__main__ import main; "
            "sys.argv = ['airflow', 'users', 'create', '--username', os.environ['STACK_ADMIN_USERNAME'], "
            "'--password=' + os.environ.pop('STACK_ADMIN_PASSWORD'), '--firstname', 'Stack', '--lastname', 'Admin', "
            "'--role', 'Admin', '--email', 'admin@example.invalid']; main()"
        )
        _run(
            [sys.executable, "-c", create_admin],
            Environment({**env, "STACK_ADMIN_USERNAME": admin.username, "STACK_ADMIN_PASSWORD": admin.password}),
            logs / "users-create.log",
            stack.hidden(),
        )
        stack.start_core()
        yield stack


def main() -> None:  # pragma: no cover - a manual look: python -m tests.harness.airflow_stack DIR
    """Start the stack under DIR and keep it up until Ctrl-C (prints where the API server is)."""
    root = Path(sys.argv[1])
    shutil.rmtree(root, ignore_errors=True)
    with start(root, "manual") as stack:
        print(f"API server {stack.api_url}, logs in {root / 'logs'}; Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)


if __name__ == "__main__":
    main()
