"""A failed ``dvc pull`` is classified from what its output says, on DVC's real messages (captured from DVC 3
against a moto S3 server), never from digits that happen to stand in a port or a hash."""

from __future__ import annotations

import pytest

from app.delivery.failures import Failure, classify_pull_failure

REMOTE = "s3://bucket-one/dvc at http://127.0.0.1:14035"
FORBIDDEN = (
    "ERROR: failed to connect to s3 (bucket-one/dvc/files/md5) - Forbidden: An error occurred (403) when calling "
    "the HeadObject operation: Forbidden\nERROR: failed to pull data from the cloud - 1 files failed to download\n"
)
NO_SUCH_KEY = (
    "ERROR: failed to transfer '32a50148514d595cf0fcca174b75f242' - The specified key does not exist.: An error "
    "occurred (NoSuchKey) when calling the GetObject operation: The specified key does not exist.\n"
    "ERROR: failed to pull data from the cloud - 2 files failed to download\n"
)
UNREACHABLE = (
    "ERROR: failed to connect to s3 (bucket-one/dvc/files/md5) - Could not connect to the endpoint URL: "
    '"http://127.0.0.1:14035/bucket-one/dvc/files/md5"\n'
    "ERROR: failed to pull data from the cloud - 1 files failed to download\n"
)


@pytest.mark.parametrize(
    ("output", "failure"),
    [
        (FORBIDDEN, "credentials"),
        (NO_SUCH_KEY, "missing"),
        (UNREACHABLE, "unreachable"),  # its endpoint's port, 14035, holds "403"
        (NO_SUCH_KEY.replace("32a50148514d595cf0fcca174b75f242", "32a50148514d595cf0fcca174b403f24"), "missing"),
        (UNREACHABLE.replace("14035", "14044"), "unreachable"),  # "404" in the port is no missing object either
        ("ERROR: unexpected error - Unable to locate credentials\n", "credentials"),
        ("ERROR: something DVC never said before\n", "pull"),
    ],
)
def test_failures_are_classified_from_codes_and_phrases(output: str, failure: Failure) -> None:
    error = classify_pull_failure(output, REMOTE)
    assert error.failure == failure, str(error)
    assert error.retryable == (failure in {"unreachable", "pull"})
