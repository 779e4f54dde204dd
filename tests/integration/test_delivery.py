"""Delivery failures, each against the real thing: the entrypoint as a subprocess (exit code, one line, no
secret) or ``app.delivery`` in-process where the test must act between attempts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.delivery.pull import pull
from app.delivery.verify import verify
from app.settings import Settings
from orchestration.publish import PublishError, PublishTarget, publish_bundle, push_bundle
from tests.harness.services import LOOPBACK, S3_ENV, S3Server, blob_key, free_port
from tests.integration.conftest import (
    SECRET,
    entrypoint_env,
    objects_of,
    run_entrypoint,
    target_for,
    unique,
)


@pytest.fixture(scope="module")
def bucket(s3: S3Server, s3_credentials: None) -> str:
    name = unique("delivery")
    s3.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def published(bundle_dir: Path, s3: S3Server, bucket: str, mlflow_uri: str) -> tuple[PublishTarget, str]:
    """The bundle pushed to ``<bucket>/ok`` and registered as ``champion``; (target, DVC hash)."""
    target = target_for(s3, bucket, mlflow_uri, unique("model"), prefix="ok")
    return target, publish_bundle(bundle_dir, target).dvc_hash


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``entrypoint: error:`` line of a failed start (and proof no secret was printed)."""
    stdout, stderr = result.stdout, result.stderr
    assert SECRET not in stdout + stderr
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("entrypoint: error:")]
    assert len(errors) == 1 and stderr.splitlines()[-1] == errors[0], stdout + stderr
    return errors[0]


def test_invalid_setting_is_named_before_anything_else(tmp_path: Path) -> None:
    env = entrypoint_env(tmp_path, remote_url="s3://nowhere/x", PORT="ninety", MODEL_HASH="not-a-hash")
    result = run_entrypoint(env)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "PORT" in line and "MODEL_HASH" in line
    assert not (tmp_path / ".dvc").exists()


def test_a_bundle_dir_that_does_not_exist_is_a_setting_error(tmp_path: Path) -> None:
    env = entrypoint_env(tmp_path, remote_url="s3://nowhere/x", BUNDLE_DIR=str(tmp_path / "no-such-bundle"))
    result = run_entrypoint(env)
    assert result.returncode == 2  # settings, not 8 ("tampered")
    line = one_error_line(result)
    assert "BUNDLE_DIR=" in line and "is not a directory" in line and "tampered" not in line


URI_PASSWORD = "pa/ss-never-printed"  # holding "/": the netloc of http://reader:<it>@host stops at the "/"


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://mlflow:abc", id="non-numeric-port"),
        pytest.param("http://[::1", id="unclosed-bracket"),
        pytest.param("http://ml flow:5000", id="space-in-host"),
        pytest.param(f"http://reader:{URI_PASSWORD}@mlflow:5000", id="slash-in-password"),
    ],
)
def test_a_tracking_uri_that_crashed_the_start_is_a_settings_error(uri: str, tmp_path: Path) -> None:
    """These passed the settings, then crashed the registry look-up with a traceback (exit 1)."""
    result = run_entrypoint(entrypoint_env(tmp_path, remote_url="s3://nowhere/x", MLFLOW_TRACKING_URI=uri))
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_error_line(result)
    assert "MLFLOW_TRACKING_URI:" in line and "Traceback" not in result.stderr
    assert URI_PASSWORD not in result.stdout + result.stderr and "pa/ss" not in line
    assert not (tmp_path / ".dvc").exists()


def test_a_bad_tracking_uri_beside_a_bundle_dir_stops_the_start(bundle_dir: Path, tmp_path: Path) -> None:
    """With BUNDLE_DIR nothing at start read MLFLOW_TRACKING_URI: the server came up and its loader died on it
    (503 "not loaded yet" forever). Now the settings refuse it before anything starts."""
    env = entrypoint_env(
        tmp_path,
        remote_url="s3://nowhere/x",
        BUNDLE_DIR=os.fspath(bundle_dir),
        MLFLOW_TRACKING_URI="http://mlflow:abc",
        PORT=str(free_port()),
    )
    result = run_entrypoint(env, timeout=30)
    assert result.returncode == 2
    assert "MLFLOW_TRACKING_URI:" in one_error_line(result)


