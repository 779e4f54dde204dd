"""Promotion without a restart: the running server follows its alias (real moto, ``mlflow server``, uvicorn).

Under steady load the alias moves: no request fails, every answer comes from the old or the new version, and
once the new one has answered, only the new one does. A tampered candidate is refused while the old version
keeps answering; a good one is then taken. Memory after three swaps stays near its level after the first load.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.contract.bundle import MODEL_FILE, load_bundle
from app.contract.hashing import file_digest
from app.contract.registry import TAG_CONTENT_HASH, TAG_DVC_HASH, mlflow_client
from app.contract.store import DVC_HASH
from orchestration.publish import Published, PublishTarget, publish_bundle
from tests.harness.services import LOOPBACK, S3Server, blob_key, free_port, running, s3_keys_in_file
from tests.harness.serving import other_shape_bundle, records
from tests.integration.conftest import champion_and_challenger, entrypoint_env, fresh_target, serving

REFRESH_S = 1.0


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "refresh")


@pytest.fixture(scope="module")
def versions(bundle_dir: Path, second_bundle_dir: Path, target: PublishTarget) -> tuple[Published, Published]:
    return champion_and_challenger(bundle_dir, second_bundle_dir, target)


def refreshing_env(target: PublishTarget, model_dir: Path, port: int, **variables: str) -> dict[str, str]:
    env = entrypoint_env(
        model_dir,
        remote_url=target.remote_url,
        endpoint_url=target.endpoint_url,
        MLFLOW_TRACKING_URI=target.tracking_uri,
        MODEL_NAME=target.model_name,
        PORT=str(port),
        MODEL_REFRESH_S=str(REFRESH_S),
        **variables,
    )
    # the S3 keys as a mounted file: the only way the running server's pulls can reach them
    return env | s3_keys_in_file(model_dir.parent / "s3-credentials")


def move_alias(target: PublishTarget, version: int) -> float:
    mlflow_client(target.tracking_uri).set_registered_model_alias(target.model_name, "champion", str(version))
    return time.monotonic()


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1)) / 1024


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    status: int
    version: int | None


class SteadyLoad:
    """Two clients posting single records back to back (a bounded, steady load), each answer recorded."""

    def __init__(self, port: int, record: dict[str, Any]) -> None:
        self.port, self.body = port, json.dumps(record).encode()
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(2)]

    def _client(self) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                connection.request("POST", "/predict", self.body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = json.loads(response.read())
                status, version = response.status, body.get("model_version")
            except (OSError, http.client.HTTPException, ValueError):
                status, version = 0, None
                connection.close()
                connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
            self.answers.append(Answer(started, time.monotonic(), status, version))
            time.sleep(0.005)
        connection.close()

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def first_from(self, version: int) -> Answer | None:
        return min((a for a in self.answers if a.version == version), key=lambda a: a.ended, default=None)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


@pytest.fixture
def server(target: PublishTarget, versions: tuple[Published, Published], tmp_path: Path) -> Iterator[Server]:
    move_alias(target, versions[0].version)
    port = free_port()
    (tmp_path / "models").mkdir()
    log = tmp_path / "server.log"
    with serving(refreshing_env(target, tmp_path / "models", port), log) as process:
        yield Server(port, process.pid, log, tmp_path / "models")


@dataclass(frozen=True)
class Server:
    port: int
    pid: int
    log: Path
    model_dir: Path

    def version(self) -> int | None:
        answer: int | None = get(self.port, "/health/ready")["model_version"]
        return answer


def test_the_alias_moves_under_load_with_no_failed_request_and_refuses_a_tampered_candidate(
    server: Server,
    target: PublishTarget,
    versions: tuple[Published, Published],
    s3: S3Server,
    bundle_dir: Path,
    second_bundle_dir: Path,
) -> None:
    one, two = versions
    record = records(load_bundle(bundle_dir).metadata, 1, seed=8)[0]
    assert server.version() == one.version
    with SteadyLoad(server.port, record):  # warm up: the first model's RSS once it has served
        time.sleep(1.0)
    first_load_mb = rss_mb(server.pid)

    # 1. promotion under load
    with SteadyLoad(server.port, record) as load:
        time.sleep(1.0)
        moved = move_alias(target, two.version)
        wait_for(lambda: load.first_from(two.version) is not None, 60, "an answer from the new version")
        time.sleep(1.0)
    answers, switched = load.answers, load.first_from(two.version)
    assert switched is not None and len(answers) > 100
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    assert {a.version for a in answers} == {one.version, two.version}
    assert all(a.version == two.version for a in answers if a.started > switched.ended)  # once new, only new
    swap = re.search(
        r"swapped in version 2 \(bundle \w+\) ([\d.]+)s after the alias check began", server.log.read_text()
    )
    assert swap is not None, server.log.read_text()[-3000:]
    took = switched.ended - moved
    # within one refresh interval plus the delivery (pull, load, warm) the server itself measured
    assert took <= REFRESH_S + float(swap.group(1)) + 0.5, (took, swap.group(1))
    print(f"alias move -> first answer from version 2: {took:.2f}s (delivery {swap.group(1)}s)")

    # 2. the alias moves back: a rollback is a swap like any other
    move_alias(target, one.version)
    wait_for(lambda: server.version() == one.version, 60, "the rollback")

    # 3. a tampered candidate is refused, the old version keeps answering, and /model says why
    bucket, prefix = target.remote_url.removeprefix("s3://").split("/", 1)
    key = blob_key(prefix, file_digest(second_bundle_dir / MODEL_FILE, "md5"))
    client = s3.client()
    original = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=b"not the model that was published")
    try:
        move_alias(target, two.version)

        def refused() -> bool:
            candidate = get(server.port, "/model")["candidate"]
            return candidate is not None and candidate["status"] == "refused"

        wait_for(refused, 60, "the refusal of the tampered candidate")
        candidate = get(server.port, "/model")["candidate"]
        assert candidate["model_version"] == two.version and candidate["reason"], candidate
        assert get(server.port, "/health/ready")["candidate"]["status"] == "refused"
        assert server.version() == one.version
        with SteadyLoad(server.port, record) as load:
            time.sleep(0.5)
        assert {(a.status, a.version) for a in load.answers} == {(200, one.version)}
        with urllib.request.urlopen(f"http://{LOOPBACK}:{server.port}/metrics", timeout=10) as response:
            assert re.search(rb"model_candidates_refused_total\{reason=\"\w+\"\} [1-9]", response.read())
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=original)

    # 4. the store is whole again: the next check takes the candidate (the third swap)
    wait_for(lambda: server.version() == two.version, 60, "the good candidate")
    assert get(server.port, "/model")["candidate"] is None
    wait_for(
        lambda: "removed the retired bundle's files" in server.log.read_text().split("swapped in")[-1], 30, "retire"
    )
    with SteadyLoad(server.port, record):
        time.sleep(1.0)
    after_swaps_mb = rss_mb(server.pid)
    print(f"RSS after the first load {first_load_mb:.0f} MB, after three swaps {after_swaps_mb:.0f} MB")
    assert after_swaps_mb <= 1.2 * first_load_mb
    # only the bundle being served is left in MODEL_DIR
    assert not (server.model_dir / "bundle").exists()
    assert [p.name for p in (server.model_dir / "refresh").iterdir()] == [two.dvc_hash.removesuffix(".dir")]
    assert DVC_HASH.match(two.dvc_hash)


def test_two_workers_on_one_model_dir_pull_once_and_both_serve_the_new_version(
    target: PublishTarget, versions: tuple[Published, Published], bundle_dir: Path, tmp_path: Path
) -> None:
    one, two = versions
    move_alias(target, one.version)
    port, log = free_port(), tmp_path / "server.log"
    (tmp_path / "models").mkdir()
    env = refreshing_env(target, tmp_path / "models", port, WORKERS="2")
    record = records(load_bundle(bundle_dir).metadata, 1, seed=9)[0]
    with serving(env, log):
        time.sleep(2)  # both workers up
        move_alias(target, two.version)

        def every_worker_swapped() -> bool:
            return log.read_text().count("swapped in version 2") == 2

        wait_for(every_worker_swapped, 90, "both workers' swaps")
        body = json.dumps(record).encode()
        for _ in range(40):  # a new connection each: both workers answer
            request = urllib.request.Request(
                f"http://{LOOPBACK}:{port}/predict", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["model_version"] == two.version
    output = log.read_text()
    # one pull into the candidate's directory; the other worker waited its turn and found the verified copy
    assert output.count("entrypoint: pull done") == 1
    assert output.count("candidate version 2: pull done") == 1
    assert output.count("candidate version 2: verify done") == 2 and output.count("nothing to pull") == 1


def test_candidates_its_clients_cannot_use_are_refused_once_and_another_schema_served_only_when_allowed(
    target: PublishTarget, versions: tuple[Published, Published], bundle_dir: Path, tmp_path: Path
) -> None:
    """The alias moves to a bundle of another model (other features, another target): refused with the changes
    named, in /model, /health/ready and the metric, and not pulled again at later checks. Then to a version whose
    content-hash tag names the served bundle but whose DVC hash tag names another: refused, not taken as a new
    label for the served bundle (a fresh start would serve the other bundle under it). A server with
    ALLOW_SCHEMA_CHANGE=true swaps the other model in."""
    one, two = versions
    (tmp_path / "fares").mkdir()
    fares = publish_bundle(other_shape_bundle(tmp_path / "fares"), target, alias=None)
    client = mlflow_client(target.tracking_uri)
    registered = client.get_model_version(target.model_name, str(one.version))
    tags = {TAG_CONTENT_HASH: load_bundle(bundle_dir).content_hash, TAG_DVC_HASH: two.dvc_hash}
    mixed = int(client.create_model_version(target.model_name, registered.source, registered.run_id, tags).version)

    def server_on(name: str, allowed: bool) -> tuple[dict[str, str], AbstractContextManager[Any], Server]:
        port, model_dir = free_port(), tmp_path / name
        model_dir.mkdir()
        env = refreshing_env(target, model_dir, port, ALLOW_SCHEMA_CHANGE=str(allowed).lower())
        return env, serving(env, tmp_path / f"{name}.log"), Server(port, 0, tmp_path / f"{name}.log", model_dir)

    move_alias(target, one.version)
    _, refusing, server = server_on("refusing", allowed=False)
    with refusing:
        assert server.version() == one.version
        move_alias(target, fares.version)
        try:
            wait_for(lambda: (get(server.port, "/model")["candidate"] or {}).get("status") == "refused", 60, "refusal")
            time.sleep(5 * REFRESH_S)  # later checks: the alias still points at the refused candidate
            candidate = get(server.port, "/health/ready")["candidate"]
            assert server.version() == one.version
            with urllib.request.urlopen(f"http://{LOOPBACK}:{server.port}/metrics", timeout=10) as response:
                metrics = response.read()
            move_alias(target, mixed)
            wait_for(lambda: (get(server.port, "/model")["candidate"] or {}).get("model_version") == mixed, 60, "it")
            wait_for(lambda: get(server.port, "/model")["candidate"]["status"] == "refused", 60, "the tags' refusal")
            mixed_candidate = get(server.port, "/model")["candidate"]
            assert server.version() == one.version
        finally:
            move_alias(target, one.version)
    assert "tags disagree" in mixed_candidate["reason"], mixed_candidate
    assert candidate["model_version"] == fares.version, candidate
    assert "ALLOW_SCHEMA_CHANGE" in candidate["reason"] and "it predicts 'fare', not 'price'" in candidate["reason"]
    assert "features removed: time, distance" in candidate["reason"], candidate["reason"]
    assert re.search(rb'model_candidates_refused_total\{reason="schema"\} 1\.0', metrics), metrics[-2000:]
    assert server.log.read_text().count(f"alias moved to version {fares.version}") == 1  # pulled once only

    _, allowing, server = server_on("allowing", allowed=True)
    with allowing:
        assert server.version() == one.version
        move_alias(target, fares.version)
        try:
            wait_for(lambda: server.version() == fares.version, 60, "the swap to another schema")
        finally:
            move_alias(target, one.version)


def test_a_worker_whose_start_up_bundle_was_retired_serves_the_alias_at_once(
    target: PublishTarget, versions: tuple[Published, Published], tmp_path: Path
) -> None:
    """A worker restarted after a swap starts on the BUNDLE_DIR its parent was given, whose files the swap
    removed: it follows the alias within seconds, not one MODEL_REFRESH_S later."""
    _, two = versions
    move_alias(target, two.version)
    port, model_dir, log = free_port(), tmp_path / "models", tmp_path / "server.log"
    model_dir.mkdir()
    env = refreshing_env(target, model_dir, port, BUNDLE_DIR=str(model_dir / "bundle")) | {"MODEL_REFRESH_S": "600"}
    began = time.monotonic()
    with running([sys.executable, "-m", "app.entrypoint", "serve"], f"http://{LOOPBACK}:{port}/health/ready",
                 env=env, timeout=60, log=log):  # fmt: skip
        ready_after = time.monotonic() - began
        assert get(port, "/health/ready")["model_version"] == two.version
    assert ready_after < 30, ready_after
    assert "swapped in version" in log.read_text()
