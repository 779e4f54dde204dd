"""Model delivery for the entrypoint: decide which bundle to serve, fetch it from the DVC remote, verify it.

The bundle to serve is named by its DVC hash (``<md5>.dir``): pinned with ``MODEL_HASH``, or read from the
``TAG_DVC_HASH`` tag of the registry's ``MODEL_NAME@MODEL_ALIAS`` (or ``MODEL_VERSION``). ``MODEL_DIR`` is
a DVC work repository (``dvc init --no-scm``) whose only output is ``bundle/``; its remote is configured
from the environment on every start. Credentials are never written to the DVC config: the S3 client reads
the standard ``AWS_*`` variables itself.

``dvc pull`` runs as a child process with a timeout, so a hung connection cannot outlive the overall
deadline; failures are classified (unreachable, credentials, missing object) and only the transient ones
are retried. DVC trusts what the remote returns, so the pulled directory's DVC hash is recomputed here and
the bundle's own content hash is checked before anything serves it.

Nothing heavy is imported at module level (DVC, scikit-learn), so a bad setting fails in well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar

from app.registry import TAG_DVC_HASH, ModelVersion, NotFoundError, RegistryError, registry_for
from app.settings import DVC_HASH, Settings

if TYPE_CHECKING:
    from app.bundle import Metadata

REMOTE_NAME: Final = "store"
BUNDLE_NAME: Final = "bundle"  # the one DVC output in MODEL_DIR: MODEL_DIR/bundle
SITE_CACHE_ENV: Final = "DVC_SITE_CACHE_DIR"
CONNECT_TIMEOUT_S: Final = 5  # one S3 connection attempt; the overall bound is PULL_DEADLINE_S

Failure = Literal["settings", "registry", "not-found", "unreachable", "credentials", "missing", "mismatch", "pull"]
# Exit codes by failure, so an orchestrator can tell a bad configuration from a flaky network.
EXIT_CODES: Final[dict[Failure, int]] = {
    "settings": 2,
    "registry": 3,
    "not-found": 4,
    "unreachable": 5,
    "credentials": 6,
    "missing": 7,
    "mismatch": 8,
    "pull": 9,
}
RETRYABLE: Final[frozenset[Failure]] = frozenset({"registry", "unreachable", "pull"})


class DeliveryError(Exception):
    """Delivery failed; ``str()`` is one line saying what failed and what to check."""

    def __init__(self, failure: Failure, what: str, check: str) -> None:
        super().__init__(f"{what}; check {check}")
        self.failure = failure
        self.what = what
        self.check = check

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.failure]

    @property
    def retryable(self) -> bool:
        return self.failure in RETRYABLE


@dataclass(frozen=True)
class Resolved:
    """The bundle to serve and where that decision came from."""

    dvc_hash: str
    source: str
    version: int | None = None


@dataclass(frozen=True)
class Pulled:
    bundle_dir: Path
    fetched: int  # files downloaded this start (0 when the local cache already had them)
    attempts: int


Report = Callable[[str], None]
_T = TypeVar("_T")


def _quiet(_: str) -> None:
    """The default report: say nothing."""


def redact(text: str) -> str:
    """``text`` without credentials: URI user-info, and any AWS credential value from the environment."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        if len(value := os.environ.get(name, "")) >= 4:  # a very short value would mangle ordinary words
            text = text.replace(value, "***")
    return text


def _retrying(
    attempt: Callable[[float], _T], *, retries: int, backoff_s: float, deadline: float, report: Report, step: str
) -> tuple[_T, int]:
    """Call ``attempt(seconds_left)`` until it succeeds, retrying retryable ``DeliveryError``s with doubling
    delays, within ``retries`` and the monotonic ``deadline``; returns the result and the attempts made."""
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(deadline - time.monotonic()), tries
        except DeliveryError as exc:
            left = deadline - time.monotonic()
            delay = backoff_s * 2 ** (tries - 1)
            if not exc.retryable or tries > retries or left <= delay:
                if exc.retryable and tries > 1:
                    raise DeliveryError(
                        exc.failure, f"{exc.what} (gave up after {tries} attempts)", exc.check
                    ) from None
                raise
            report(f"{step} attempt {tries} failed ({exc.what}); retrying in {delay:.1f}s")
            time.sleep(delay)


# --- resolve ---


