"""The entrypoint as the container runs it: a real subprocess that resolves, pulls, verifies and becomes the
server (uvicorn), against the session's moto S3 server and ``mlflow server``."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from app.contract.bundle import Bundle, load_bundle
from app.contract.connection import DEFAULT_ALIAS, S3_CREDENTIAL_VARIABLES
from app.contract.registry import mlflow_client
from orchestration.publish import Published, PublishTarget
from tests.harness.services import LOOPBACK, S3Server, free_port, s3_keys_in_file, stop, wait_http
from tests.harness.serving import records
from tests.integration.conftest import SECRET, champion_and_challenger, entrypoint_env, fresh_target, serving


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "entrypoint")


@pytest.fixture(scope="module")
def versions(bundle_dir: Path, second_bundle_dir: Path, target: PublishTarget) -> tuple[Published, Published]:
    return champion_and_challenger(bundle_dir, second_bundle_dir, target)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MODEL_DIR for the module's starts, as a container restarted on the same volume would have."""
    return tmp_path_factory.mktemp("models")


def post(port: int, path: str, body: Any, timeout: float = 60) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def pinned_env(target: PublishTarget, model_dir: Path, dvc_hash: str, port: int, **variables: str) -> dict[str, str]:
    """The entrypoint's environment for a MODEL_HASH pin on ``target``'s remote, serving on ``port``."""
    return entrypoint_env(
        model_dir,
        remote_url=target.remote_url,
        endpoint_url=target.endpoint_url,
        MODEL_HASH=dvc_hash,
        PORT=str(port),
        **variables,
    )


def assert_serves(port: int, bundle: Bundle, version: int | None) -> None:
    """Batch predictions over the server equal the bundle's own, and the response names the bundle."""
    batch = records(bundle.metadata, 200, seed=3)
    answer = post(port, "/predict/batch", {"records": batch})
    expected = bundle.predict({name: [r[name] for r in batch] for name in bundle.metadata.feature_names()})
    assert answer["predictions"] == pytest.approx(list(expected), rel=1e-9)
    assert answer["bundle_hash"] == bundle.content_hash and answer["model_version"] == version


def test_alias_is_resolved_pulled_verified_and_served(
    versions: tuple[Published, Published], target: PublishTarget, model_dir: Path, bundle_dir: Path, tmp_path: Path
) -> None:
    champion, _ = versions
    port = free_port()
    env = entrypoint_env(
        model_dir,
        remote_url=target.remote_url,
        endpoint_url=target.endpoint_url,
        MLFLOW_TRACKING_URI=target.tracking_uri,
        MODEL_NAME=target.model_name,
        PORT=str(port),
    )
    log = tmp_path / "server.log"
    with serving(env, log) as server:
        assert_serves(port, load_bundle(bundle_dir), champion.version)
        # The S3 credentials served the pull; the long-running server (the same PID, exec'd) never holds them.
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "BUNDLE_DIR" in names and not names & set(S3_CREDENTIAL_VARIABLES)
        assert SECRET.encode() not in b"\0".join(environ)
        # its alias refresh could never pull without them (no credentials file, no web identity): it is off
        assert b"MODEL_REFRESH_S=0" in environ
    output = log.read_text()
    assert "entrypoint: refresh: off: the S3 keys in AWS_* are dropped" in output
    for step in ("resolve done", "pull done", "verify done", "serve: exec uvicorn"):
        assert f"entrypoint: {step}" in output
    assert f"{target.model_name}@champion -> version {champion.version}" in output
    assert SECRET not in output


def test_s3_credentials_from_a_mounted_file_never_enter_the_servers_environment(
    versions: tuple[Published, Published], target: PublishTarget, bundle_dir: Path, tmp_path: Path
) -> None:
    """The narrow path for credentials: a file (a mounted secret) that only the pull's S3 client reads.

    The environment names the file, not the keys; the server process holds the path and never the secret.
    A later pull by the running server (a live alias refresh) reads the same file again (botocore, in-process).
    """
    champion, _ = versions
    credentials = tmp_path / "secrets" / "s3-credentials"
    credentials.parent.mkdir()
    port = free_port()
    env = pinned_env(target, tmp_path / "models", champion.dvc_hash, port)
    # no key in the environment (empty counts as unset for the S3 client): only the file's path
    env |= s3_keys_in_file(credentials)
    log = tmp_path / "server.log"
    with serving(env, log) as server:
        assert_serves(port, load_bundle(bundle_dir), None)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
        assert SECRET.encode() not in environ and os.fspath(credentials).encode() in environ
    assert "pull done" in log.read_text() and SECRET not in log.read_text()
    assert "serve: uvicorn in this process (no S3 keys to drop)" in log.read_text()  # no exec needed


def test_moving_the_alias_changes_what_a_fresh_start_serves(
    versions: tuple[Published, Published],
    target: PublishTarget,
    model_dir: Path,
    second_bundle_dir: Path,
    tmp_path: Path,
) -> None:
    _, challenger = versions
    mlflow_client(target.tracking_uri).set_registered_model_alias(
        target.model_name, DEFAULT_ALIAS, str(challenger.version)
    )  # promotion: no rebuild, no new image, only the alias moves
    port = free_port()
    env = entrypoint_env(
        model_dir,  # the previous bundle is still checked out here: it must be replaced, not reused
        remote_url=target.remote_url,
        endpoint_url=target.endpoint_url,
        MLFLOW_TRACKING_URI=target.tracking_uri,
        MODEL_NAME=target.model_name,
        PORT=str(port),
    )
    log = tmp_path / "server.log"
    with serving(env, log):
        assert_serves(port, load_bundle(second_bundle_dir), challenger.version)
    assert f"-> version {challenger.version}, bundle {challenger.dvc_hash}" in log.read_text()


