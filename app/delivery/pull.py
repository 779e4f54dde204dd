"""The bundle pulled from the DVC remote into ``MODEL_DIR/bundle``, without DVC, with retries and a deadline.

The remote has DVC 3's content-addressed layout (``app.delivery.remote``): the bundle is a directory whose hash,
``<md5>.dir``, names its listing, a JSON list of ``{"md5": ..., "relpath": ...}`` (``app.contract.store``), and
each file is the object named by its md5. A pull reads the listing, then each file it names, into a cache in
``MODEL_DIR/.dvc/cache/files/md5`` (DVC's own cache layout, so a volume an earlier DVC pull filled is reused):

- every object is checked against its id before it is used: the listing's bytes against its ``.dir`` id, each
  file against its listing entry; one that does not match is refused (``mismatch``) and never kept;
- every object is written to a temporary name and renamed once checked, and the bundle is checked out into a
  temporary directory (hard links into the cache, copies where the volume allows none) renamed to
  ``MODEL_DIR/bundle`` once complete, so nothing partial is ever served;
- an object already in the cache (checked again) is not downloaded: a restart or a refresh of an unchanged
  bundle fetches nothing.

Each attempt runs in a thread bounded by what is left of ``PULL_DEADLINE_S`` (``app.delivery.retry.within``),
with bounded socket timeouts; between chunks it checks a stop flag, which ``stop_pulls`` (the server's shutdown)
and the deadline set. Failures are classified from structured errors (``app.delivery.failures``) and only the
transient ones are retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from app.contract.connection import CREDENTIALS_IN_URL, holds_credentials, redact
from app.contract.hashing import file_digest
from app.contract.progress import Report, quiet
from app.contract.store import BUNDLE_NAME, DIR_SUFFIX, site_cache_dir
from app.delivery.failures import (
    DeliveryError,
    classify_remote_error,
    corrupt,
    missing,
    unusable_model_dir,
)
from app.delivery.remote import DirectoryRemote, Remote, S3Remote
from app.delivery.retry import retrying, within
from app.settings import Settings

DOT_DVC: Final = ".dvc"  # MODEL_DIR/.dvc: private to its owner, it holds the cache
CACHE: Final = Path(DOT_DVC) / "cache" / "files" / "md5"  # below MODEL_DIR: DVC 3's own cache layout
STAGING: Final = ".bundle-"  # MODEL_DIR/.bundle-<random>: a checkout (or a replaced one) on its way
PART: Final = ".part"  # <cache>/<2 hex>/.<rest>.<random>.part: an object on its way
MD5: Final = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Pulled:
    bundle_dir: Path
    fetched: int  # objects downloaded (the listing and each file; 0 when the local cache already had them all)
    attempts: int


class PullStoppedError(DeliveryError):
    """``stop_pulls`` ended the pull: the server is shutting down. Not retried."""

    @property
    def retryable(self) -> bool:
        return False


def configure_remote(settings: Settings) -> Path:
    """Check that the environment names a remote, and make ``MODEL_DIR`` (with its private ``.dvc`` directory,
    which holds the cache); returns ``MODEL_DIR``.

    Credentials in ``DVC_REMOTE_URL`` / ``DVC_REMOTE_ENDPOINT_URL`` (``https://key:secret@minio:9000``) are refused,
    by the settings and again here, rather than stripped and handed to the S3 client: those variables stay in the
    server's environment for the whole run (its alias refresh pulls again), while the ``AWS_*`` keys are dropped
    before it starts, and a URL is printed, where a key has no place. One way to give the keys (``AWS_*`` or a
    credentials file, read by botocore itself) keeps them out of every log.
    """
    if not settings.dvc_remote_url:
        raise DeliveryError(
            "settings",
            "DVC_REMOTE_URL is not set, so there is nowhere to pull the bundle from",
            "DVC_REMOTE_URL (s3://bucket/prefix or a directory)",
        )
    for name, given in (
        ("DVC_REMOTE_URL", settings.dvc_remote_url),
        ("DVC_REMOTE_ENDPOINT_URL", settings.dvc_remote_endpoint_url),
    ):
        if given and holds_credentials(given):
            raise DeliveryError("settings", f"{name} {CREDENTIALS_IN_URL}", name)
    work = settings.model_dir
    try:
        work.mkdir(parents=True, exist_ok=True)
        (work / DOT_DVC).mkdir(mode=0o700, exist_ok=True)
        (work / DOT_DVC).chmod(0o700)
    except OSError as exc:
        raise unusable_model_dir(work, exc) from None
    return work


def open_remote(settings: Settings) -> Remote:
    """The remote ``DVC_REMOTE_URL`` names: ``s3://bucket/prefix`` (at ``DVC_REMOTE_ENDPOINT_URL``, in
    ``DVC_REMOTE_REGION``) or a directory."""
    url = settings.dvc_remote_url or ""
    if url.startswith("s3://"):
        return S3Remote(url, endpoint_url=settings.dvc_remote_endpoint_url, region=settings.dvc_remote_region)
    return DirectoryRemote(Path(url))


def pull(
    settings: Settings,
    dvc_hash: str,
    report: Report = quiet,
    *,
    deadline: float | None = None,
    seeds: Sequence[Path] = (),
) -> Pulled:
    """Pull the bundle ``dvc_hash`` into ``MODEL_DIR/bundle`` with retries and backoff, within ``deadline`` (the
    one delivery shares; default ``PULL_DEADLINE_S`` from now). ``seeds`` are other caches (``cache_of`` another
    ``MODEL_DIR``) to take intact objects from before downloading them: a candidate's pull takes what the served
    bundle shares with it."""
    work = configure_remote(settings)
    if not dvc_hash.endswith(DIR_SUFFIX):
        raise DeliveryError(
            "settings",
            f"{dvc_hash} names a single file, not a bundle directory",
            "MODEL_HASH or the registry version's DVC hash tag: a bundle's hash ends in .dir",
        )
    remote = open_remote(settings)
    where = describe_remote(settings)
    url = settings.dvc_remote_url
    _clear_leftovers(work)
    downloaded = [0]  # by every attempt: one that failed may have downloaded some objects already

    def attempt(left: float) -> None:
        if left <= 0:
            raise DeliveryError("unreachable", f"no time left to pull from {where}", "PULL_DEADLINE_S")
        too_slow = DeliveryError(
            "unreachable",
            f"the remote {where} is unreachable or too slow: the pull did not finish before PULL_DEADLINE_S ran out",
            "that the remote answers (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL, network), or raise PULL_DEADLINE_S",
        )
        with _running() as stop:
            run = _Attempt(work, remote, where, url, stop, seeds, downloaded).run
            within(
                lambda: run(dvc_hash), left, too_slow, stop=stop, stopped=lambda: _stopped(where), name="delivery-pull"
            )

    try:
        _, attempts = retrying(attempt, settings, report=report, step="pull", deadline=deadline)
    except DeliveryError:
        discard(work)
        raise
    return Pulled(work / BUNDLE_NAME, downloaded[0], attempts)


def describe_remote(settings: Settings) -> str:
    """The remote as messages name it: its URL, and the endpoint of an S3-compatible store."""
    url = settings.dvc_remote_url or ""
    if settings.dvc_remote_endpoint_url and url.startswith("s3://"):
        return f"{url} at {redact(settings.dvc_remote_endpoint_url)}"
    return url


# The stop flags of the attempts running now: ``stop_pulls`` sets them when the server shuts down.
_RUNNING: set[threading.Event] = set()
_RUNNING_LOCK = threading.Lock()


@contextlib.contextmanager
def _running() -> Iterator[threading.Event]:
    """A stop flag for one attempt, known to ``stop_pulls`` while the attempt runs; set when it ends, so an
    attempt abandoned at the deadline stops at its next chunk."""
    stop = threading.Event()
    with _RUNNING_LOCK:
        _RUNNING.add(stop)
    try:
        yield stop
    finally:
        stop.set()
        with _RUNNING_LOCK:
            _RUNNING.discard(stop)


def stop_pulls() -> None:
    """Stop every running pull at its next chunk: the server is shutting down, and a pull for a candidate must
    not outlive it (its thread, a daemon, ends with the process in any case)."""
    with _RUNNING_LOCK:
        for stop in _RUNNING:
            stop.set()


def _stopped(where: str) -> PullStoppedError:
    return PullStoppedError("pull", f"the pull from {where} was stopped", "nothing: the server is shutting down")


class _Attempt:
    """One attempt at the whole pull: the listing, each object it names, the checkout."""

    def __init__(
        self,
        work: Path,
        remote: Remote,
        where: str,
        url: str | None,
        stop: threading.Event,
        seeds: Sequence[Path],
        downloaded: list[int],
    ) -> None:
        self.work, self.remote, self.where, self.url, self.stop = work, remote, where, url, stop
        self.cache = cache_of(work)
        self.seeds = [seed for seed in seeds if seed != self.cache]
        self.downloaded = downloaded  # the pull's count of objects downloaded, this attempt's added

    def run(self, dvc_hash: str) -> None:
        """Pull the bundle ``dvc_hash`` into the cache, then check it out."""
        self.fetch(dvc_hash)
        entries = self.read_listing(dvc_hash)
        absent: list[str] = []
        for md5 in dict.fromkeys(entries.values()):  # each object once: equal files share it
            try:
                self.fetch(md5)
            except DeliveryError as exc:
                if exc.failure != "missing":
                    raise
                absent.append(md5)  # go on: the message names every object the store lacks
        if absent:
            raise missing(absent, self.where, self.url)
        self.check_out(entries)

    def cached(self, oid: str) -> Path:
        return self.cache / oid[:2] / oid[2:]

    def fetch(self, oid: str) -> None:
        """Object ``oid`` in the cache, checked against its id: kept if already there and intact, else taken
        from a seed cache where it is intact there, else downloaded to a temporary name, checked, and renamed."""
        target = self.cached(oid)
        expected = oid.removesuffix(DIR_SUFFIX)
        try:
            if target.is_file():
                if file_digest(target, "md5") == expected:
                    return
                target.unlink()  # damaged in the cache: download it again
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.seeded(oid, target, expected):
                return
            part = target.with_name(f".{target.name}.{secrets.token_hex(6)}{PART}")
            out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # unbuffered: a failed write fails here
        except OSError as exc:
            raise unusable_model_dir(self.work, exc) from None
        try:
            try:
                digest = self.download(oid, out)
            finally:
                os.close(out)
            if digest != expected:
                raise corrupt(oid, self.where, self.url)
            if self.stop.is_set():
                raise _stopped(self.where)
            try:
                part.chmod(0o444)  # as DVC keeps its cache: the checkout's hard links must not be written through
                part.replace(target)
            except OSError as exc:
                raise unusable_model_dir(self.work, exc) from None
            self.downloaded[0] += 1
        finally:
            part.unlink(missing_ok=True)

    def seeded(self, oid: str, target: Path, expected: str) -> bool:
        """Whether ``oid`` was taken from a seed cache: a hard link (a copy across volumes) to a temporary name,
        checked there (a seed may change under us), then renamed to ``target``."""
        for seed in self.seeds:
            source = seed / oid[:2] / oid[2:]
            part = target.with_name(f".{target.name}.{secrets.token_hex(6)}{PART}")
            try:
                try:
                    os.link(source, part)
                except OSError:
                    if not source.is_file():
                        continue
                    shutil.copyfile(source, part)
                if file_digest(part, "md5") == expected:
                    part.chmod(0o444)
                    part.replace(target)
                    return True
            except FileNotFoundError:  # gone from the seed meanwhile
                continue
            finally:
                part.unlink(missing_ok=True)
        return False

    def download(self, oid: str, out: int) -> str:
        """Stream object ``oid`` into the file descriptor ``out``; the md5 of what was read."""
        digest = hashlib.md5(usedforsecurity=False)
        with contextlib.closing(self.remote.chunks(oid)) as chunks:
            while True:
                if self.stop.is_set():
                    raise _stopped(self.where)
                try:
                    chunk = next(chunks, None)
                except Exception as exc:  # the remote's client's own errors, classified by their kind
                    raise classify_remote_error(exc, self.where, url=self.url, oid=oid) from None
                if chunk is None:
                    break
                digest.update(chunk)
                try:
                    written = 0
                    while written < len(chunk):
                        written += os.write(out, chunk[written:])
                except OSError as exc:
                    raise unusable_model_dir(self.work, exc) from None
        return digest.hexdigest()

    def read_listing(self, oid: str) -> dict[str, str]:
        """The bundle's files from its (checked) listing: ``{relpath: md5}``, every path inside the bundle."""
        try:
            raw = json.loads(self.cached(oid).read_bytes())
        except OSError as exc:
            raise unusable_model_dir(self.work, exc) from None
        except ValueError:
            raw = None
        entries: dict[str, str] = {}
        for entry in raw if isinstance(raw, list) else [None]:
            relpath = entry.get("relpath") if isinstance(entry, dict) else None
            md5 = entry.get("md5") if isinstance(entry, dict) else None
            if not isinstance(relpath, str) or not isinstance(md5, str) or not MD5.match(md5) or relpath in entries:
                entries.clear()
                break
            parts = relpath.split("/")
            if any(part in {"", ".", ".."} or "\0" in part for part in parts):
                entries.clear()
                break
            entries[relpath] = md5
        parents = {"/".join(path.split("/")[:i]) for path in entries for i in range(1, path.count("/") + 1)}
        if not entries or parents & entries.keys():  # no path may be a file and another's directory at once
            raise DeliveryError(
                "mismatch",
                f"the bundle's listing {oid} in the remote {self.where} is no DVC listing of a bundle (a JSON list of "
                "md5 and relative path entries): its hash names some other object",
                "MODEL_HASH, or the registry version's DVC hash tag (publish the bundle again)",
            )
        return entries

    def check_out(self, entries: dict[str, str]) -> None:
        """The bundle in a temporary directory of hard links into the cache (copies where links fail), renamed
        to ``MODEL_DIR/bundle`` once complete; a previous checkout there is replaced."""
        staging = self.work / f"{STAGING}{secrets.token_hex(6)}"
        replaced = self.work / f"{STAGING}{secrets.token_hex(6)}"
        bundle = self.work / BUNDLE_NAME
        try:
            staging.mkdir()
            for relpath, md5 in entries.items():
                if self.stop.is_set():
                    raise _stopped(self.where)
                into = staging.joinpath(*relpath.split("/"))
                into.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.cached(md5), into)
                except OSError:  # a volume without hard links (or across devices): a copy
                    shutil.copyfile(self.cached(md5), into)
            if self.stop.is_set():
                raise _stopped(self.where)
            if bundle.exists() or bundle.is_symlink():
                bundle.rename(replaced)
            staging.rename(bundle)
        except OSError as exc:
            raise unusable_model_dir(self.work, exc) from None
        finally:
            for leftover in (staging, replaced):
                shutil.rmtree(leftover, ignore_errors=True)


def cache_of(model_dir: Path) -> Path:
    """The cache of the pulls into ``model_dir``: DVC 3's layout, ``<md5[:2]>/<md5[2:]>`` below it."""
    return model_dir / CACHE


def _clear_leftovers(work: Path) -> None:
    """Remove what an interrupted pull left (a checkout on its way, objects on their way)."""
    for leftover in work.glob(f"{STAGING}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for part in (work / CACHE).glob(f"*/.*{PART}"):
        part.unlink(missing_ok=True)


def discard(work: Path) -> None:
    """Drop the checked-out bundle and the local cache (and the index databases an earlier DVC pull left), so a
    bad or partial pull is never reused and a full volume gets its space back."""
    for path in (work / BUNDLE_NAME, work / DOT_DVC / "cache", site_cache_dir(work), *work.glob(f"{STAGING}*")):
        shutil.rmtree(path, ignore_errors=True)
