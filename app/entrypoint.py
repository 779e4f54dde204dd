"""The serving container's entrypoint: ``python -m app.entrypoint``.

1. settings from the environment (``app.settings``); an invalid variable stops here, named;
2. resolve the bundle: the ``MODEL_HASH`` pin, or the registry's ``MODEL_NAME@MODEL_ALIAS`` / ``MODEL_VERSION``;
3. configure the DVC remote in ``MODEL_DIR`` from the environment (credentials stay in ``AWS_*``);
4. the pull from the DVC remote into ``MODEL_DIR/bundle`` (``app.delivery.pull``: botocore or a directory, no DVC)
   with retries, backoff and the ``PULL_DEADLINE_S`` deadline;
5. verify the bundle (DVC hash and content hash), then become the server in the same PID, so signals reach
   the server itself and SIGTERM drains in-flight requests, then exits 0. With S3 keys in the environment it
   ``exec``s uvicorn in a fresh interpreter whose environment has none; with none to drop (``BUNDLE_DIR``, or
   keys in a mounted credentials file) it runs uvicorn in this interpreter, whose server modules were
   imported in a thread while steps 2-5 ran: no second interpreter start, and the imports overlap the pull.

``BUNDLE_DIR`` set means "serve this directory as is": steps 2-4 are skipped and it is only verified; unless
``MODEL_NAME`` is set, the server serves it under the name its metadata records (``Metadata.name``).
``python -m app.entrypoint --help`` prints ``USAGE`` and exits 0 without starting anything.
Every step prints one progress line with its timing; every failure prints one line saying what failed and
what to check, and exits non-zero (see ``app.delivery.failures.EXIT_CODES``).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from app.contract.bundle import BundleError, Metadata, read_metadata
from app.contract.connection import (
    DEFAULT_MODEL_NAME,
    DEFAULT_SERVING_PORT,
    NAME,
    S3_CREDENTIAL_VARIABLES,
    redact,
)
from app.delivery.failures import EXIT_CODES, DeliveryError
from app.delivery.fetch import fetch
from app.delivery.resolve import Resolved, resolve
from app.delivery.retry import deadline_for
from app.settings import Settings, SettingsError, load_settings
from app.tracing import tracing_plan

APP: Final = "app.main:app"
HTTP_PROTOCOL: Final = "app.api.limits:BoundedHttpProtocol"
SERVE: Final = "serve"  # ``python -m app.entrypoint serve``: what the entrypoint execs into
PREFIX: Final = "entrypoint:"
HELP: Final = ("-h", "--help")
USAGE: Final = f"""usage: python -m app.entrypoint [--help]

The prediction server's start: reads its settings from environment variables only, delivers the model bundle,
verifies it and becomes the server (uvicorn on HOST:PORT, default 0.0.0.0:{DEFAULT_SERVING_PORT}).

Where the bundle comes from (one of):
  BUNDLE_DIR=/path/to/bundle   serve a bundle directory as is (python -m orchestration train --out ...); no
                               registry, no pull. Served under MODEL_NAME, by default the bundle's own name.
  MODEL_HASH=<md5>.dir         pull that DVC hash from DVC_REMOTE_URL into MODEL_DIR (registry not consulted)
  MLFLOW_TRACKING_URI=...      look up MODEL_NAME@MODEL_ALIAS (default {DEFAULT_MODEL_NAME}@champion), or
                               MODEL_VERSION, in the MLflow registry, then pull its bundle from DVC_REMOTE_URL
                               into MODEL_DIR, and follow the alias while running (MODEL_REFRESH_S)

Other main variables: HOST, PORT, WORKERS, LOG_LEVEL, LOG_FORMAT (json|text), MODEL_DIR, DVC_REMOTE_URL,
DVC_REMOTE_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, PULL_DEADLINE_S.

Example:  BUNDLE_DIR=artifacts/bundle PORT=9000 python -m app.entrypoint

