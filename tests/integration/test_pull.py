"""The pull without DVC (``app.delivery.pull``) against a bundle published by the project's real publishing path
(``orchestration.publish.push_bundle``: ``dvc add`` + ``dvc push``) to moto S3 and to a directory: bit-identical,
every object checked, the cache reused, each failure classified, the deadline and ``stop_pulls`` obeyed, and
nothing of DVC's stack imported by the serving start-up."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.contract.store import dir_hash, listing_bytes
from app.delivery.failures import DeliveryError
from app.delivery.pull import CACHE, PullStoppedError, cache_of, pull, stop_pulls
from app.delivery.verify import verify
from app.settings import Settings
from orchestration.publish import PublishTarget, push_bundle
from tests.harness.services import LOOPBACK, S3_ENV, S3Server, blob_key, free_port
from tests.integration.conftest import (
    ROOT,
    SECRET,
    _clean_environ,
    entrypoint_env,
    objects_of,
    target_for,
    unique,
)

PREFIX = "bundle"
BANNED = ("dvc", "dvc_data", "dvc_objects", "s3fs", "aiobotocore", "fsspec", "boto3")


@pytest.fixture(scope="module")
def bucket(s3: S3Server, s3_credentials: None) -> str:
    name = unique("pull")
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def pushed(bundle_dir: Path, s3: S3Server, bucket: str) -> str:
    """The bundle pushed by DVC to ``s3://<bucket>/bundle``; its DVC hash."""
    dvc_hash, uploaded = push_bundle(bundle_dir, target_for(s3, bucket, "unused", "unused", prefix=PREFIX))
    assert uploaded == objects_of(bundle_dir)
    return dvc_hash


def copy_of(s3: S3Server, bucket: str, prefix: str) -> str:
    """Every object of the pushed bundle copied under ``prefix`` (to alter there); its remote URL."""
    client = s3.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")["Contents"]:
        key = f"{prefix}/{item['Key'].removeprefix(f'{PREFIX}/')}"
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": item["Key"]})
    return f"s3://{bucket}/{prefix}"


def settings_for(model_dir: Path, url: str, endpoint: str | None, **more: object) -> Settings:
    given: dict[str, object] = {"model_dir": model_dir, "dvc_remote_url": url, "dvc_remote_endpoint_url": endpoint}
    return Settings(**{"pull_backoff_s": 0.1, **given, **more})  # type: ignore[arg-type]


def listing_of(s3: S3Server, bucket: str, prefix: str, dvc_hash: str) -> list[dict[str, str]]:
    body = s3.client().get_object(Bucket=bucket, Key=blob_key(prefix, dvc_hash))["Body"].read()
    return list(json.loads(body))


def md5_of(listing: list[dict[str, str]], relpath: str) -> str:
    [md5] = [entry["md5"] for entry in listing if entry["relpath"] == relpath]
    return md5


def test_a_pull_is_bit_identical_verified_and_a_second_one_fetches_nothing(
    bundle_dir: Path, s3: S3Server, bucket: str, pushed: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, f"s3://{bucket}/{PREFIX}", s3.endpoint_url)
    pulled = pull(settings, pushed)
    assert (pulled.fetched, pulled.attempts) == (objects_of(bundle_dir), 1)
    files = sorted(p.relative_to(bundle_dir) for p in bundle_dir.rglob("*") if p.is_file())
    assert sorted(p.relative_to(pulled.bundle_dir) for p in pulled.bundle_dir.rglob("*") if p.is_file()) == files
    for name in files:
        assert (pulled.bundle_dir / name).read_bytes() == (bundle_dir / name).read_bytes()
    assert verify(pulled.bundle_dir, pushed).content_hash
    # the store's listing is exactly the bytes dir_hash hashes: DVC's own serialisation
    stored = s3.client().get_object(Bucket=bucket, Key=blob_key(PREFIX, pushed))["Body"].read()
    assert stored == listing_bytes({e["relpath"]: e["md5"] for e in json.loads(stored)})
    # the checkout shares the cache's files: hard links, read-only
    model = pulled.bundle_dir / "model.skops"
    assert model.stat().st_nlink == 2 and stat.S_IMODE(model.stat().st_mode) & 0o222 == 0
    assert not list(tmp_path.glob(".bundle-*")) and not list((tmp_path / CACHE).glob("*/.*"))

    again = pull(settings, pushed)  # a restart, or a refresh of the same bundle
    assert (again.fetched, again.attempts) == (0, 1) and dir_hash(again.bundle_dir) == pushed
    # a damaged copy in the cache is noticed and downloaded again
    md5 = md5_of(listing_of(s3, bucket, PREFIX, pushed), "metadata.json")
    cached = tmp_path / CACHE / md5[:2] / md5[2:]
    cached.chmod(0o644)
    cached.write_bytes(b"{}")
    third = pull(settings, pushed)
    assert third.fetched == 1 and verify(third.bundle_dir, pushed).content_hash
    # a candidate's pull into its own directory takes what another cache in MODEL_DIR holds (checked) instead
    candidate = settings.model_copy(update={"model_dir": tmp_path / "refresh" / "candidate"})
    seeded = pull(candidate, pushed, seeds=[cache_of(tmp_path)])
    assert seeded.fetched == 0 and verify(seeded.bundle_dir, pushed).content_hash


