"""Every way delivery (and the start after it) fails, each with its exit code, and the classification of a failed
pull from structured errors: botocore's exception classes and the S3 error codes they carry, and the errno of an
``OSError``; never from the words of a message (an endpoint's port or a blob's hash may hold "403")."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Final, Literal

from app.contract.connection import redact

Failure = Literal[
    "settings", "registry", "not-found", "unreachable", "credentials", "missing", "mismatch", "pull", "disk", "bind"
]
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
    "disk": 10,
    "bind": 11,  # the server cannot listen on HOST:PORT (uvicorn itself would exit 3, the registry's code)
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


# S3 error codes (botocore's ``ClientError.response["Error"]["Code"]``; a HEAD answer carries only its status).
CREDENTIAL_CODES: Final = frozenset(
    {"403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "TokenRefreshRequired", "InvalidSecurity"}
)  # fmt: skip
MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
OUT_OF_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
WHERE_CREDENTIALS: Final = (
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (or AWS_SHARED_CREDENTIALS_FILE) and the bucket "
    "policy"
)


def object_path(oid: str, url: str | None) -> str:
    """Where DVC 3 keeps object ``oid`` in the remote at ``url``: ``<url>/files/md5/<2 hex>/<rest>``."""
    key = f"files/md5/{oid[:2]}/{oid[2:]}"
    return f"{redact(url.rstrip('/'))}/{key}" if url else key


def _named(oids: list[str], url: str | None) -> str:
    """``listing <oid> (<path>)`` / ``object <oid> (<path>)``, for each object."""
    return ", ".join(
        f"{'listing' if oid.endswith('.dir') else 'object'} {oid} ({object_path(oid, url)})" for oid in oids
    )


def out_of_space(model_dir: Path | str | None, detail: str) -> DeliveryError:
    """MODEL_DIR's volume is full: not retried (it will not empty itself), and nothing about the remote."""
    where = f"MODEL_DIR={os.fspath(model_dir)}" if model_dir is not None else "MODEL_DIR"
    return DeliveryError(
        "disk",
        f"{where} is out of space: writing the bundle or its object cache there failed ({detail})",
        f"the free space on the volume holding {where}: free some, or give it a larger volume (it must hold the "
        "bundle once: its checkout shares the cache's files through hard links where the volume allows them)",
    )


def missing(oids: list[str], remote: str, url: str | None, reason: str | None = None) -> DeliveryError:
    """The bundle's objects ``oids`` (its listing, or files it names) are not in the remote."""
    why = f" ({reason})" if reason else ""
    return DeliveryError(
        "missing",
        f"the bundle's objects are missing from the remote {remote}: {_named(oids, url)}{why}",
        "that the bundle was pushed to this DVC_REMOTE_URL (python -m orchestration publish) and the hash",
    )


def corrupt(oid: str, remote: str, url: str | None, *, relpath: str | None = None, why: str = "") -> DeliveryError:
    """The store's copy of object ``oid`` is not what its id says: a listing whose bytes do not hash to its id
    (or that is no listing at all), or a file whose bytes do not hash to its entry in the listing."""
    what = f"listing {oid}" if oid.endswith(".dir") else f"object {oid}" + (f" ({relpath})" if relpath else "")
    return DeliveryError(
        "mismatch",
        f"the bundle's {what} in the remote {remote} is corrupt: the store's copy ({object_path(oid, url)}) "
        f"does not match its hash{why}, so it was altered or damaged in the store",
        f"the store's copy at {object_path(oid, url)}: delete it, then publish the bundle again (python -m "
        "orchestration publish uploads only what the store lacks, so it skips a corrupt copy left in place)",
    )


def unusable_model_dir(model_dir: Path | str, exc: OSError) -> DeliveryError:
    """Writing into ``MODEL_DIR`` failed: out of space (ENOSPC, EDQUOT), or it is not a writable directory."""
    if exc.errno in OUT_OF_SPACE_ERRNOS:
        return out_of_space(model_dir, exc.strerror or str(exc))
    return DeliveryError(
        "settings", f"MODEL_DIR={os.fspath(model_dir)} is not usable: {exc}", "that MODEL_DIR is a writable directory"
    )


def classify_remote_error(exc: BaseException, remote: str, *, url: str | None, oid: str) -> DeliveryError:
    """An error reading object ``oid`` from the remote -> the one failure that explains it, with what to check.

    ``exc`` is botocore's (``ClientError`` with its S3 code, a connection or timeout error, no credentials) for an
    ``s3://`` remote, an ``OSError`` for a directory; ``remote`` describes the remote in messages, ``url``
    (``DVC_REMOTE_URL``) lets them name the object's path in it.
    """
    reason = redact(str(exc) or type(exc).__name__)
    # botocore's errors first: its timeouts are OSErrors too. An error of botocore's means it is imported already.
    aws = sys.modules.get("botocore.exceptions")
    if aws is not None and isinstance(exc, aws.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in CREDENTIAL_CODES or status == 403:
            return DeliveryError(
                "credentials", f"the remote {remote} refused the credentials ({reason})", WHERE_CREDENTIALS
            )
        if code == "NoSuchBucket":
            return DeliveryError(
                "missing",
                f"the bucket of the remote {remote} does not exist ({reason})",
                "DVC_REMOTE_URL (its bucket), DVC_REMOTE_ENDPOINT_URL, and that the bundle was pushed there "
                "(python -m orchestration publish)",
            )
        if code in MISSING_CODES or status == 404:
            return missing([oid], remote, url, reason)
        return DeliveryError(
            "pull",
            f"the remote {remote} answered {code or status} to a read of {object_path(oid, url)} ({reason})",
            "the DVC remote settings (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL, DVC_REMOTE_REGION) and the store",
        )
    if aws is not None and isinstance(
        exc, aws.NoCredentialsError | aws.PartialCredentialsError | aws.CredentialRetrievalError
    ):
        return DeliveryError(
            "credentials", f"the remote {remote} got no usable credentials ({reason})", WHERE_CREDENTIALS
        )
    if aws is not None and isinstance(exc, aws.ConnectionError | aws.HTTPClientError):
        # refused, timed out, reset, a TLS failure, an answer cut mid-body
        return DeliveryError(
            "unreachable",
            f"the remote {remote} is unreachable ({reason})",
            "DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL and network access to the store",
        )
    if isinstance(exc, OSError):  # a directory remote
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            return missing([oid], remote, url)
        if isinstance(exc, PermissionError):
            return DeliveryError(
                "credentials",
                f"the remote {remote} refused to be read ({reason})",
                "that this user may read DVC_REMOTE_URL's directory and its files",
            )
        return DeliveryError("pull", f"reading from {remote} failed ({reason})", "the volume holding DVC_REMOTE_URL")
    return DeliveryError(
        "pull",
        f"the pull from {remote} failed ({type(exc).__name__}: {reason})",
        "the DVC remote settings (DVC_REMOTE_URL, DVC_REMOTE_ENDPOINT_URL, DVC_REMOTE_REGION)",
    )