URL_SECRET = "url-secret-never-written"


@pytest.mark.parametrize(
    ("remote_url", "endpoint"),
    [
        pytest.param("s3://nowhere/x", f"http://key:{URL_SECRET}@{LOOPBACK}:{{port}}", id="endpoint"),
        pytest.param(f"s3://key:{URL_SECRET}@nowhere/x", f"http://{LOOPBACK}:{{port}}", id="remote-url"),
    ],
)
def test_credentials_in_a_dvc_url_are_refused_never_written(remote_url: str, endpoint: str, tmp_path: Path) -> None:
    """They were written in clear to MODEL_DIR/.dvc/config (mode 0644) and kept in the server's environment."""
    env = entrypoint_env(
        tmp_path,
        remote_url=remote_url,
        endpoint_url=endpoint.format(port=free_port()),
        MODEL_HASH="0123456789abcdef0123456789abcdef.dir",
        PULL_DEADLINE_S="3",
    )
    result = run_entrypoint(env)
    configs = [path.read_text() for path in tmp_path.rglob("config*") if path.is_file()]
    assert not any(URL_SECRET in text for text in configs)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_error_line(result)
    assert "AWS_ACCESS_KEY_ID" in line and URL_SECRET not in result.stdout + result.stderr
    assert not (tmp_path / ".dvc").exists()


def test_s3_down_fails_within_the_deadline(published: tuple[PublishTarget, str], tmp_path: Path) -> None:
    target, dvc_hash = published
    deadline = 6.0
    env = entrypoint_env(
        tmp_path,
        remote_url=target.remote_url,
        endpoint_url=f"http://{LOOPBACK}:{free_port()}",
        MODEL_HASH=dvc_hash,
        PULL_DEADLINE_S=str(deadline),
        PULL_RETRIES="20",
        PULL_BACKOFF_S="0.5",
    )
    started = time.monotonic()
    result = run_entrypoint(env)
    elapsed = time.monotonic() - started
    assert result.returncode == 5
    line = one_error_line(result)
    assert "unreachable" in line and "DVC_REMOTE_ENDPOINT_URL" in line
    assert "attempts" in line or "PULL_DEADLINE_S" in line
    assert elapsed < deadline + 5  # the deadline, plus interpreter start-up
    assert not (tmp_path / "bundle").exists()


