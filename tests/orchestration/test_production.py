"""The training DAG in Airflow 3's production shape (tests/harness/airflow_stack.py): separate api-server,
scheduler, dag-processor and triggerer on postgres, triggered and watched through the REST API as a user would,
with the registry behind basic auth and the DVC remote on S3; then under CeleryExecutor with two workers that
share no directory.

The compose file itself runs in tests/containers/test_compose_stack.py, which checks a first run there
(registration, promotion, blobs, clean task logs, the figures). This module keeps what that cannot show: the
components as host processes bind only loopback; an S3 outage during ``publish`` (a proxy between the tasks and
the store that the test switches off and on mid-run, which a container stack offers no hook for); and
CeleryExecutor with two workers on no shared disk (compose's ``celery`` profile would also run redis, and its
``flower`` profile flower: minutes more on two cores for the same check).

The runs, in order (each test needs the ones before it; the stack is started once per session):

1. a first model on a small generated data set, with S3 down once ``gate`` has succeeded and up again once
   ``publish`` waits for its retry: the retry registers version 1, the first attempt published nothing;
2. CeleryExecutor, the same params: the tasks ran on both workers, and no second version is registered.

    PRODUCTION_DAG_FIGURES=/tmp/figures.json python3 -m uv run --frozen pytest -s tests/orchestration/test_production.py
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from app.contract.registry import TAG_DVC_HASH, RegistryAccess, RestRegistry
from tests.harness.airflow_stack import (
    BUCKET,
    DAG_ID,
    TASKS,
    AirflowClient,
    AirflowStack,
    Run,
    parse_time,
    redact,
)
from tests.harness.services import LOOPBACK, blob_key

# Each test may wait for a whole DAG run (minutes: 4-23 s per task on 2 cores) on top of the stack's start-up.
pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.timeout(1200)]

CONF: Final = {"rows": 3000}
RUN_TIMEOUT_S: Final = 600
FIGURES_ENV: Final = "PRODUCTION_DAG_FIGURES"


def _client(stack: AirflowStack) -> AirflowClient:
    assert stack.client is not None
    return stack.client


def _diagnose(stack: AirflowStack, run_id: str | None = None) -> str:
    """Task states, the failed tasks' logs (through the API) and the components' log tails, redacted."""
    parts = []
    client = _client(stack)
    if run_id is not None:
        try:
            tis = client.task_instances(DAG_ID, run_id)
            parts.append("tasks: " + json.dumps({t["task_id"]: [t["state"], t["try_number"]] for t in tis}))
            for ti in tis:
                if ti["state"] in {"failed", "up_for_retry"} and ti["try_number"]:
                    log = _task_log(stack, run_id, ti["task_id"], ti["try_number"])
                    parts.append(f"--- task log {ti['task_id']} ---\n" + "\n".join(log.splitlines()[-40:]))
        except (RuntimeError, httpx.HTTPError) as exc:
            parts.append(f"(task states unavailable: {exc})")
    parts.append(stack.logs(["scheduler", "dag-processor", "api-server", *stack.workers], lines=40))
    return redact("\n".join(parts), stack.hidden())


def _task_log(stack: AirflowStack, run_id: str, task_id: str, try_number: int) -> str:
    """A task's log: through the API under LocalExecutor (the API server reads the log folder it shares with the
    scheduler); from the workers' own folders under Celery, where the API server would ask the worker's log
    server at the task's hostname (turned off here, and ``worker-a`` resolves nowhere: no look-up is made)."""
    if not stack.workers:
        return _client(stack).task_log(DAG_ID, run_id, task_id, try_number)
    found = [
        path.read_text(errors="replace")
        for worker in stack.workers
        for path in (stack.root / worker / "logs").glob(
            f"dag_id={DAG_ID}/run_id=*/task_id={task_id}/attempt={try_number}.log"
        )
        if f"run_id={run_id}" in str(path)
    ]
    return "\n".join(found) or f"(no log of {task_id} try {try_number} in the workers' folders)"


