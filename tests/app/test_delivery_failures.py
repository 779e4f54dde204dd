"""A failed pull is classified from structured errors (botocore's exception classes and the S3 error codes they
carry, an ``OSError``'s errno), never from digits that happen to stand in a port or a hash; each message names what
to check and never a credential."""

from __future__ import annotations

import errno
import re
import time
from pathlib import Path

import pytest
from botocore import exceptions as aws

from app.delivery.failures import (
    EXIT_CODES,
    RETRYABLE,
    DeliveryError,
    Failure,
    classify_remote_error,
    corrupt,
    missing,
    unusable_model_dir,
)

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "s3://bucket-one/dvc at http://127.0.0.1:14035"
URL = "s3://bucket-one/dvc"
LISTING = "39a42bd8873002daa0e722a2f02db851.dir"
LISTING_PATH = f"{URL}/files/md5/39/a42bd8873002daa0e722a2f02db851.dir"
BLOB = "32a50148514d595cf0fcca174b75f242"
ENDPOINT = "http://127.0.0.1:14035/bucket-one/dvc/files/md5/32/a50148514d595cf0fcca174b75f242"


def client_error(code: str, status: int, operation: str = "GetObject") -> aws.ClientError:
    """botocore's error for an S3 answer ``status`` with error ``code`` (a HEAD answer's code is its status)."""
    answer = {
        "Error": {"Code": code, "Message": f"the store said {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return aws.ClientError(answer, operation)


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        pytest.param(client_error("403", 403, "HeadObject"), "credentials", id="forbidden-head"),
        pytest.param(client_error("AccessDenied", 403), "credentials", id="access-denied"),
        pytest.param(client_error("InvalidAccessKeyId", 403), "credentials", id="unknown-key"),
        pytest.param(client_error("SignatureDoesNotMatch", 403), "credentials", id="wrong-secret"),
        pytest.param(client_error("ExpiredToken", 400), "credentials", id="expired-token"),
        pytest.param(aws.NoCredentialsError(), "credentials", id="no-credentials"),
        pytest.param(aws.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "credentials",
                     id="partial-credentials"),
        pytest.param(client_error("NoSuchKey", 404), "missing", id="no-such-key"),
        pytest.param(client_error("404", 404, "HeadObject"), "missing", id="not-found-head"),
        pytest.param(client_error("NoSuchBucket", 404), "missing", id="no-such-bucket"),
        # its endpoint's port, 14035, holds "403": no credentials failure
        pytest.param(aws.EndpointConnectionError(endpoint_url=ENDPOINT), "unreachable", id="connection-refused"),
        pytest.param(aws.EndpointConnectionError(endpoint_url=ENDPOINT.replace("14035", "14044")), "unreachable",
                     id="unreachable-404-in-port"),  # "404" in the port is no missing object either
        pytest.param(aws.ConnectTimeoutError(endpoint_url=ENDPOINT), "unreachable", id="connect-timeout"),
        pytest.param(aws.ReadTimeoutError(endpoint_url=ENDPOINT), "unreachable", id="read-timeout"),
        pytest.param(aws.ConnectionClosedError(endpoint_url=ENDPOINT), "unreachable", id="connection-closed"),
        pytest.param(aws.ResponseStreamingError(error="cut mid-body"), "unreachable", id="cut-mid-body"),
        pytest.param(client_error("SlowDown", 503), "pull", id="slow-down"),
        pytest.param(client_error("InternalError", 500), "pull", id="server-error"),
        # a directory remote: plain file reads
        pytest.param(FileNotFoundError(errno.ENOENT, "No such file or directory"), "missing", id="no-such-file"),
        pytest.param(PermissionError(errno.EACCES, "Permission denied"), "credentials", id="unreadable-file"),
        pytest.param(OSError(errno.EIO, "Input/output error"), "pull", id="io-error"),
        pytest.param(RuntimeError("something nobody said before"), "pull", id="unknown"),
    ],
)  # fmt: skip
def test_failures_are_classified_from_their_kind_and_code(error: BaseException, failure: Failure) -> None:
    classified = classify_remote_error(error, REMOTE, url=URL, oid=BLOB)
    assert classified.failure == failure, str(classified)
    assert classified.retryable == (failure in {"unreachable", "pull"})


