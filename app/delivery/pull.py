"""``dvc pull`` of the bundle into ``MODEL_DIR/bundle``, as a child process with retries and a deadline.

``MODEL_DIR`` is a DVC work repository (``app.contract.store``) whose remote is configured from the
environment on every start. The pull runs as a child process with a timeout, so a hung connection cannot
outlive ``PULL_DEADLINE_S``; failures are classified (``app.delivery.failures``) and only the transient ones
are retried. A full ``MODEL_DIR`` volume is told from structured errors (errno, SQLite's result code) where
the error is ours, and from the volume's free space where DVC's words do not say (SQLite's "disk I/O error").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from app.contract.connection import redact
from app.contract.progress import Report, quiet
from app.contract.store import BUNDLE_NAME, SITE_CACHE_ENV, prepare_work_repo, site_cache_dir, write_dvc_file
from app.delivery.failures import DeliveryError, classify_pull_failure, object_path, out_of_space
from app.delivery.retry import retrying
from app.settings import Settings

# A volume with less free than this is full: a failed write into it explains a failed pull (a MiB is less than any
# bundle, and more than the last partial page SQLite or DVC leaves when a write fails).
FULL_BELOW_BYTES: Final = 1 << 20
OUT_OF_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})

LISTING_ID: Final = re.compile(r"md5: ([0-9a-f]{32}\.dir)")


@dataclass(frozen=True)
class Pulled:
    bundle_dir: Path
    fetched: int  # files downloaded this start (0 when the local cache already had them)
    attempts: int


def configure_remote(settings: Settings) -> Path:
    """Make ``MODEL_DIR`` a DVC work repository whose default remote is the one the environment names.

    Credentials in ``DVC_REMOTE_URL`` / ``DVC_REMOTE_ENDPOINT_URL`` (``https://key:secret@minio:9000``) are refused,
    by the settings and again by ``prepare_work_repo``, rather than stripped and handed to the pull: those variables
    stay in the server's environment for the whole run (its alias refresh pulls again), while the ``AWS_*`` keys
    are dropped before it starts, and a URL is printed and written to ``MODEL_DIR/.dvc/config``, where a key has
    no place. One way to give the keys (``AWS_*`` or a credentials file) keeps them out of every config and log.
    """
    if not settings.dvc_remote_url:
        raise DeliveryError(
            "settings",
            "DVC_REMOTE_URL is not set, so there is nowhere to pull the bundle from",
            "DVC_REMOTE_URL (s3://bucket/prefix or a directory)",
        )
    work = settings.model_dir
    try:
        prepare_work_repo(
            work,
            settings.dvc_remote_url,
            endpoint_url=settings.dvc_remote_endpoint_url,
            region=settings.dvc_remote_region,
        )
    except Exception as exc:  # DVC's config errors do not share a public base class
        if out_of_space_error(exc, work):
            raise out_of_space(work, f"setting up the DVC work repository: {exc}") from None
        if isinstance(exc, OSError):
            raise DeliveryError(
                "settings", f"MODEL_DIR={work} is not usable: {exc}", "that MODEL_DIR is a writable directory"
            ) from None
        raise DeliveryError(
            "settings", f"DVC remote configuration refused: {redact(str(exc))}", "DVC_REMOTE_* settings"
        ) from None
    return work


def pull(settings: Settings, dvc_hash: str, report: Report = quiet, *, deadline: float | None = None) -> Pulled:
    """``dvc pull`` the bundle into ``MODEL_DIR/bundle`` with retries and backoff, within ``deadline`` (the one
    delivery shares; default ``PULL_DEADLINE_S`` from now)."""
    work = configure_remote(settings)
    try:
        dvc_file = write_dvc_file(work, dvc_hash)
    except OSError as exc:
        if out_of_space_error(exc, work):
            raise out_of_space(work, str(exc)) from None
        raise DeliveryError(
            "settings", f"MODEL_DIR={work} is not usable: {exc}", "that MODEL_DIR is a writable directory"
        ) from None
    remote = _describe_remote(settings)
    url = settings.dvc_remote_url

    def attempt(left: float) -> int:
        return _pull_once(work, dvc_file, remote, url, timeout=left)

    try:
        fetched, attempts = retrying(attempt, settings, report=report, step="pull", deadline=deadline)
    except DeliveryError:
        discard(work)
        raise
    return Pulled(work / BUNDLE_NAME, fetched, attempts)


def _describe_remote(settings: Settings) -> str:
    url = settings.dvc_remote_url or ""
    if settings.dvc_remote_endpoint_url and url.startswith("s3://"):
        return f"{url} at {redact(settings.dvc_remote_endpoint_url)}"
    return url


# The ``dvc pull`` children running now (their process ids): ``stop_pulls`` ends them when the server shuts down.
_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()


def stop_pulls() -> None:
    """End every running ``dvc pull`` child (with its process group): the server is shutting down, and a pull for
    a candidate must not outlive it (its thread, a daemon, ends with the process)."""
    with _RUNNING_LOCK:
        for pid in _RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _pull_once(work: Path, dvc_file: Path, remote: str, url: str | None, *, timeout: float) -> int:
    """One ``dvc pull`` child process, killed (with its process group) when ``timeout`` runs out."""
    if timeout <= 0:
        raise DeliveryError("unreachable", f"no time left to pull from {remote}", "PULL_DEADLINE_S")
    env = {**pull_environment(), "DVC_NO_ANALYTICS": "1", SITE_CACHE_ENV: os.fspath(site_cache_dir(work))}
    # One quick retry inside botocore; the backoff between attempts is ours, bounded by the deadline.
    env.setdefault("AWS_MAX_ATTEMPTS", "2")
    args = [sys.executable, "-m", "dvc", "pull", "--force", dvc_file.name]
    with _RUNNING_LOCK:
        process = subprocess.Popen(
            args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        _RUNNING.add(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise DeliveryError(
            "unreachable",
            f"the remote {remote} is unreachable or too slow: the pull did not finish before PULL_DEADLINE_S ran out",
            "that the remote answers (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL, network), or raise PULL_DEADLINE_S",
        ) from None
    except BaseException:  # stopped (SIGTERM, Ctrl-C) mid-pull: the child is in its own session, take it along
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(process.pid)
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise explain_pull_failure(text, remote, url, work)
    fetched = re.search(r"(\d+) files? fetched", text)
    return int(fetched.group(1)) if fetched else 0


def pull_environment() -> dict[str, str]:
    """The ``dvc pull`` child's environment: this process's, without any ``MLFLOW_*`` variable (DVC reads none,
    and they hold the registry's password or token, which the server keeps for ``GET /model``). The S3 keys stay:
    the pull is what needs them."""
    return {name: value for name, value in os.environ.items() if not name.upper().startswith("MLFLOW_")}


def explain_pull_failure(output: str, remote: str, url: str | None, work: Path) -> DeliveryError:
    """The failure a failed ``dvc pull`` into ``work`` is: its output's words, and where they are not specific,
    whether ``work``'s volume is full (SQLite reports a failed write to its WAL as "disk I/O error")."""
    error = classify_pull_failure(output, remote, url=url, model_dir=work)
    if error.failure == "missing" and (edited := altered_listing(work)) is not None:
        # the objects are missing because the listing that names them is not the one published
        return DeliveryError(
            "mismatch",
            f"the bundle's listing {edited} in the remote {remote} does not match its hash: the store's copy "
            f"({object_path(edited, url)}) was replaced, and names objects that were never published",
            f"the store's copy at {object_path(edited, url)}: delete it, then publish the bundle again",
        )
    left = free_bytes(work)
    if error.failure == "pull" and left is not None and left < FULL_BELOW_BYTES:
        return out_of_space(work, f"{left} bytes left on its volume; {error.what}")
    return error


def altered_listing(work: Path) -> str | None:
    """The bundle's listing id (``<md5>.dir``, from ``work``'s ``bundle.dvc``) if the remote's copy of it is not
    what that id hashes to: DVC reads a listing without checking it, and reports the objects an altered listing
    names as missing. Read through DVC's own remote (its credentials); None when it cannot be read or is intact."""
    named = LISTING_ID.search((work / f"{BUNDLE_NAME}.dvc").read_text(errors="replace"))
    if named is None:
        return None
    oid = named.group(1)
    try:
        from dvc.repo import Repo

        with Repo(os.fspath(work)) as repo:
            odb = repo.cloud.get_remote_odb()
            stored: bytes = odb.fs.cat_file(odb.oid_to_path(oid))
    except Exception:  # unreadable: the pull's own classification stands
        return None
    return oid if hashlib.md5(stored, usedforsecurity=False).hexdigest() != oid.removesuffix(".dir") else None


def out_of_space_error(exc: BaseException, work: Path) -> bool:
    """Whether ``exc`` (or an error it was raised from), raised writing into ``work``, means its volume is full:
    ENOSPC / EDQUOT, SQLite's SQLITE_FULL, or another SQLite error with the volume full."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in OUT_OF_SPACE_ERRNOS:
            return True
        if isinstance(cause, sqlite3.Error):
            left = free_bytes(work)
            return cause.sqlite_errorcode == sqlite3.SQLITE_FULL or (left is not None and left < FULL_BELOW_BYTES)
        cause = cause.__cause__ or cause.__context__
    return False


def free_bytes(work: Path) -> int | None:
    """Bytes an unprivileged user may still write on ``work``'s volume (None if it cannot be told)."""
    try:
        stat = os.statvfs(work)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def discard(work: Path) -> None:
    """Drop the checked-out bundle, the local cache and DVC's index databases (a failed pull may have left
    them large), so a bad or partial pull is never reused and a full volume gets its space back."""
    for path in (work / BUNDLE_NAME, work / ".dvc" / "cache", site_cache_dir(work)):
        shutil.rmtree(path, ignore_errors=True)