def _trigger_and_wait(stack: AirflowStack, conf: dict[str, Any], on_poll: Any = None) -> Run:
    client = _client(stack)
    stack.check_alive()
    client.wait_for_dag(DAG_ID)
    assert client.set_paused(DAG_ID, False)["is_paused"] is False
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, conf)
    print(f"triggered {run_id} with {conf} ({stack.executor})", flush=True)
    try:
        run = client.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S, on_poll=on_poll)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{_diagnose(stack, run_id)}")
    seconds = time.monotonic() - started
    tis = {ti["task_id"]: ti for ti in client.task_instances(DAG_ID, run_id)}
    return Run(run_id, str(run["state"]), seconds, tis)


def _assert_succeeded(stack: AirflowStack, run: Run) -> None:
    assert run.state == "success", _diagnose(stack, run.run_id)
    assert set(run.task_instances) == set(TASKS)
    assert set(run.states().values()) == {"success"}, _diagnose(stack, run.run_id)


def _registry(stack: AirflowStack) -> RestRegistry:
    admin = stack.secrets.mlflow_admin
    return RestRegistry(stack.mlflow_uri, timeout=30, access=RegistryAccess(admin.username, admin.password))


def _version_count(stack: AirflowStack) -> int:
    admin = stack.secrets.mlflow_admin
    try:
        answer = httpx.get(
            f"{stack.mlflow_uri}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name = '{stack.model_name}'"},
            auth=(admin.username, admin.password),
            timeout=30,
            trust_env=False,
        )
    except httpx.HTTPError as exc:  # raised anew: the request's frames hold the password
        raise RuntimeError(f"searching model versions failed: {type(exc).__name__}") from None
    assert answer.status_code == 200, answer.text[:2000]
    return len(answer.json().get("model_versions", []))


def _bucket_keys(stack: AirflowStack) -> set[str]:
    pages = stack.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{stack.model_name}/")
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture(scope="module")
def local_stack(airflow_stack: AirflowStack) -> AirflowStack:
    airflow_stack.use_local()
    return airflow_stack


def test_every_listening_socket_is_on_loopback(local_stack: AirflowStack) -> None:
    listening = local_stack.listening()
    print("listening:", *(f"{address} {owner}" for address, owner in listening), sep="\n  ")
    addresses = {address for address, _ in listening}
    assert f"{LOOPBACK}:{local_stack.endpoints.api_port}" in addresses  # the api-server (so ss saw the stack)
    assert local_stack.health_url.split("/")[2] in addresses  # the scheduler's health server
    assert all(address.startswith(f"{LOOPBACK}:") for address in addresses), listening


@dataclass(frozen=True)
class OutageRun:
    """The first run, with S3 down for publish's first attempt."""

    run: Run
    switches: list[str]  # "off", "on": what the poller did, in order
    refused: int  # connections the proxy reset while S3 was down
    versions_before: int


@pytest.fixture(scope="module")
def outage_run(local_stack: AirflowStack) -> OutageRun:
    """S3 goes down once ``gate`` has succeeded, and up again once ``publish`` waits for its retry (10 s)."""
    stack = local_stack
    versions_before = _version_count(stack)
    switches: list[str] = []
    refused_before = stack.proxy.refused

    def s3_outage(states: dict[str, str | None]) -> None:
        if not switches and states.get("gate") == "success":
            stack.proxy.switch(False)
            switches.append("off")
            print("  S3 proxy off", flush=True)
        elif switches == ["off"] and states.get("publish") == "up_for_retry":
            stack.proxy.switch(True)
            switches.append("on")
            print("  S3 proxy on", flush=True)

    try:
        run = _trigger_and_wait(stack, CONF, on_poll=s3_outage)
    finally:
        stack.proxy.switch(True)
    return OutageRun(run, switches, stack.proxy.refused - refused_before, versions_before)