def test_messages_say_what_to_check() -> None:
    def said(error: BaseException) -> str:
        return str(classify_remote_error(error, REMOTE, url=URL, oid=BLOB))

    assert "refused the credentials" in said(client_error("InvalidAccessKeyId", 403))
    assert "AWS_SECRET_ACCESS_KEY" in said(client_error("InvalidAccessKeyId", 403))
    assert "AWS_SHARED_CREDENTIALS_FILE" in said(aws.NoCredentialsError())
    unreachable = said(aws.EndpointConnectionError(endpoint_url=ENDPOINT))
    assert "unreachable" in unreachable and "DVC_REMOTE_ENDPOINT_URL" in unreachable
    assert "DVC_REMOTE_URL (its bucket)" in said(client_error("NoSuchBucket", 404))


def test_no_message_prints_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-in-an-answer"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    for error in (client_error(f"SignatureDoesNotMatch {secret}", 403), RuntimeError(f"odd: {secret}")):
        assert secret not in str(classify_remote_error(error, REMOTE, url=URL, oid=BLOB))


@pytest.mark.parametrize("oid", [LISTING, BLOB], ids=["listing", "object"])
def test_a_corrupt_object_names_its_hash_and_where_the_store_keeps_it(oid: str) -> None:
    error = corrupt(oid, REMOTE, URL)
    assert error.exit_code == 8 and not error.retryable
    message = str(error)
    where = f"{URL}/files/md5/{oid[:2]}/{oid[2:]}"
    kind = "listing" if oid.endswith(".dir") else "object"
    assert f"{kind} {oid}" in message and where in message and "corrupt" in message
    assert "does not match its hash" in message and "altered or damaged in the store" in message
    assert f"copy at {where}: delete it, then publish the bundle again" in message
    assert "DVC remote settings" not in message


def test_missing_objects_are_named_with_their_paths() -> None:
    error = missing([LISTING], REMOTE, URL)
    assert error.exit_code == 7 and not error.retryable
    assert f"listing {LISTING} ({LISTING_PATH})" in str(error)
    message = str(classify_remote_error(client_error("NoSuchKey", 404), REMOTE, url=URL, oid=BLOB))
    assert f"object {BLOB} ({URL}/files/md5/32/a50148514d595cf0fcca174b75f242)" in message


@pytest.mark.parametrize(
    ("code", "failure"), [(errno.ENOSPC, "disk"), (errno.EDQUOT, "disk"), (errno.EACCES, "settings")]
)
def test_a_full_model_dir_is_its_own_failure_and_names_model_dir(code: int, failure: Failure) -> None:
    error = unusable_model_dir(Path("/models"), OSError(code, "writing"))
    assert error.failure == failure and not error.retryable
    message = str(error)
    assert "MODEL_DIR=/models" in message and "DVC remote settings" not in message
    if failure == "disk":
        assert error.exit_code == 10 and "free space" in message and "volume" in message


def test_every_failure_has_its_own_exit_code() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert not {0, 1} & set(EXIT_CODES.values())  # 0 is success, 1 an unexpected crash (a traceback)


def test_the_exit_code_table_is_exit_codes() -> None:
    readme = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `([a-z-]+)` \| .+ \| (yes|no) \|$", readme, flags=re.MULTILINE)
    assert {failure: int(code) for code, failure, _ in rows} == EXIT_CODES
    assert len(rows) == len(EXIT_CODES)  # one table, each failure once
    assert {failure for _, failure, retried in rows if retried == "yes"} == RETRYABLE


def test_a_retry_loop_that_stops_says_why() -> None:
    """Out of time after a slow first attempt (a loaded machine) or out of retries: the line says which."""
    from app.contract.progress import quiet
    from app.delivery.retry import retrying
    from app.settings import Settings

    def unreachable(_: float) -> None:
        raise DeliveryError("unreachable", "the remote is unreachable", "the network")

    no_time = time.monotonic() + 0.1  # less than the first back-off
    with pytest.raises(DeliveryError, match=r"gave up after 1 attempt\(s\): PULL_DEADLINE_S leaves no time"):
        retrying(
            unreachable, Settings(pull_retries=20, pull_backoff_s=0.5), report=quiet, step="pull", deadline=no_time
        )
    with pytest.raises(DeliveryError, match=r"gave up after 1 attempt\(s\): PULL_RETRIES=0 used"):
        retrying(unreachable, Settings(pull_retries=0), report=quiet, step="pull")