class LateProxy:
    """A TCP forwarder to the real S3 server that starts listening only when told: a store that is down at
    first and comes up on its port later."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        server = socket.create_server((LOOPBACK, self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with source, sink:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def late_proxy(s3: S3Server) -> Iterator[LateProxy]:
    proxy = LateProxy(s3.endpoint_url)
    yield proxy
    proxy.close()


def test_transient_s3_failure_is_retried_and_succeeds(
    bundle_dir: Path, published: tuple[PublishTarget, str], late_proxy: LateProxy, tmp_path: Path
) -> None:
    target, dvc_hash = published
    settings = Settings(
        model_dir=tmp_path,
        model_hash=dvc_hash,
        dvc_remote_url=target.remote_url,
        dvc_remote_endpoint_url=f"http://{LOOPBACK}:{late_proxy.port}",
        pull_retries=3,
        pull_backoff_s=0.5,
        pull_deadline_s=60,
    )
    reports: list[str] = []

    def report(line: str) -> None:
        reports.append(line)
        if len(reports) == 1:  # the first attempt failed: now the store comes up
            late_proxy.open()

    pulled = pull(settings, dvc_hash, report=report)
    assert pulled.attempts == 2 and pulled.fetched == objects_of(bundle_dir)
    assert "pull attempt 1 failed" in reports[0] and "unreachable" in reports[0]
    assert verify(pulled.bundle_dir, dvc_hash).content_hash


def test_wrong_credentials_fail_at_once_with_a_clear_line(
    published: tuple[PublishTarget, str], s3: S3Server, tmp_path: Path
) -> None:
    target, dvc_hash = published
    env = entrypoint_env(tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash)
    _moto_auth(s3, "0")  # from now on moto checks every request's credentials; ours are unknown to it
    try:
        started = time.monotonic()
        result = run_entrypoint(env)
    finally:
        _moto_auth(s3, "inf")
    assert result.returncode == 6
    line = one_error_line(result)
    assert "refused the credentials" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert time.monotonic() - started < 30  # not retried until the deadline
    written = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    assert not any(SECRET.encode() in data or S3_ENV["AWS_ACCESS_KEY_ID"].encode() in data for data in written)


def test_the_pull_runs_no_child_writes_no_secret_and_its_cache_is_private(
    bundle_dir: Path,
    published: tuple[PublishTarget, str],
    s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pull reads the S3 keys through botocore in this process: no child process (which once got the whole
    environment), no secret written under MODEL_DIR, and its cache private to its owner."""
    target, dvc_hash = published
    settings = Settings(
        model_dir=tmp_path / "models",
        model_hash=dvc_hash,
        dvc_remote_url=target.remote_url,
        dvc_remote_endpoint_url=s3.endpoint_url,
    )
    registry_secrets = {
        "MLFLOW_TRACKING_USERNAME": "reader",
        "MLFLOW_TRACKING_PASSWORD": "registry-password-not-for-the-store",
        "MLFLOW_TRACKING_TOKEN": "registry-token-not-for-the-store",
    }
    for name, value in registry_secrets.items():
        monkeypatch.setenv(name, value)
    children: list[Any] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        children.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    pulled = pull(settings, dvc_hash)
    assert (
        pulled.fetched == objects_of(bundle_dir) and verify(pulled.bundle_dir, dvc_hash).content_hash
    )  # keys reached it
    assert children == []
    work = settings.model_dir
    secrets = [SECRET, *registry_secrets.values()]
    assert not any(
        secret.encode() in path.read_bytes() for path in work.rglob("*") if path.is_file() for secret in secrets
    )
    assert stat.S_IMODE((work / ".dvc").stat().st_mode) == 0o700


def _moto_auth(s3: S3Server, free_requests: str) -> None:
    request = urllib.request.Request(
        f"{s3.endpoint_url}/moto-api/reset-auth",
        data=free_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=5).close()


def test_missing_blob_is_reported_as_missing(bundle_dir: Path, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    target = target_for(s3, bucket, "unused", "unused", prefix="missing")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    md5 = _model_blob_md5(s3, bucket, "missing", dvc_hash)
    s3.client().delete_object(Bucket=bucket, Key=blob_key("missing", md5))
    env = entrypoint_env(tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash)
    result = run_entrypoint(env)
    assert result.returncode == 7
    line = one_error_line(result)
    assert "missing from the remote" in line and md5 in line
    assert not (tmp_path / "bundle").exists()


def test_tampered_blob_is_refused(bundle_dir: Path, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    target = target_for(s3, bucket, "unused", "unused", prefix="tampered")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    md5 = _model_blob_md5(s3, bucket, "tampered", dvc_hash)
    key = blob_key("tampered", md5)
    client = s3.client()
    blob = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=blob[:-8] + b"tampered")  # same size, other bytes
    env = entrypoint_env(tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash)
    result = run_entrypoint(env)
    assert result.returncode == 8
    line = one_error_line(result)
    assert f"object {md5}" in line and "does not match its hash" in line and "retrying" not in result.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".dvc" / "cache").exists()


