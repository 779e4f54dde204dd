"""Every way delivery (and the start after it) fails, each with its exit code, and the classification of a failed
``dvc pull`` from its output: S3 error codes where botocore names them, and fixed phrases, never digits anywhere in
the text.

The phrases are DVC's, botocore's and the C library's own words, as DVC 3 prints them (captured against a moto
S3 server, see ``tests/app/test_delivery_failures.py``); object ids are read only where a phrase names one."""

from __future__ import annotations

import os
import re
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


# S3 errors as botocore words them in DVC's output: "An error occurred (<code>) when calling ...". Status codes
# count only there, never as digits anywhere in the text (an endpoint's port or a blob's hash may hold "403").
S3_ERROR_CODE: Final = re.compile(r"An error occurred \((\w+)\) when calling")
CREDENTIAL_CODES: Final = frozenset(
    {"403", "Forbidden", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NoSuchBucket"})
CREDENTIAL_MARKERS: Final = ("Unable to locate credentials", "NoCredentialsError")
MISSING_MARKERS: Final = ("Missing cache files", "missing-files")
UNREACHABLE_MARKERS: Final = (
    "Could not connect", "Connect timeout", "Connection refused", "Read timeout", "timed out",
    "EndpointConnectionError", "Name or service not known", "Temporary failure in name resolution", "Connection reset",
)  # fmt: skip
# MODEL_DIR's volume is full: the C library's words for ENOSPC and EDQUOT, and SQLite's for SQLITE_FULL (DVC keeps
# its index databases in MODEL_DIR/.dvc/site, and they are often what fills up first).
DISK_MARKERS: Final = ("No space left on device", "Disk quota exceeded", "database or disk is full")
# A DVC object id: an md5, ".dir" for a directory's listing.
_OID: Final = r"[0-9a-f]{32}(?:\.dir)?"
# DVC's ObjectFormatError: a listing that is no JSON list of entries, or an object whose content is not its hash.
CORRUPT_OBJECT: Final = re.compile(rf"\bobject ({_OID}) is corrupted\b")
# The objects DVC names, one "md5: <oid>" line each, after "Missing cache files:" (its error line names none).
MISSING_LIST: Final = re.compile(rf"Missing cache files:\n((?:md5: {_OID}\n?)+)")
MISSING_ENTRY: Final = re.compile(rf"^md5: ({_OID})$", re.MULTILINE)
FAILED_TRANSFER: Final = re.compile(rf"failed to transfer '({_OID})'")


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
        f"{where} is out of space: writing the bundle or DVC's index there failed ({detail})",
        f"the free space on the volume holding {where}: free some, or give it a larger volume (it must hold the "
        "bundle once, plus DVC's index databases)",
    )


def classify_pull_failure(
    output: str, remote: str, *, url: str | None = None, model_dir: Path | str | None = None
) -> DeliveryError:
    """A failed ``dvc pull``'s output -> the one failure that explains it, with what to check.

    ``remote`` describes the remote in messages; ``url`` (``DVC_REMOTE_URL``) lets them name an object's path
    in it; ``model_dir`` is where the pull writes.
    """
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    reason = redact(errors[0].removeprefix("ERROR:").strip() if errors else (output.strip().splitlines() or ["?"])[-1])
    codes = set(S3_ERROR_CODE.findall(output))
    if any(marker in output for marker in DISK_MARKERS):
        return out_of_space(model_dir, reason)
    if corrupt := CORRUPT_OBJECT.search(output):
        oid = corrupt.group(1)
        what = f"listing {oid}" if oid.endswith(".dir") else f"object {oid}"
        why = " (it is no listing at all)" if oid.endswith(".dir") else ""
        return DeliveryError(
            "mismatch",
            f"the bundle's {what} in the remote {remote} is corrupt: the store's copy ({object_path(oid, url)}) "
            f"does not match its hash{why}, so it was altered or damaged in the store",
            f"the store's copy at {object_path(oid, url)}: delete it, then publish the bundle again (python -m "
            "orchestration publish uploads only what the store lacks, so it skips a corrupt copy left in place)",
        )
    if codes & CREDENTIAL_CODES or any(marker in output for marker in CREDENTIAL_MARKERS):
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
    if codes & MISSING_CODES or any(marker in output for marker in MISSING_MARKERS):
        if listed := MISSING_LIST.search(output):  # DVC's own list: its error line ("Checkout failed ...") names none
            detail = f": {_named(MISSING_ENTRY.findall(listed.group(1)), url)}"
        elif transfers := FAILED_TRANSFER.findall(output) if codes & MISSING_CODES else []:
            detail = f": {_named(list(dict.fromkeys(transfers)), url)} ({reason})"
        else:
            detail = f" ({reason})"
        return DeliveryError(
            "missing",
            f"the bundle's objects are missing from the remote {remote}{detail}",
            "that the bundle was pushed to this DVC_REMOTE_URL (python -m orchestration publish) and the hash",
        )
    return DeliveryError("pull", f"dvc pull from {remote} failed ({reason})", "the DVC remote settings")
