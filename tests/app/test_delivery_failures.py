"""A failed ``dvc pull`` is classified from what its output says, on DVC's real messages (captured from DVC 3
against a moto S3 server), never from digits that happen to stand in a port or a hash."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from app.delivery.failures import EXIT_CODES, RETRYABLE, DeliveryError, Failure, classify_pull_failure

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "s3://bucket-one/dvc at http://127.0.0.1:14035"
URL = "s3://bucket-one/dvc"
LISTING = "39a42bd8873002daa0e722a2f02db851.dir"
LISTING_PATH = f"{URL}/files/md5/39/a42bd8873002daa0e722a2f02db851.dir"
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
SUPPORT = "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
# The bundle's listing (its .dir object) in the remote overwritten with garbage bytes, then with nothing.
CORRUPT_LISTING = (
    f"ERROR: unexpected error - object {LISTING} is corrupted: 'utf-8' codec can't decode byte 0xff in position 8: "
    f"invalid start byte\n{SUPPORT}"
)
EMPTY_LISTING = (
    f"ERROR: unexpected error - object {LISTING} is corrupted: Expecting value: line 1 column 1 (char 0)\n{SUPPORT}"
)
# The bundle's listing deleted from the remote: DVC names it in a warning, its error line says only "Checkout failed".
MISSING_LISTING = (
    "Everything is up to date.\n"
    "WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache files:\n"
    f"md5: {LISTING}\n"
    "ERROR: failed to pull data from the cloud - Checkout failed for following targets:\n"
    "bundle\nIs your cache up to date?\n<https://error.dvc.org/missing-files>\n"
)
# MODEL_DIR on a full volume: a blob's download, or one of DVC's index databases (SQLite) in MODEL_DIR/.dvc/site.
NO_SPACE = (
    "ERROR: failed to transfer '7f4cb9e78ef2e14f73a30cef2b9edd17' - [Errno 28] No space left on device\n"
    "ERROR: failed to pull data from the cloud - 2 files failed to download\n"
)
DATABASE_FULL = f"ERROR: unexpected error - database or disk is full\n{SUPPORT}"
DISK_IO = f"ERROR: unexpected error - disk I/O error\n{SUPPORT}"


@pytest.mark.parametrize(
    ("output", "failure"),
    [
        pytest.param(FORBIDDEN, "credentials", id="forbidden"),
        pytest.param(NO_SUCH_KEY, "missing", id="no-such-key"),
        pytest.param(UNREACHABLE, "unreachable", id="unreachable"),  # its endpoint's port, 14035, holds "403"
        pytest.param(
            NO_SUCH_KEY.replace("32a50148514d595cf0fcca174b75f242", "32a50148514d595cf0fcca174b403f24"),
            "missing",
            id="no-such-key-403-in-hash",
        ),
        # "404" in the port is no missing object either
        pytest.param(UNREACHABLE.replace("14035", "14044"), "unreachable", id="unreachable-404-in-port"),
        pytest.param("ERROR: unexpected error - Unable to locate credentials\n", "credentials", id="no-credentials"),
        pytest.param(CORRUPT_LISTING, "mismatch", id="corrupt-listing"),
        pytest.param(EMPTY_LISTING, "mismatch", id="empty-listing"),
        pytest.param(MISSING_LISTING, "missing", id="missing-listing"),
        pytest.param(NO_SPACE, "disk", id="no-space-left"),
        pytest.param(DATABASE_FULL, "disk", id="database-full"),
        # SQLite's words for any failed write: only MODEL_DIR's free space can tell (app.delivery.pull)
        pytest.param(DISK_IO, "pull", id="disk-io-error"),
        pytest.param("ERROR: something DVC never said before\n", "pull", id="unknown"),
    ],
)
def test_failures_are_classified_from_codes_and_phrases(output: str, failure: Failure) -> None:
    error = classify_pull_failure(output, REMOTE)
    assert error.failure == failure, str(error)
    assert error.retryable == (failure in {"unreachable", "pull"})


@pytest.mark.parametrize("output", [CORRUPT_LISTING, EMPTY_LISTING], ids=["garbage", "empty"])
def test_a_corrupt_listing_names_its_hash_and_where_the_store_keeps_it(output: str) -> None:
    error = classify_pull_failure(output, REMOTE, url=URL)
    assert error.exit_code == 8 and not error.retryable
    message = str(error)
    assert f"listing {LISTING}" in message and LISTING_PATH in message and "corrupt" in message
    assert "altered or damaged in the store" in message
    assert f"copy at {LISTING_PATH}: delete it, then publish the bundle again" in message
    assert "DVC remote settings" not in message


def test_a_missing_listing_is_named_not_cut_off() -> None:
    error = classify_pull_failure(MISSING_LISTING, REMOTE, url=URL)
    assert error.exit_code == 7 and not error.retryable
    message = str(error)
    assert f"listing {LISTING}" in message and LISTING_PATH in message
    assert "Checkout failed for following targets:)" not in message


def test_a_missing_blob_is_named_with_its_path() -> None:
    message = str(classify_pull_failure(NO_SUCH_KEY, REMOTE, url=URL))
    assert f"{URL}/files/md5/32/a50148514d595cf0fcca174b75f242" in message


@pytest.mark.parametrize("output", [NO_SPACE, DATABASE_FULL], ids=["no-space-left", "database-full"])
def test_a_full_model_dir_is_its_own_failure_and_names_model_dir(output: str) -> None:
    error = classify_pull_failure(output, REMOTE, url=URL, model_dir=Path("/models"))
    assert error.failure == "disk" and error.exit_code == 10 and not error.retryable
    message = str(error)
    assert "MODEL_DIR=/models" in message and "free space" in message and "volume" in message
    assert "DVC remote settings" not in message


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