Every variable, its default, and the exit code of each failed start: docs/configuration.md
(app/prediction.env.example lists them for docker run --env-file).
"""


def say(message: str) -> None:
    """One progress line on stderr (the container log), never holding a secret."""
    print(f"{PREFIX} {redact(message)}", file=sys.stderr, flush=True)


def fail(error: DeliveryError | SettingsError, code: int) -> NoReturn:
    """The one line a failed start leaves, then exit ``code``."""
    print(f"{PREFIX} error: {redact(str(error))}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def holds_s3_keys() -> bool:
    """Whether the environment holds S3 keys (an empty value is unset, as for the S3 client): the server must
    then start in a fresh environment without them."""
    return any(os.environ.get(name) for name in S3_CREDENTIAL_VARIABLES)


# Where the S3 client finds credentials other than the AWS_* keys the server drops (botocore's own variables).
OTHER_S3_CREDENTIALS: Final = (
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def other_s3_credentials() -> bool:
    """Whether the running server's pulls can find S3 credentials once the AWS_* keys are dropped: a credentials
    file, a web identity (a Kubernetes service account's role) or a container credentials endpoint."""
    if any(os.environ.get(name) for name in OTHER_S3_CREDENTIALS):
        return True
    return any((Path.home() / ".aws" / name).is_file() for name in ("credentials", "config"))


def import_server_modules() -> None:
    """Import what ``serve`` runs: uvicorn, the app's modules (``app.api.server`` and all it imports) and their
    libraries. Not ``app.main`` itself, which builds the app from the settings as they are when it is imported:
    uvicorn imports it once the delivered bundle's ``BUNDLE_DIR`` and ``MODEL_VERSION`` are in the environment. A
    failure shows again when ``serve`` or the bundle load imports them itself."""
    try:
        import uvicorn  # noqa: F401

        import app.api.limits
        import app.api.server  # noqa: F401 (the routes, the runtime and the model side below them)
    except Exception:  # noqa: S110 (the same import in ``serve`` raises it, with its traceback)
        pass


def server_command() -> list[str]:
    """The command the entrypoint becomes: ``serve`` below, in a fresh interpreter (same PID)."""
    return [sys.executable, "-m", "app.entrypoint", SERVE]


def _drained(signum: int, _: FrameType | None) -> None:
    """What a stop signal does once uvicorn has drained and shut down: exit 0, quietly."""
    raise SystemExit(0)


def check_listenable(host: str, port: int) -> None:
    """Exit with the ``bind`` code and one line unless uvicorn can bind ``host:port``: a taken port, or a ``HOST``
    that is no address of this machine, would make uvicorn exit 3 (its STARTUP_FAILURE), the registry's code.

    Binds as uvicorn does (IPv6 for a host holding ":", ``SO_REUSEADDR``) and closes at once; a port taken in the
    instant between this and uvicorn's bind still fails uvicorn's way."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:  # socket.gaierror too: a HOST name that does not resolve
        error = DeliveryError(
            "bind",
            f"the server cannot listen on HOST={host} PORT={port}: {exc.strerror or exc}",
            "PORT (no other process may listen on it) and HOST (an address of this machine, or 0.0.0.0 for all)",
        )
        fail(error, error.exit_code)


def serve() -> NoReturn:
    """uvicorn with the settings' host, port, workers and logging (in the interpreter the entrypoint exec'd into,
    or in its own).

    Logging is configured before uvicorn's first line (``app.observability.log_config``), so every line of the
    server is in ``LOG_FORMAT``. uvicorn drains in-flight requests on SIGTERM/SIGINT, then restores the
    handlers it found and raises the signal again; with the interpreter's defaults the process would then die
    *by* the signal (status 143) even though it shut down cleanly. Installing ``_drained`` first makes a
    drained shutdown exit 0. The drain lasts ``DRAIN_TIMEOUT_S`` at most: a request still unfinished then (a
    client that stopped sending) is closed.
    """
    try:
        settings = load_settings()
        tracing_plan(os.environ)  # OTEL_* asking for what the server cannot do (gRPC): refused here, named
    except SettingsError as exc:
        fail(exc, EXIT_CODES["settings"])
    import_server_modules()  # in this order (done already when the entrypoint's thread imported them)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _drained)
    if settings.workers > 1:
        share_metrics_between_workers()
    import uvicorn

    from app.observability import log_config

    gc.freeze()  # what start-up made lives as long as the server: later collections need not walk it
    gc.enable()
    check_listenable(settings.host, settings.port)  # last, so the port has the least time to be taken

    uvicorn.run(
        APP,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level, settings.log_format),
        access_log=False,  # the app logs every request itself, with its id and latency
        timeout_graceful_shutdown=settings.drain_timeout_s,
        http=HTTP_PROTOCOL,  # uvicorn's httptools protocol with the header, timing and in-flight bounds
        ws="none",  # no route speaks WebSocket: an upgrade request is answered as plain HTTP
    )
    raise SystemExit(0)


def share_metrics_between_workers() -> Path:
    """prometheus_client's multiprocess mode for ``WORKERS`` > 1: an empty directory in ``PROMETHEUS_MULTIPROC_DIR``
    (the one given, emptied, or a fresh one under the temporary directory) before any worker imports it."""
    from app.observability import MULTIPROCESS_DIR_ENV

    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    directory = Path(given) if given else Path(tempfile.gettempdir()) / f"prometheus-{os.getpid()}"
    if directory.is_dir():
        for stale in directory.glob("*.db"):  # values of a previous run would be added to this one's
            stale.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_DIR_ENV] = os.fspath(directory)
    return directory


@dataclass(frozen=True)
class Delivered:
    """A verified bundle ready to serve."""

    bundle_dir: Path
    metadata: Metadata
    version: int | None  # the registry version it was resolved from (None for a pin or BUNDLE_DIR)


def deliver(settings: Settings) -> Delivered:
    """Steps 2-5, up to (not including) starting the server: the verified bundle."""
    if settings.bundle_dir is not None:
        say(f"resolve: BUNDLE_DIR={settings.bundle_dir} is served as is (no registry look-up, no pull)")
        if not settings.bundle_dir.is_dir():  # a wrong setting, not a tampered bundle
            raise DeliveryError(
                "settings",
                f"BUNDLE_DIR={settings.bundle_dir} is not a directory",
                "BUNDLE_DIR (a bundle directory readable by this user), or unset it to pull the bundle",
            )
        step = time.monotonic()
        try:
            metadata = read_metadata(settings.bundle_dir)
        except BundleError as exc:
            raise DeliveryError("mismatch", str(exc), "BUNDLE_DIR, or unset it to pull the bundle") from None
        say(f"verify done in {time.monotonic() - step:.2f}s: content hash {metadata.content_hash[:12]}")
        return Delivered(settings.bundle_dir, metadata, None)

    deadline = deadline_for(settings)  # resolve and pull share one PULL_DEADLINE_S
    step = time.monotonic()
    resolved: Resolved = resolve(settings, report=say, deadline=deadline)
    say(f"resolve done in {time.monotonic() - step:.2f}s: {resolved.source}, bundle {resolved.dvc_hash}")

    fetched = fetch(settings, resolved.dvc_hash, deadline=deadline, report=say)
    return Delivered(fetched.bundle_dir, fetched.metadata, resolved.version)


def bundle_model_name(settings: Settings, metadata: Metadata) -> str | None:
    """The ``MODEL_NAME`` a ``BUNDLE_DIR`` is served under when the user set none: the name its metadata records
    (training's params file's ``name``, else its target column's name); None (the setting stands) when
    ``MODEL_NAME`` is set, the bundle came from the registry or a pin, or the bundle records no usable name (one
    trained before bundles recorded it keeps ``flight-price``). Says which, in one line."""
    if settings.bundle_dir is None:
        return None
    if "model_name" in settings.model_fields_set:
        say(f"name: serving the bundle as MODEL_NAME={settings.model_name}")
        return None
    if metadata.name is None or not re.match(NAME, metadata.name):
        say(
            f"name: the bundle records no name (trained before bundles did): serving it as {settings.model_name}; "
            "set MODEL_NAME to name it"
        )
        return None
    say(f"name: serving the bundle as {metadata.name}, the name it records (set MODEL_NAME to override)")
    return metadata.name


def run(settings: Settings, started: float) -> NoReturn:
    """Deliver the bundle and become the server (``started``: when start-up began, for the timing line);
    exits non-zero with one line on any failure."""
    in_process = not holds_s3_keys()
    imports = threading.Thread(target=import_server_modules, name="server-imports", daemon=True)
    if in_process:  # this interpreter becomes the server: its imports overlap resolve, pull and verify
        imports.start()
    try:
        delivered = deliver(settings)
    except DeliveryError as exc:
        fail(exc, exc.exit_code)
    # The pull is done: the long-running server never needs the S3 credentials, so it does not get them.
    env = {name: value for name, value in os.environ.items() if name not in S3_CREDENTIAL_VARIABLES}
    env["BUNDLE_DIR"] = os.fspath(delivered.bundle_dir.resolve())
    if settings.pinned:
        env["MODEL_REFRESH_S"] = "0"  # a bundle named outright is served as is: no alias to follow
    elif settings.follows_alias and not in_process and not other_s3_credentials():
        env["MODEL_REFRESH_S"] = "0"  # its pulls could never authenticate: off, and said so
        say(
            "refresh: off: the S3 keys in AWS_* are dropped before the server starts, and no other source of S3 "
            "credentials is set for its pulls (AWS_SHARED_CREDENTIALS_FILE, AWS_WEB_IDENTITY_TOKEN_FILE, "
            "AWS_CONTAINER_CREDENTIALS_*); give the keys in a mounted credentials file to follow MODEL_ALIAS"
        )
    if delivered.version is not None:
        env["MODEL_VERSION"] = str(delivered.version)  # the server reports the version it serves from the start
    if (served_as := bundle_model_name(settings, delivered.metadata)) is not None:
        env["MODEL_NAME"] = served_as
    how = "exec uvicorn" if not in_process else "uvicorn in this process (no S3 keys to drop)"
    say(
        f"serve: {how} {APP} on {settings.host}:{settings.port} with {settings.workers} worker(s), "
        f"BUNDLE_DIR={env['BUNDLE_DIR']}; start-up took {time.monotonic() - started:.2f}s so far"
    )
    if in_process:
        os.environ.update(env)  # BUNDLE_DIR and the rest, for ``serve``'s settings (and any worker processes)
        imports.join()  # every server module is imported once, by one thread
        serve()
    os.execve(sys.executable, server_command(), env)  # noqa: S606 (no shell: the server replaces this process)


def _stopped(signum: int, _: FrameType | None) -> None:
    """SIGTERM before the server runs: stop now (a running pull's thread ends with the process)."""
    raise SystemExit(128 + signum)


def main() -> NoReturn:
    """Run as the container's ENTRYPOINT."""
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stopped)
    try:
        settings = load_settings()
        tracing_plan(os.environ)  # OTEL_* asking for what the server cannot do (gRPC): refused before the pull
    except SettingsError as exc:
        fail(exc, EXIT_CODES["settings"])
    say(f"settings done in {time.monotonic() - started:.2f}s")
    run(settings, started)


def command_line(argv: list[str]) -> None:
    """``--help``: ``USAGE`` and exit 0; any argument but ``serve`` (internal): ``USAGE`` on stderr and exit 2.
    Otherwise return: the start is configured by the environment only."""
    if any(arg in HELP for arg in argv):
        print(USAGE, end="")
        raise SystemExit(0)
    if argv and argv != [SERVE]:
        print(f"{USAGE}\n{PREFIX} error: unexpected argument(s) {' '.join(argv)}: configure the start with "
              "environment variables", file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_CODES["settings"])


if __name__ == "__main__":
    command_line(sys.argv[1:])
    # Start-up allocates millions of objects and frees few, so the cyclic collector's full passes are wasted work:
    # it is off until the server is about to start (``serve``).
    gc.disable()
    if sys.argv[1:2] == [SERVE]:
        serve()
    main()
