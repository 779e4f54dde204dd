"""The training DAG under Airflow itself: DagBag integrity, and full runs with ``dag.test()`` against a moto S3
server and a real ``mlflow server``.

Airflow reads its configuration when it is first imported, so it runs in subprocesses
(``tests/harness/airflow_process.py``) with their own ``AIRFLOW_HOME`` and sqlite metadata DB, migrated
once for this module; the test process never imports Airflow. The four DAG runs share one subprocess, in
order (first model, rerun of the same run, a worse model, invalid data), because each Airflow process
spends ~15 s starting up before its first task.
"""

from __future__ import annotations

import graphlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from app.contract.registry import TAG_DVC_HASH, RestRegistry
from orchestration.data import generate, write_csv
from orchestration.gate import CANDIDATE_METRIC, CHAMPION_METRIC, PROMOTED_TAG, REASON_TAG
from orchestration.tasks import training_config
from orchestration.work_area import WORK_URL_ENV
from tests.harness.airflow_process import DAG_ID, DAGS, RESULT
from tests.harness.services import BIN, S3_ENV, S3Server, blob_key

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

REPO: Final = Path(__file__).resolve().parents[2]
ROWS: Final = 20_000
TASKS: Final = ("ingest", "validate", "split", "fit_transformer", "train", "evaluate", "gate", "publish")
REMOTE_TASKS: Final = ("gate", "publish")  # the tasks that talk to S3 / MLflow
WORSE: Final = {"max_iter": 15}  # stopped long before convergence: about twice the default model's RMSE
BUCKET: Final = "dag-models"
# Variables of the outer environment that must not leak into the Airflow subprocess.
FOREIGN: Final = ("AIRFLOW", "AWS_", "MLFLOW_", "DVC_", "MODEL_")


@dataclass(frozen=True)
class Outcome:
    """One DAG run's result (state, task states, XComs) and the log lines it printed."""

    result: dict[str, Any]
    log: str

    @property
    def xcom(self) -> dict[str, Any]:
        return dict(self.result["xcom"])


