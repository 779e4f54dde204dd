"""``dvc pull`` of the bundle into ``MODEL_DIR/bundle``, as a child process with retries and a deadline.

``MODEL_DIR`` is a DVC work repository (``app.contract.store``) whose remote is configured from the
environment on every start. The pull runs as a child process with a timeout, so a hung connection cannot
outlive ``PULL_DEADLINE_S``; failures are classified (``app.delivery.failures``) and only the transient ones
are retried.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app.contract.connection import redact
from app.contract.progress import Report, quiet
from app.contract.store import BUNDLE_NAME, SITE_CACHE_ENV, prepare_work_repo, site_cache_dir, write_dvc_file
from app.delivery.failures import DeliveryError, classify_pull_failure
from app.delivery.retry import retrying
from app.settings import Settings


@dataclass(frozen=True)
class Pulled:
    bundle_dir: Path
    fetched: int  # files downloaded this start (0 when the local cache already had them)
    attempts: int


def configure_remote(settings: Settings) -> Path:
    """Make ``MODEL_DIR`` a DVC work repository whose default remote is the one the environment names."""
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
    except OSError as exc:
        raise DeliveryError(
            "settings", f"MODEL_DIR={work} is not usable: {exc}", "that MODEL_DIR is a writable directory"
        ) from None
    except Exception as exc:  # DVC's config errors do not share a public base class
        raise DeliveryError(
            "settings", f"DVC remote configuration refused: {redact(str(exc))}", "DVC_REMOTE_* settings"
        ) from None
    return work


def pull(settings: Settings, dvc_hash: str, report: Report = quiet, *, deadline: float | None = None) -> Pulled:
    """``dvc pull`` the bundle into ``MODEL_DIR/bundle`` with retries and backoff, within ``deadline`` (the one
    delivery shares; default ``PULL_DEADLINE_S`` from now)."""
    work = configure_remote(settings)
    dvc_file = write_dvc_file(work, dvc_hash)
    remote = _describe_remote(settings)

    def attempt(left: float) -> int:
        return _pull_once(work, dvc_file, remote, timeout=left)

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


def _pull_once(work: Path, dvc_file: Path, remote: str, *, timeout: float) -> int:
    """One ``dvc pull`` child process, killed (with its process group) when ``timeout`` runs out."""
    if timeout <= 0:
        raise DeliveryError("unreachable", f"no time left to pull from {remote}", "PULL_DEADLINE_S")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", SITE_CACHE_ENV: os.fspath(site_cache_dir(work))}
    # One quick retry inside botocore; the backoff between attempts is ours, bounded by the deadline.
    env.setdefault("AWS_MAX_ATTEMPTS", "2")
    args = [sys.executable, "-m", "dvc", "pull", "--force", dvc_file.name]
    process = subprocess.Popen(
        args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
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
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise classify_pull_failure(text, remote)
    fetched = re.search(r"(\d+) files? fetched", text)
    return int(fetched.group(1)) if fetched else 0


def discard(work: Path) -> None:
    """Drop the checked-out bundle and the local cache, so a bad or partial pull is never reused."""
    for path in (work / BUNDLE_NAME, work / ".dvc" / "cache"):
        shutil.rmtree(path, ignore_errors=True)