def test_a_pull_from_a_directory_remote(bundle_dir: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    target = PublishTarget(remote_url=os.fspath(remote), tracking_uri="unused", model_name="unused")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    settings = settings_for(tmp_path / "models", os.fspath(remote), None)
    pulled = pull(settings, dvc_hash)
    assert pulled.fetched == objects_of(bundle_dir) and verify(pulled.bundle_dir, dvc_hash).content_hash
    assert pull(settings, dvc_hash).fetched == 0
    md5 = md5_of(json.loads((remote / "files" / "md5" / dvc_hash[:2] / dvc_hash[2:]).read_bytes()), "model.skops")
    (remote / "files" / "md5" / md5[:2] / md5[2:]).unlink()
    with pytest.raises(DeliveryError) as refused:
        pull(settings_for(tmp_path / "other", os.fspath(remote), None), dvc_hash)
    assert refused.value.failure == "missing" and f"{remote}/files/md5/{md5[:2]}/{md5[2:]}" in str(refused.value)


def test_a_tampered_object_is_a_mismatch_and_nothing_is_kept(
    s3: S3Server, bucket: str, pushed: str, tmp_path: Path
) -> None:
    url = copy_of(s3, bucket, "tampered")
    md5 = md5_of(listing_of(s3, bucket, "tampered", pushed), "model.skops")
    client = s3.client()
    blob = client.get_object(Bucket=bucket, Key=blob_key("tampered", md5))["Body"].read()
    client.put_object(Bucket=bucket, Key=blob_key("tampered", md5), Body=blob[:-8] + b"tampered")
    reports: list[str] = []
    with pytest.raises(DeliveryError) as refused:
        pull(settings_for(tmp_path, url, s3.endpoint_url), pushed, report=reports.append)
    error = refused.value
    assert (error.failure, error.exit_code, reports) == ("mismatch", 8, [])  # refused at once, not retried
    assert f"object {md5}" in str(error) and "does not match its hash" in str(error)
    assert f"copy at {url}/files/md5/{md5[:2]}/{md5[2:]}: delete it" in str(error)
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".dvc" / "cache").exists()


@pytest.mark.parametrize(
    "listing",
    [
        pytest.param(json.dumps([{"md5": "0" * 32, "relpath": "model.skops"}]).encode(), id="another-valid-listing"),
        pytest.param(b"\x00not a listing\xff", id="garbage"),
        pytest.param(b"", id="empty"),
    ],
)
def test_a_tampered_listing_is_a_mismatch(
    s3: S3Server, bucket: str, pushed: str, tmp_path: Path, listing: bytes
) -> None:
    prefix = unique("listing")
    url = copy_of(s3, bucket, prefix)
    s3.client().put_object(Bucket=bucket, Key=blob_key(prefix, pushed), Body=listing)
    with pytest.raises(DeliveryError) as refused:
        pull(settings_for(tmp_path, url, s3.endpoint_url), pushed)
    message = str(refused.value)
    assert refused.value.failure == "mismatch", message
    assert f"listing {pushed}" in message and "corrupt" in message and "does not match its hash" in message
    assert f"copy at {url}/files/md5/{pushed[:2]}/{pushed[2:]}: delete it, then publish the bundle again" in message
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".dvc" / "cache").exists()


def test_missing_objects_are_each_named(s3: S3Server, bucket: str, pushed: str, tmp_path: Path) -> None:
    url = copy_of(s3, bucket, "missing")
    listing = listing_of(s3, bucket, "missing", pushed)
    gone = [md5_of(listing, "model.skops"), md5_of(listing, "metadata.json")]
    for md5 in gone:
        s3.client().delete_object(Bucket=bucket, Key=blob_key("missing", md5))
    reports: list[str] = []
    with pytest.raises(DeliveryError) as refused:
        pull(settings_for(tmp_path, url, s3.endpoint_url), pushed, report=reports.append)
    message = str(refused.value)
    assert (refused.value.failure, refused.value.exit_code, reports) == ("missing", 7, [])
    assert "missing from the remote" in message
    assert all(f"object {md5} ({url}/files/md5/{md5[:2]}/{md5[2:]})" in message for md5 in gone), message
    s3.client().delete_object(Bucket=bucket, Key=blob_key("missing", pushed))
    with pytest.raises(DeliveryError, match=f"missing from the remote .*: listing {pushed}") as no_listing:
        pull(settings_for(tmp_path, url, s3.endpoint_url), pushed)
    assert no_listing.value.exit_code == 7
    with pytest.raises(DeliveryError, match=r"bucket of the remote .* does not exist") as no_bucket:
        pull(settings_for(tmp_path, f"s3://{unique('nobucket')}/x", s3.endpoint_url), pushed)
    assert no_bucket.value.failure == "missing"


