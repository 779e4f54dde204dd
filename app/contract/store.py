"""The DVC store layout: how a bundle is kept in a DVC remote, and its directory hash.

A bundle is the one output of a DVC work repository (``dvc init --no-scm``): ``<work>/bundle``, named by its
directory hash ``<md5>.dir``, the md5 of its listing (``listing_bytes``). Publishing pushes from a throw-away
work repository set up by ``prepare_work_repo`` (with DVC, imported there only); the remote gets DVC 3's normal
cache layout (``files/md5/..``), which the serving pull (``app.delivery.pull``) reads without DVC, and
``dir_hash`` computes the hash without DVC too. No credential is ever written to a DVC config: DVC's S3 client
reads the standard ``AWS_*`` variables itself, and a remote or endpoint URL holding user-info is refused (the
settings refuse it first; this guards callers that bypass them). The ``.dvc`` directory is still private to its
owner (0700, its config 0600): it names the store, and holds the cache.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Final

from app.contract.connection import CREDENTIALS_IN_URL, holds_credentials
from app.contract.hashing import file_digest

REMOTE_NAME: Final = "store"
BUNDLE_NAME: Final = "bundle"  # the one DVC output of a work repository: <work>/bundle
SITE_CACHE_ENV: Final = "DVC_SITE_CACHE_DIR"
CONNECT_TIMEOUT_S: Final = 5  # one S3 connection attempt; the overall bound is the caller's deadline
# A bundle's DVC hash: 32 hex digits, ".dir" for a directory.
DVC_HASH: Final = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
DIR_SUFFIX: Final = ".dir"


def site_cache_dir(work: Path) -> Path:
    """DVC's index cache for this work repo; its default (/var/tmp) may not exist in a read-only image."""
    return work / ".dvc" / "site"


def ensure_user_name() -> None:
    """Give the process a user name if its uid has none: DVC names its per-repository cache after
    ``getpass.getuser()``, which fails for a uid without a passwd entry (platforms that run containers under
    arbitrary uids)."""
    try:
        getpass.getuser()
    except (KeyError, OSError):
        os.environ["USER"] = f"uid-{os.getuid()}"


def prepare_work_repo(work: Path, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
    """Make ``work`` a DVC work repository (``dvc init --no-scm``) whose default remote is ``url``.

    ``ValueError`` if ``url`` or ``endpoint_url`` holds credentials: they would be written to the config in clear.
    """
    from dvc.repo import Repo

    for name, given in (("the DVC remote URL", url), ("the S3 endpoint URL", endpoint_url)):
        if given and holds_credentials(given):
            raise ValueError(f"{name} {CREDENTIALS_IN_URL}")
    ensure_user_name()

    work.mkdir(parents=True, exist_ok=True)
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)  # DVC's "Initialized DVC repository." banner
    previous = os.environ.get(SITE_CACHE_ENV)
    os.environ[SITE_CACHE_ENV] = os.fspath(site_cache_dir(work))
    try:
        repo = Repo(os.fspath(work)) if (work / ".dvc").is_dir() else Repo.init(os.fspath(work), no_scm=True)
        (work / ".dvc").chmod(0o700)
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
        (work / ".dvc" / "config").chmod(0o600)
        repo.close()
    finally:
        dvc_logger.setLevel(level)
        if previous is None:
            os.environ.pop(SITE_CACHE_ENV, None)
        else:
            os.environ[SITE_CACHE_ENV] = previous


def write_dvc_file(work: Path, dvc_hash: str) -> Path:
    """``bundle.dvc`` naming the wanted directory hash; ``hash: md5`` marks it as DVC 3 (files/md5 layout)."""
    path = work / f"{BUNDLE_NAME}.dvc"
    path.write_text(f"outs:\n- md5: {dvc_hash}\n  hash: md5\n  path: {BUNDLE_NAME}\n")
    return path


def listing_bytes(entries: dict[str, str]) -> bytes:
    """A directory's listing as DVC 3 serialises it (its ``.dir`` object): ``{relpath: md5}`` as a JSON list of
    ``{"md5": ..., "relpath": ...}`` sorted by relpath (a POSIX path), keys sorted, ``json.dumps``' default
    separators and ASCII escapes (``dvc_data.hashfile.tree.Tree.as_bytes``)."""
    listing = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(entries.items())]
    return json.dumps(listing, sort_keys=True).encode("utf-8")


def listing_hash(listing: bytes) -> str:
    """The DVC 3 hash of a directory whose listing is ``listing``: its md5, then ``.dir``."""
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + DIR_SUFFIX


def dir_hash(path: Path) -> str:
    """The DVC 3 hash of a directory (``<md5>.dir``): the md5 of its listing (``listing_bytes``), the value
    ``dvc add`` gives it (``tests/app/test_store.py`` compares the two)."""
    files = (p for p in path.rglob("*") if p.is_file())
    return listing_hash(
        listing_bytes({posixpath.join(*f.relative_to(path).parts): file_digest(f, "md5") for f in files})
    )