def test_a_listing_edited_into_another_valid_listing_is_a_mismatch(
    bundle_dir: Path, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """The bundle's listing replaced in the store by another well-formed listing (of objects that do not exist):
    the store's listing does not match its hash, which is a mismatch (8), not a missing object (7)."""
    target = target_for(s3, bucket, "unused", "unused", prefix="edited-listing")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    edited = json.dumps([{"md5": "0" * 32, "relpath": "model.skops"}]).encode()
    s3.client().put_object(Bucket=bucket, Key=blob_key("edited-listing", dvc_hash), Body=edited)
    env = entrypoint_env(
        tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash, PULL_BACKOFF_S="1"
    )
    result = run_entrypoint(env)
    line = one_error_line(result)
    assert result.returncode == 8, line
    assert f"listing {dvc_hash}" in line and "does not match its hash" in line, line
    assert f"copy at {target.remote_url}/files/md5/{dvc_hash[:2]}/{dvc_hash[2:]}: delete it" in line


def test_a_corrupt_listing_is_a_mismatch_at_once(bundle_dir: Path, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """The bundle's listing (its ``.dir`` object) overwritten with garbage in the store: nothing to retry."""
    target = target_for(s3, bucket, "unused", "unused", prefix="corrupt-listing")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    s3.client().put_object(Bucket=bucket, Key=blob_key("corrupt-listing", dvc_hash), Body=b"\x00not a listing\xff")
    env = entrypoint_env(
        tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash, PULL_BACKOFF_S="1"
    )
    started = time.monotonic()
    result = run_entrypoint(env)
    elapsed = time.monotonic() - started
    assert result.returncode == 8
    line = one_error_line(result)
    where = f"{target.remote_url}/files/md5/{dvc_hash[:2]}/{dvc_hash[2:]}"
    assert f"listing {dvc_hash}" in line and "corrupt" in line
    assert f"copy at {where}: delete it, then publish the bundle again" in line
    assert "retrying" not in result.stderr
    assert elapsed < 15  # five attempts would wait 1 + 2 + 4 + 8 s between them
    assert not (tmp_path / "bundle").exists() and not (tmp_path / ".dvc" / "cache").exists()
    # the hint repairs the store: publishing again over the corrupt copy fails on it; once deleted, it is uploaded
    key = blob_key("corrupt-listing", dvc_hash)
    with pytest.raises(PublishError, match=f"object {dvc_hash} is corrupted"):
        push_bundle(bundle_dir, target)
    s3.client().delete_object(Bucket=bucket, Key=key)
    assert push_bundle(bundle_dir, target)[0] == dvc_hash
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().startswith(b"[")


def test_a_deleted_listing_is_named_as_missing(bundle_dir: Path, s3: S3Server, bucket: str, tmp_path: Path) -> None:
    target = target_for(s3, bucket, "unused", "unused", prefix="deleted-listing")
    dvc_hash, _ = push_bundle(bundle_dir, target)
    s3.client().delete_object(Bucket=bucket, Key=blob_key("deleted-listing", dvc_hash))
    env = entrypoint_env(tmp_path, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash)
    result = run_entrypoint(env)
    assert result.returncode == 7
    line = one_error_line(result)
    assert "missing from the remote" in line and f"listing {dvc_hash}" in line
    assert f"{target.remote_url}/files/md5/{dvc_hash[:2]}/{dvc_hash[2:]}" in line
    assert "retrying" not in result.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(size)``: an empty tmpfs of ``size`` (``mount -t tmpfs``: root with CAP_SYS_ADMIN, as the suite
    runs in CI; elsewhere these tests fail saying so), unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"volume-{size}"
        path.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.fail("mounting a small tmpfs needs root (run the suite as root, as CI does)")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", os.fspath(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in mounted:
            subprocess.run(["umount", os.fspath(path)], check=True)


@pytest.mark.parametrize(
    "size",
    [
        # room for the listing, not for the next object: ENOSPC writing the first file into the cache
        pytest.param("4k", id="full-while-downloading-a-small-file"),
        pytest.param("512k", id="full-while-downloading-the-model"),  # ENOSPC: the bundle is about 1 MB
    ],
)
def test_a_full_model_dir_is_a_disk_failure_at_once(
    published: tuple[PublishTarget, str], s3: S3Server, small_volume: Callable[[str], Path], size: str
) -> None:
    target, dvc_hash = published
    model_dir = small_volume(size)
    env = entrypoint_env(
        model_dir, remote_url=target.remote_url, endpoint_url=s3.endpoint_url, MODEL_HASH=dvc_hash, PULL_BACKOFF_S="1"
    )
    started = time.monotonic()
    result = run_entrypoint(env)
    elapsed = time.monotonic() - started
    assert result.returncode == 10, result.stderr
    line = one_error_line(result)
    assert f"MODEL_DIR={model_dir}" in line and "out of space" in line and "free space" in line
    assert "DVC remote settings" not in line
    assert "retrying" not in result.stderr
    assert elapsed < 15  # five attempts would wait 1 + 2 + 4 + 8 s between them
    assert not (model_dir / "bundle").exists() and not (model_dir / ".dvc" / "cache").exists()


def _model_blob_md5(s3: S3Server, bucket: str, prefix: str, dvc_hash: str) -> str:
    import json

    listing = s3.client().get_object(Bucket=bucket, Key=blob_key(prefix, dvc_hash))["Body"].read()
    [entry] = [e for e in json.loads(listing) if e["relpath"] == "model.skops"]
    return str(entry["md5"])


@pytest.mark.parametrize(
    ("variables", "wanted"),
    [({"MODEL_ALIAS": "no-such-alias"}, "@no-such-alias"), ({"MODEL_VERSION": "99"}, "version 99")],
)
def test_alias_or_version_not_found(
    published: tuple[PublishTarget, str], tmp_path: Path, variables: dict[str, str], wanted: str
) -> None:
    target, _ = published
    env = entrypoint_env(
        tmp_path,
        remote_url=target.remote_url,
        MLFLOW_TRACKING_URI=target.tracking_uri,
        MODEL_NAME=target.model_name,
        **variables,
    )
    result = run_entrypoint(env)
    assert result.returncode == 4
    line = one_error_line(result)
    assert "not found in the MLflow registry" in line and wanted in line


def test_mlflow_unreachable_without_a_pin(published: tuple[PublishTarget, str], tmp_path: Path) -> None:
    target, _ = published
    env = entrypoint_env(
        tmp_path,
        remote_url=target.remote_url,
        MLFLOW_TRACKING_URI=f"http://{LOOPBACK}:{free_port()}",
        PULL_RETRIES="1",
        REGISTRY_TIMEOUT_S="2",
    )
    result = run_entrypoint(env)
    assert result.returncode == 3
    line = one_error_line(result)
    assert "MLflow registry unreachable" in line and "MODEL_HASH" in line


@contextmanager
def dripping_registry() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every request one byte every half second: each read is within
    any socket timeout, the answer never ends."""
    server = socket.create_server((LOOPBACK, 0))
    stopped = threading.Event()

    def drip(client: socket.socket) -> None:
        with client:
            try:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                while not stopped.wait(0.5):
                    client.sendall(b" ")
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{server.getsockname()[1]}"
    finally:
        stopped.set()
        server.close()


def test_a_registry_that_answers_one_byte_at_a_time_cannot_outlast_the_deadline(tmp_path: Path) -> None:
    with dripping_registry() as uri:
        env = entrypoint_env(
            tmp_path,
            remote_url="s3://unused/x",
            MLFLOW_TRACKING_URI=uri,
            REGISTRY_TIMEOUT_S="1",
            PULL_DEADLINE_S="3",
        )
        started = time.monotonic()
        result = run_entrypoint(env, timeout=60)
        elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert "did not answer" in one_error_line(result) and "PULL_DEADLINE_S" in one_error_line(result)
    assert elapsed < 15  # the deadline (3 s) plus start-up, not forever


# --- the server's address: checked before uvicorn, which exits 3 (the registry's code) when it cannot bind ---


def test_a_busy_port_is_its_own_failure(bundle_dir: Path, tmp_path: Path) -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        env = entrypoint_env(tmp_path, remote_url="s3://unused/x", BUNDLE_DIR=os.fspath(bundle_dir), PORT=str(port))
        result = run_entrypoint(env)
    assert result.returncode == 11, result.stderr[-2000:]
    line = one_error_line(result)
    assert f"PORT={port}" in line and "HOST=127.0.0.1" in line and "in use" in line


def test_a_host_that_is_no_address_here_is_its_own_failure(bundle_dir: Path, tmp_path: Path) -> None:
    env = entrypoint_env(
        tmp_path,
        remote_url="s3://unused/x",
        BUNDLE_DIR=os.fspath(bundle_dir),
        HOST="192.0.2.1",  # TEST-NET-1: never an address of this machine
        PORT=str(free_port()),
    )
    result = run_entrypoint(env)
    assert result.returncode == 11, result.stderr[-2000:]
    line = one_error_line(result)
    assert "HOST=192.0.2.1" in line and "assign" in line