def _moto_auth(s3: S3Server, free_requests: str) -> None:
    request = urllib.request.Request(
        f"{s3.endpoint_url}/moto-api/reset-auth",
        data=free_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def test_wrong_or_no_keys_are_a_credentials_failure_at_once(
    s3: S3Server, bucket: str, pushed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, f"s3://{bucket}/{PREFIX}", s3.endpoint_url, pull_retries=5, pull_backoff_s=1)
    _moto_auth(s3, "0")  # from now on moto checks every request's credentials; ours are unknown to it
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as refused:
            pull(settings, pushed)
        elapsed = time.monotonic() - started
    finally:
        _moto_auth(s3, "inf")
    message = str(refused.value)
    assert (refused.value.failure, refused.value.exit_code) == ("credentials", 6)
    assert (
        "refused the credentials" in message and "InvalidAccessKeyId" in message and "AWS_SECRET_ACCESS_KEY" in message
    )
    assert SECRET not in message and S3_ENV["AWS_ACCESS_KEY_ID"] not in message
    assert elapsed < 5  # not retried
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.fspath(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", os.fspath(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata request, to anywhere
    with pytest.raises(DeliveryError, match=r"got no usable credentials .*Unable to locate credentials") as none:
        pull(settings, pushed)
    assert none.value.failure == "credentials"


@pytest.fixture
def silent_store() -> Iterator[str]:
    """An endpoint on 127.0.0.1 that accepts connections and never answers: only the deadline ends a pull."""
    server = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://{LOOPBACK}:{server.getsockname()[1]}"
    server.close()
    for client in held:
        client.close()


def test_an_unreachable_or_silent_store_fails_within_the_deadline(
    pushed: str, silent_store: str, tmp_path: Path
) -> None:
    deadline = 2.0
    for endpoint, words in (
        (f"http://{LOOPBACK}:{free_port()}", "is unreachable (Could not connect"),  # nothing listens
        (silent_store, "unreachable or too slow: the pull did not finish before PULL_DEADLINE_S"),
    ):
        settings = settings_for(tmp_path, "s3://bucket/dvc", endpoint, pull_retries=20, pull_deadline_s=deadline)
        started = time.monotonic()
        with pytest.raises(DeliveryError) as failed:
            pull(settings, pushed)
        elapsed = time.monotonic() - started
        assert failed.value.failure == "unreachable" and words in str(failed.value), str(failed.value)
        assert "DVC_REMOTE_ENDPOINT_URL" in str(failed.value)
        assert elapsed < deadline + 0.5, elapsed
        assert not (tmp_path / "bundle").exists()


def test_stop_pulls_ends_a_running_pull_at_once(pushed: str, silent_store: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "s3://bucket/dvc", silent_store, pull_deadline_s=60)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            pull(settings, pushed)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)  # the attempt is waiting for the store's answer
    started = time.monotonic()
    stop_pulls()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 1
    [stopped] = failures
    assert isinstance(stopped, PullStoppedError) and not stopped.retryable and "stopped" in str(stopped)


NO_DVC = f"""
import sys
from app.entrypoint import deliver, import_server_modules
from app.settings import load_settings

delivered = deliver(load_settings())
import_server_modules()  # what the server imports next
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {set(BANNED)!r})
print(delivered.bundle_dir, loaded)
assert not any(m.split(".")[0] in {set(BANNED)!r} for m in sys.modules), loaded
"""


def test_the_serving_start_pulls_without_importing_dvc_or_its_stack(
    bundle_dir: Path, s3: S3Server, bucket: str, pushed: str, tmp_path: Path
) -> None:
    env = entrypoint_env(
        tmp_path, remote_url=f"s3://{bucket}/{PREFIX}", endpoint_url=s3.endpoint_url, MODEL_HASH=pushed
    )
    done = subprocess.run(
        [sys.executable, "-c", NO_DVC],
        cwd=ROOT,
        env={**_clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{tmp_path / 'bundle'} []"
    assert "pull done" in done.stderr and "verify done" in done.stderr
    assert f"{objects_of(bundle_dir)} files fetched" in done.stderr
    assert dir_hash(tmp_path / "bundle") == pushed