def test_publish_retries_when_s3_is_down_for_its_first_attempt(
    local_stack: AirflowStack, outage_run: OutageRun
) -> None:
    stack, run = local_stack, outage_run.run
    assert outage_run.switches == ["off", "on"], f"{outage_run.switches}\n{_diagnose(stack, run.run_id)}"
    assert outage_run.refused > 0  # publish's first attempt did reach the (down) store
    _assert_succeeded(stack, run)
    assert run.task_instances["publish"]["try_number"] == 2
    assert run.task_instances["gate"]["try_number"] == 1
    first_attempt = _client(stack).task_log(DAG_ID, run.run_id, "publish", 1)
    assert first_attempt.strip()
    assert f"publish: {stack.model_name} version" not in first_attempt  # the first attempt published nothing
    published = _client(stack).xcom(DAG_ID, run.run_id, "publish")
    assert outage_run.versions_before == 0
    assert published["version"] == 1 and published["created"] is True, published
    champion = _registry(stack).version_by_alias(stack.model_name, "champion")
    assert champion.version == 1 and champion.tags[TAG_DVC_HASH] == published["dvc_hash"]
    listing_key = blob_key(stack.model_name, published["dvc_hash"])
    assert listing_key in _bucket_keys(stack)  # the retry pushed the bundle


def _figures(executor: str, conf: dict[str, Any], run: Run) -> dict[str, Any]:
    """Trigger to success, and each task's queue-to-start latency and run time; printed, and added under
    ``executor`` to the JSON file ``$PRODUCTION_DAG_FIGURES`` names, if set."""
    latency = {
        task_id: (parse_time(ti["start_date"]) - parse_time(ti["queued_when"])).total_seconds()
        for task_id, ti in run.task_instances.items()
    }
    duration = {
        task_id: (parse_time(ti["end_date"]) - parse_time(ti["start_date"])).total_seconds()
        for task_id, ti in run.task_instances.items()
    }
    figures = {
        "conf": conf,
        "trigger_to_success_s": round(run.seconds, 2),
        "queue_to_start_s": {t: round(latency[t], 2) for t in TASKS},
        "task_duration_s": {t: round(duration[t], 2) for t in TASKS},
    }
    print(f"\nfull DAG ({executor}), trigger to success: {run.seconds:.1f} s")
    for task_id in TASKS:
        print(f"  {task_id:16} queued->started {latency[task_id]:5.2f} s, ran {duration[task_id]:6.2f} s")
    if path := os.environ.get(FIGURES_ENV):
        recorded = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        Path(path).write_text(json.dumps({**recorded, executor: figures}, indent=2) + "\n")
    assert all(value >= 0 for value in latency.values())
    assert sum(duration.values()) < run.seconds  # a linear DAG: the tasks ran one after another
    return figures


def test_celery_workers_share_a_run_that_registers_no_new_version(
    airflow_stack: AirflowStack, outage_run: OutageRun
) -> None:
    """The first run's params again, under CeleryExecutor: both workers ran tasks, and the bundle is the one
    already registered, so publish registers nothing new."""
    stack = airflow_stack
    _assert_succeeded(stack, outage_run.run)
    stack.use_celery()
    listening = stack.listening()
    assert all(address.startswith(f"{LOOPBACK}:") for address, _ in listening), listening
    run = _trigger_and_wait(stack, CONF)
    hosts = {task_id: ti["hostname"] for task_id, ti in run.task_instances.items()}
    for task_id in TASKS:
        print(f"  {task_id:16} ran on {hosts.get(task_id)}")
    _assert_succeeded(stack, run)
    assert set(hosts.values()) == {"worker-a", "worker-b"}, hosts
    published = _client(stack).xcom(DAG_ID, run.run_id, "publish")
    assert _version_count(stack) == 1, published
    assert published["version"] == 1 and published["created"] is False, published
    _figures("CeleryExecutor", CONF, run)