def resolve(settings: Settings, report: Report = _quiet) -> Resolved:
    """The DVC hash to serve: the ``MODEL_HASH`` pin, or the registry version's ``TAG_DVC_HASH`` tag."""
    if settings.model_hash:
        return Resolved(settings.model_hash, "MODEL_HASH pin (registry not consulted)")
    uri = settings.mlflow_tracking_uri
    if not uri:
        raise DeliveryError(
            "settings",
            "no bundle to serve: neither MODEL_HASH nor MLFLOW_TRACKING_URI is set",
            "MODEL_HASH (a DVC hash to pin) or MLFLOW_TRACKING_URI with MODEL_NAME and MODEL_ALIAS/MODEL_VERSION",
        )
    wanted = (
        f"{settings.model_name} version {settings.model_version}"
        if settings.model_version is not None
        else f"{settings.model_name}@{settings.model_alias}"
    )
    where = redact(uri)

    def look_up(_: float) -> ModelVersion:
        try:
            registry = registry_for(uri, settings.registry_timeout_s)
            if settings.model_version is not None:
                return registry.version(settings.model_name, settings.model_version)
            return registry.version_by_alias(settings.model_name, settings.model_alias)
        except NotFoundError as exc:
            field = "MODEL_VERSION" if settings.model_version is not None else "MODEL_ALIAS"
            raise DeliveryError(
                "not-found",
                f"{wanted} not found in the MLflow registry at {where} ({redact(str(exc))})",
                f"MODEL_NAME and {field}, and that the version was published (python -m orchestration publish)",
            ) from None
        except RegistryError as exc:
            raise DeliveryError(
                "registry",
                f"MLflow registry unreachable, no MODEL_HASH pin: {redact(str(exc))}",
                "MLFLOW_TRACKING_URI and that the tracking server is up, or pin a bundle with MODEL_HASH",
            ) from None

    deadline = time.monotonic() + settings.pull_deadline_s
    version, _ = _retrying(
        look_up,
        retries=settings.pull_retries,
        backoff_s=settings.pull_backoff_s,
        deadline=deadline,
        report=report,
        step="resolve",
    )
    dvc_hash = version.dvc_hash
    if not dvc_hash or not DVC_HASH.match(dvc_hash):
        raise DeliveryError(
            "not-found",
            f"{wanted} (version {version.version}) has no valid {TAG_DVC_HASH} tag (found {dvc_hash!r})",
            "that the version was registered by `python -m orchestration publish`, or pin MODEL_HASH",
        )
    return Resolved(dvc_hash, f"{wanted} -> version {version.version}", version.version)


# --- DVC work repository and remote ---


def site_cache_dir(work: Path) -> Path:
    """DVC's index cache for this work repo; its default (/var/tmp) may not exist in a read-only image."""
    return work / ".dvc" / "site"


def prepare_work_repo(work: Path, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
    """Make ``work`` a DVC work repository (``dvc init --no-scm``) whose default remote is ``url``.

    Shared by publishing (push) and the entrypoint (pull), so both see the remote the same way. No credential
    is ever written here: DVC's S3 client reads the standard ``AWS_*`` variables itself.
    """
    from dvc.repo import Repo

    work.mkdir(parents=True, exist_ok=True)
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)  # DVC's "Initialized DVC repository." banner
    previous = os.environ.get(SITE_CACHE_ENV)
    os.environ[SITE_CACHE_ENV] = os.fspath(site_cache_dir(work))
    try:
        repo = Repo(os.fspath(work)) if (work / ".dvc").is_dir() else Repo.init(os.fspath(work), no_scm=True)
        with repo.config.edit("repo") as config:
            config["core"].update(
                {"remote": REMOTE_NAME, "site_cache_dir": os.fspath(site_cache_dir(work)), "analytics": False}
            )
            # Hard links: the checked-out bundle shares blocks with the cache instead of doubling the disk.
            config["cache"]["type"] = "hardlink,copy"
            remote: dict[str, object] = {"url": url}
            if url.startswith("s3://"):
                remote["connect_timeout"] = CONNECT_TIMEOUT_S
                if endpoint_url:
                    remote["endpointurl"] = endpoint_url
                if region:
                    remote["region"] = region
            config["remote"] = {REMOTE_NAME: remote}
        repo.close()
    finally:
        dvc_logger.setLevel(level)
        if previous is None:
            os.environ.pop(SITE_CACHE_ENV, None)
        else:
            os.environ[SITE_CACHE_ENV] = previous


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


def write_dvc_file(work: Path, dvc_hash: str) -> Path:
    """``bundle.dvc`` naming the wanted directory hash; ``hash: md5`` marks it as DVC 3 (files/md5 layout)."""
    path = work / f"{BUNDLE_NAME}.dvc"
    path.write_text(f"outs:\n- md5: {dvc_hash}\n  hash: md5\n  path: {BUNDLE_NAME}\n")
    return path