def _airflow(env: dict[str, str], *args: str, log: Path, timeout: float = 900) -> list[Outcome]:
    """Run the Airflow subprocess; split its merged output into one log per result (all of it also in ``log``)."""
    process = subprocess.run(
        [sys.executable, "-m", "tests.harness.airflow_process", *args],
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},  # keeps stdout and stderr lines in order
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    log.write_text(process.stdout)
    outcomes: list[Outcome] = []
    lines: list[str] = []
    for line in process.stdout.splitlines():
        if line.startswith(RESULT):
            outcomes.append(Outcome(json.loads(line.removeprefix(RESULT)), "\n".join(lines)))
            lines = []
        else:
            lines.append(line)
    assert process.returncode == 0, (
        f"Airflow subprocess failed ({process.returncode}), see {log}:\n{process.stdout[-8000:]}"
    )
    return outcomes


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An Airflow home with a migrated sqlite metadata DB, as environment for the subprocesses."""
    home = tmp_path_factory.mktemp("airflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "PYTHONPATH": str(REPO),
        }
    )
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


def test_dag_imports_with_the_expected_graph_and_retries(airflow_env: dict[str, str], tmp_path: Path) -> None:
    [described] = _airflow(airflow_env, "describe", log=tmp_path / "describe.log", timeout=300)
    assert described.result["import_errors"] == {}
    assert described.result["dag_ids"] == [DAG_ID]
    tasks = described.result["tasks"]
    assert set(tasks) == set(TASKS)
    upstream = {task_id: set(spec["upstream"]) for task_id, spec in tasks.items()}
    order = list(graphlib.TopologicalSorter(upstream).static_order())  # raises CycleError on a cycle
    assert order[0] == "ingest" and order[-1] == "publish"
    for before, after in itertools.pairwise(TASKS):  # the pipeline's stages, in order
        assert before in upstream[after], f"{after} does not follow {before}"
    assert upstream["evaluate"] == {"ingest", "split", "fit_transformer", "train"}
    assert upstream["gate"] == {"evaluate", "split"}  # the champion is scored on this run's test split
    assert upstream["publish"] == {"evaluate", "gate", "ingest", "split"}  # the training run: data set, splits
    for task_id in REMOTE_TASKS:
        spec = tasks[task_id]
        assert spec["retries"] >= 3 and spec["backoff"] >= 2.0 and spec["retry_delay_s"] > 0
        assert spec["max_retry_delay_s"] is not None
    for task_id in set(TASKS) - set(REMOTE_TASKS):  # deterministic work: a retry would fail the same way
        assert tasks[task_id]["retries"] == 0
    assert described.result["params"] == sorted(["rows", "seed", "data_path", "hyperparameters", "promotion_margin"])


@dataclass(frozen=True)
class Stack:
    """What the DAG ran against, and the outcome of each scenario, by name."""

    mlflow_uri: str
    model_name: str
    s3: S3Server
    runs: dict[str, Outcome]

    def bucket_keys(self) -> set[str]:
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{self.model_name}/")
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def blob_key(self, md5: str) -> str:
        """Where DVC keeps a blob in the remote (its cache layout)."""
        return blob_key(self.model_name, md5)


@pytest.fixture(scope="module")
def stack(
    airflow_env: dict[str, str], s3: S3Server, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Stack:
    """The four DAG runs, in one Airflow process, with the compose stack's variable names pointed at moto and
    the real MLflow server: first model, rerun of that same run, a worse model, invalid data."""
    s3.create_bucket(BUCKET)
    model_name = f"dag-{uuid.uuid4().hex[:8]}"
    data = tmp_path_factory.mktemp("data")
    frame = generate(500, seed=3)
    frame.loc[[4, 9], "price"] = -5.0
    frame.loc[17, "agency"] = "NoSuchAir"
    invalid = write_csv(frame, data / "invalid.csv")
    env = {
        **airflow_env,
        **S3_ENV,
        "DVC_REMOTE_URL": f"s3://{BUCKET}/{model_name}",
        "DVC_REMOTE_ENDPOINT_URL": s3.endpoint_url,
        "DVC_REMOTE_REGION": S3_ENV["AWS_DEFAULT_REGION"],
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "MODEL_NAME": model_name,
        WORK_URL_ENV: f"s3://{BUCKET}/{model_name}-work",
    }
    first = datetime(2025, 1, 1, tzinfo=UTC).isoformat()
    scenarios = [
        {"name": "first", "when": first, "conf": {"rows": ROWS}},
        {"name": "rerun", "when": first, "conf": {"rows": ROWS}},
        {
            "name": "worse",
            "when": datetime(2025, 1, 2, tzinfo=UTC).isoformat(),
            "conf": {"rows": ROWS, "hyperparameters": WORSE},
        },
        {"name": "invalid", "when": datetime(2025, 1, 3, tzinfo=UTC).isoformat(), "conf": {"data_path": str(invalid)}},
    ]
    outcomes = _airflow(env, "run", json.dumps(scenarios), log=data / "dag-runs.log")
    runs = {o.result["name"]: o for o in outcomes}
    for name, outcome in runs.items():  # the figures, for `pytest -s`
        print(f"dag.test() {name}: {outcome.result['seconds']:.1f}s")
    assert list(runs) == [s["name"] for s in scenarios]
    return Stack(mlflow_uri, model_name, s3, runs)


def test_first_run_publishes_and_promotes(stack: Stack) -> None:
    first = stack.runs["first"]
    assert first.result["state"] == "success", first.log[-8000:]
    assert set(first.result["tasks"].values()) == {"success"}
    published, decision = first.xcom["publish"], first.xcom["gate"]
    assert decision["promote"] is True and "first model" in decision["reason"]
    assert published["created"] is True and published["alias"] == "champion"

    champion = RestRegistry(stack.mlflow_uri).version_by_alias(stack.model_name, "champion")
    assert champion.version == published["version"]
    assert champion.tags[TAG_DVC_HASH] == published["dvc_hash"]
    # The version's run is the training run the publish task recorded: the data set, the bundle's hashes, plots.
    run = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri).get_run(published["run_id"])
    assert run.data.tags["run_kind"] == "training" and run.data.tags[TAG_DVC_HASH] == published["dvc_hash"]
    assert (
        run.inputs is not None and run.inputs.dataset_inputs[0].dataset.digest == first.xcom["ingest"]["data_hash"][:36]
    )
    assert "validation_rmse" in run.data.metrics

    # Every file of the bundle, and DVC's listing of the directory, is in the bucket under its md5.
    keys = stack.bucket_keys()
    bundle = first.xcom["evaluate"]["bundle_uri"]
    assert bundle.startswith(f"s3://{BUCKET}/{stack.model_name}-work/")  # in the run's work area, not on a disk
    client = stack.s3.client()
    prefix = bundle.removeprefix(f"s3://{BUCKET}/") + "/"
    files = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    assert {key.rsplit("/", 1)[-1] for key in files} == {
        "metadata.json",
        "model.skops",
        "transformer.skops",
        "serving.npz",
    }
    for key in files:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert stack.blob_key(hashlib.md5(body).hexdigest()) in keys, key  # noqa: S324
    assert stack.blob_key(published["dvc_hash"]) in keys

    # XCom carries URIs and small dicts only.
    assert all(len(json.dumps(value)) < 2000 for value in first.xcom.values())


def test_task_logs_hold_no_credentials(stack: Stack) -> None:
    logs = "\n".join(outcome.log for outcome in stack.runs.values())
    assert "publish: " in logs and "gate: " in logs  # the tasks' own log lines are in this output
    for secret in (S3_ENV["AWS_SECRET_ACCESS_KEY"], S3_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in logs


def test_rerun_of_the_same_run_is_idempotent(stack: Stack) -> None:
    first, again = stack.runs["first"], stack.runs["rerun"]
    assert again.result["state"] == "success", again.log[-8000:]
    assert again.result["run_id"] == first.result["run_id"]
    assert "reusing this run's earlier result" in again.log
    assert again.result["seconds"] < first.result["seconds"]  # nothing was retrained
    assert again.xcom["evaluate"]["content_hash"] == first.xcom["evaluate"]["content_hash"]
    assert "already is" in again.xcom["gate"]["reason"]
    before, after = first.xcom["publish"], again.xcom["publish"]
    assert after["version"] == before["version"] and after["dvc_hash"] == before["dvc_hash"]
    assert after["created"] is False and after["uploaded"] == 0
    # Only the first and the worse run registered a version; the rerun added none.
    versions = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri).search_model_versions(
        f"name = '{stack.model_name}'"
    )
    assert sorted(int(v.version) for v in versions) == [1, 2]


def test_worse_model_is_registered_without_moving_the_alias(stack: Stack) -> None:
    first, worse = stack.runs["first"], stack.runs["worse"]
    assert worse.result["state"] == "success", worse.log[-8000:]
    decision, published = worse.xcom["gate"], worse.xcom["publish"]
    assert decision["promote"] is False
    # The champion's bundle, fetched by its DVC hash, scored on this run's test split (the same rows as its own
    # here: same data and split seed) scores what its run logged.
    champion_rmse = first.xcom["evaluate"]["metrics"]["rmse"]
    assert decision["candidate"] > decision["champion"] == pytest.approx(champion_rmse, rel=1e-9)
    assert decision["champion_logged"] == pytest.approx(champion_rmse)
    assert decision["champion_dvc_hash"] == first.xcom["publish"]["dvc_hash"]
    assert "does not beat" in decision["reason"] and decision["reason"] in worse.log  # said in the task log
    assert "gate: champion: dvc pull: " in worse.log
    assert published["created"] is True and published["alias"] is None and published["promoted"] is False

    # Both numbers and the decision are recorded on the candidate's run.
    client = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    recorded = client.get_run(published["run_id"]).data
    assert recorded.metrics[CANDIDATE_METRIC] == decision["candidate"] == recorded.metrics["rmse"]
    assert recorded.metrics[CHAMPION_METRIC] == decision["champion"]
    assert recorded.tags[PROMOTED_TAG] == "false" and recorded.tags[REASON_TAG] == decision["reason"]
    first_run = client.get_run(first.xcom["publish"]["run_id"]).data  # a first model: nothing to compare with
    assert CHAMPION_METRIC not in first_run.metrics and first_run.tags[PROMOTED_TAG] == "true"

    registry = RestRegistry(stack.mlflow_uri)
    assert registry.version_by_alias(stack.model_name, "champion").version == first.xcom["publish"]["version"]
    registered = registry.version(stack.model_name, published["version"])
    assert registered.dvc_hash == published["dvc_hash"] and "champion" not in registered.aliases


def test_invalid_data_fails_at_validate_with_the_report_in_the_log(stack: Stack) -> None:
    failed = stack.runs["invalid"]
    assert failed.result["state"] == "failed"
    states = failed.result["tasks"]
    assert states["ingest"] == "success" and states["validate"] == "failed"
    assert {states[t] for t in TASKS[2:]} == {"upstream_failed"}
    assert "validate: the data was refused" in failed.log
    assert "price: outside [1.0, 20000.0] (2 rows) e.g. row 4" in failed.log
    assert "agency: unknown category" in failed.log and "NoSuchAir" in failed.log


def test_hyperparameters_override_params_yaml_and_typos_are_refused() -> None:
    assert training_config({"max_iter": 15}).model.max_iter == 15
    assert training_config({}).model.max_iter == training_config().model.max_iter
    with pytest.raises(ValidationError, match="max_iters"):
        training_config({"max_iters": 15})