def test_pinned_hash_serves_with_mlflow_down_and_sigterm_drains_in_flight_requests(
    versions: tuple[Published, Published], target: PublishTarget, bundle_dir: Path, tmp_path: Path
) -> None:
    champion, _ = versions
    port = free_port()
    nowhere = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    env = pinned_env(target, tmp_path / "models", champion.dvc_hash, port, MLFLOW_TRACKING_URI=nowhere)
    bundle = load_bundle(bundle_dir)
    log = tmp_path / "server.log"
    with serving(env, log) as process:
        assert_serves(port, bundle, None)
        body = json.dumps({"records": records(bundle.metadata, 1000, seed=9)}).encode()
        requests = 16
        half_sent = threading.Semaphore(0)
        signalled = threading.Event()
        answers: list[int] = []
        failures: list[BaseException] = []

        def call() -> None:
            # A request the server has started (headers and half the body read) when SIGTERM arrives.
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
            try:
                connection.putrequest("POST", "/predict/batch")
                connection.putheader("Content-Type", "application/json")
                connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body[: len(body) // 2])
                half_sent.release()
                signalled.wait(30)
                connection.send(body[len(body) // 2 :])
                response = connection.getresponse()
                assert response.status == 200
                answers.append(len(json.loads(response.read())["predictions"]))
            except BaseException as exc:  # collected: the assertion below names it
                failures.append(exc)
                half_sent.release()
            finally:
                connection.close()

        threads = [threading.Thread(target=call) for _ in range(requests)]
        for thread in threads:
            thread.start()
        for _ in range(requests):
            assert half_sent.acquire(timeout=30)
        time.sleep(0.5)  # the server reads every request's headers and starts on its body
        os.kill(process.pid, signal.SIGTERM)  # the pid is uvicorn's own: the entrypoint exec'd into it
        time.sleep(0.5)  # the server is shutting down (no new connections) while these are in flight
        assert process.poll() is None
        signalled.set()
        for thread in threads:
            thread.join(60)
        assert process.wait(30) == 0
    assert not failures, failures
    assert answers == [1000] * requests  # every request in flight at SIGTERM was answered in full
    with pytest.raises(urllib.error.URLError):  # and the server is gone
        urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health/live", timeout=2)
    output = log.read_text()
    assert "MODEL_HASH pin (registry not consulted)" in output and SECRET not in output


@pytest.mark.parametrize("keys", ["environment", "file"])
def test_the_sigterm_drain_is_bounded_by_drain_timeout(
    versions: tuple[Published, Published], target: PublishTarget, tmp_path: Path, keys: str
) -> None:
    """A client that sends half its body and stops holds shutdown for DRAIN_TIMEOUT_S at most, then it exits 0:
    whether the entrypoint exec'd a fresh interpreter (S3 keys in its environment to drop) or ran the server in
    its own (the keys in a mounted file)."""
    champion, _ = versions
    port = free_port()
    env = pinned_env(target, tmp_path / "models", champion.dvc_hash, port, DRAIN_TIMEOUT_S="2")
    if keys == "file":
        env |= s3_keys_in_file(tmp_path / "s3-credentials")
    log = tmp_path / "server.log"
    with serving(env, log) as process:
        stalled = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        stalled.putrequest("POST", "/predict/batch")
        stalled.putheader("Content-Type", "application/json")
        stalled.putheader("Content-Length", "100000")
        stalled.endheaders(b'{"records": [')  # and never the rest
        time.sleep(0.5)  # the server has the request and waits for its body
        os.kill(process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(1.0)
        assert process.poll() is None  # still draining: the request is in flight
        assert process.wait(30) == 0
        assert 1.5 < time.monotonic() - signalled < 10  # the bound, not the client, ended it
        stalled.close()
    how = "exec uvicorn" if keys == "environment" else "uvicorn in this process (no S3 keys to drop)"
    assert f"entrypoint: serve: {how}" in log.read_text()


def test_two_starts_on_one_model_dir_take_turns_and_both_serve(
    versions: tuple[Published, Published], target: PublishTarget, bundle_dir: Path, tmp_path: Path
) -> None:
    """Two containers sharing MODEL_DIR (a shared volume, a restart racing a stop) start at the same moment."""
    champion, _ = versions
    model_dir, ports = tmp_path / "shared-models", (free_port(), free_port())
    envs = [pinned_env(target, model_dir, champion.dvc_hash, port) for port in ports]
    first_log = tmp_path / "first.log"
    with first_log.open("wb") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "app.entrypoint"],
            env={**os.environ, **envs[0]},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with serving(envs[1], tmp_path / "second.log"):
                wait_http(f"http://{LOOPBACK}:{ports[0]}/health/ready", 120, first)
                for port in ports:
                    assert_serves(port, load_bundle(bundle_dir), None)
        finally:
            stop(first)
    logs = first_log.read_text() + (tmp_path / "second.log").read_text()
    assert "waiting for another start that is delivering into" in logs  # they took turns
    assert "entrypoint: error" not in logs
