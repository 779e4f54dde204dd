"""Every way delivery fails, each with its exit code, and the classification of a failed ``dvc pull`` from
its output: S3 error codes where botocore names them, and fixed phrases, never digits anywhere in the text."""

from __future__ import annotations

import re
from typing import Final, Literal

from app.contract.connection import redact

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


def classify_pull_failure(output: str, remote: str) -> DeliveryError:
    """A failed ``dvc pull``'s output -> the one failure that explains it, with what to check."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("ERROR")]
    reason = redact(errors[0].removeprefix("ERROR:").strip() if errors else (output.strip().splitlines() or ["?"])[-1])
    codes = set(S3_ERROR_CODE.findall(output))
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
        return DeliveryError(
            "missing",
            f"the bundle's objects are missing from the remote {remote} ({reason})",
            "that the bundle was pushed to this DVC_REMOTE_URL (python -m orchestration publish) and the hash",
        )
    return DeliveryError("pull", f"dvc pull from {remote} failed ({reason})", "the DVC remote settings")