# --- pull ---


def pull(settings: Settings, dvc_hash: str, report: Report = _quiet) -> Pulled:
    """``dvc pull`` the bundle into ``MODEL_DIR/bundle`` with retries, backoff and the overall deadline."""
    work = configure_remote(settings)
    dvc_file = write_dvc_file(work, dvc_hash)
    remote = _describe_remote(settings)
    deadline = time.monotonic() + settings.pull_deadline_s

    def attempt(left: float) -> int:
        return _pull_once(work, dvc_file, remote, timeout=left)

    try:
        fetched, attempts = _retrying(
            attempt,
            retries=settings.pull_retries,
            backoff_s=settings.pull_backoff_s,
            deadline=deadline,
            report=report,
            step="pull",
        )
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


CREDENTIAL_MARKERS: Final = (
    "403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "Unable to locate credentials", "NoCredentialsError",
)  # fmt: skip
MISSING_MARKERS: Final = (
    "NoSuchKey", "NoSuchBucket", "does not exist", "Missing cache files", "missing-files", "404",
)  # fmt: skip
UNREACHABLE_MARKERS: Final = (
    "Could not connect", "Connect timeout", "Connection refused", "Read timeout", "timed out",
    "EndpointConnectionError", "Name or service not known", "Temporary failure in name resolution", "Connection reset",
)  # fmt: skip


def classify_pull_failure(output: str, remote: str) -> DeliveryError:
    """A failed ``dvc pull``'s output -> the one failure that explains it, with what to check."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    reason = redact(errors[0].removeprefix("ERROR:").strip() if errors else (output.strip().splitlines() or ["?"])[-1])
    if any(marker in output for marker in CREDENTIAL_MARKERS):
        return DeliveryError(
            "credentials",
            f"the remote {remote} refused the credentials ({reason})",
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN and the bucket policy",
        )
    if any(marker in output for marker in UNREACHABLE_MARKERS):
        return DeliveryError(
            "unreachable",
            f"the remote {remote} is unreachable ({reason})",
            "DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL and network access to the store",
        )
    if any(marker in output for marker in MISSING_MARKERS):
        return DeliveryError(
            "missing",
            f"the bundle's objects are missing from the remote {remote} ({reason})",
            "that the bundle was pushed to this DVC_REMOTE_URL (python -m orchestration publish) and the hash",
        )
    return DeliveryError("pull", f"dvc pull from {remote} failed ({reason})", "the DVC remote settings")


def discard(work: Path) -> None:
    """Drop the checked-out bundle and the local cache, so a bad or partial pull is never reused."""
    for path in (work / BUNDLE_NAME, work / ".dvc" / "cache"):
        shutil.rmtree(path, ignore_errors=True)


# --- verify ---


def dir_hash(path: Path) -> str:
    """The DVC 3 hash of a directory (``<md5>.dir``), computed with DVC's own tree serialisation."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()  # type: ignore[no-untyped-call]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest = hashlib.md5(usedforsecurity=False)
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        tree.add(file.relative_to(path).parts, Meta(), HashInfo("md5", digest.hexdigest()))
    tree.digest()
    assert tree.hash_info is not None and tree.hash_info.value
    return str(tree.hash_info.value)


def verify(bundle_dir: Path, dvc_hash: str, *, work: Path | None = None) -> Metadata:
    """The pulled directory's DVC hash must be ``dvc_hash`` and the bundle must pass ``read_metadata``.

    On failure the checked-out bundle and the cache under ``work`` are discarded, so a retry starts clean.
    """
    # app.bundle pulls in skops and scikit-learn (seconds of imports): only now, not before settings and pull.
    from app.bundle import BundleError, read_metadata

    try:
        actual = dir_hash(bundle_dir) if bundle_dir.is_dir() else "nothing"
        if actual != dvc_hash:
            raise DeliveryError(
                "mismatch",
                f"the pulled bundle's hash {actual} is not the requested {dvc_hash}: a blob in the remote was "
                "altered or corrupted",
                "the remote's objects for this bundle (re-publish it) and MODEL_HASH / the registry's tag",
            )
        try:
            return read_metadata(bundle_dir)
        except BundleError as exc:
            raise DeliveryError(
                "mismatch", f"the pulled bundle fails verification: {exc}", "the published bundle (re-publish it)"
            ) from None
    except DeliveryError:
        if work is not None:
            discard(work)
        raise
