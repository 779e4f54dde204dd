"""The training run in a real ``mlflow server``: ``python -m orchestration train --tracking-uri`` records it (params,
metrics, the data set, the bundle's hashes, the plots), and publishing registers the model in that same run.

One training for the module (the CLI in a subprocess, on the session's 20,000-row data set), one publish.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.tracking import MlflowClient

from app.contract.bundle import Metadata, read_metadata, training_fingerprint
from app.contract.connection import ConnectionSettings
from app.contract.hashing import file_digest
from app.contract.registry import TAG_CONTENT_HASH, TAG_DATA_HASH, TAG_DVC_HASH, TAG_TRAINING_FINGERPRINT, RestRegistry
from app.contract.store import dir_hash
from orchestration import tasks
from orchestration.config import load_config
from orchestration.data import read_data
from orchestration.gate import GateDecision
from orchestration.pipeline import TrainResult
from orchestration.publish import Published, PublishTarget, publish_bundle
from orchestration.split import split
from orchestration.tracking import PLOT_FILES, PLOTS, TAG_RUN_KIND
from orchestration.validate import validate
from orchestration.work_area import open_area
from tests.conftest import SMALL_ROWS
from tests.harness.services import S3Server
from tests.integration.conftest import ROOT, fresh_target

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Trained:
    run_id: str
    bundle: Path
    metadata: Metadata
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "tracking")


@pytest.fixture(scope="module")
def tracked(flight_csv: Path, target: PublishTarget, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    out = tmp_path_factory.mktemp("tracked") / "bundle"
    args = ["train", "--data", str(flight_csv), "--out", str(out)]
    args += ["--tracking-uri", target.tracking_uri, "--model-name", target.model_name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [run_id] = re.findall(r"^mlflow: training run ([0-9a-f]{32}) at ", done.stdout, re.MULTILINE)
    return Trained(run_id, out, read_metadata(out), done.stdout, done.stderr)


@pytest.fixture(scope="module")
def published(tracked: Trained, target: PublishTarget) -> Published:
    return publish_bundle(tracked.bundle, target)


def test_train_reports_each_stage_and_the_fit_as_it_goes(tracked: Trained) -> None:
    err = tracked.stderr
    stages = ["ingest", "validate", "split", "fit transformer", "train", "evaluate and bundle", "record in MLflow"]
    for number, stage in enumerate(stages, 1):
        assert f"[{number}/7] {stage} ..." in err
        assert re.search(rf"^      {stage} done in \d+\.\ds", err, re.MULTILINE), stage
    assert "train: fitting up to 300 iterations on " in err
    assert f"mlflow: run {tracked.run_id} in experiment " in err


def test_the_run_holds_params_metrics_and_the_bundle_hashes(tracked: Trained, target: PublishTarget) -> None:
    run = MlflowClient(target.tracking_uri).get_run(tracked.run_id)
    metadata = tracked.metadata
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED" and tags[TAG_RUN_KIND] == "training"
    assert params["learning_rate"] == str(metadata.params["learning_rate"])
    assert params["n_iter"] == str(metadata.params["n_iter"]) and params["split_seed"] == "42"
    assert params["rows_train"] == str(metadata.rows["train"])
    assert metrics["rmse"] == pytest.approx(metadata.metrics["rmse"])
    assert metrics["baseline_rmse"] == pytest.approx(metadata.baseline_metrics["rmse"])
    assert 0 < metrics["validation_rmse"] < metrics["baseline_rmse"]
    assert {f"importance_{name}" for name in ("time", "distance", "date", "agency")} <= set(metrics)
    assert tags[TAG_CONTENT_HASH] == metadata.content_hash
    assert tags[TAG_DVC_HASH] == dir_hash(tracked.bundle)
    assert tags[TAG_DATA_HASH] == metadata.data_hash
    assert tags[TAG_TRAINING_FINGERPRINT] == training_fingerprint(metadata)


def test_the_loss_by_iteration_is_a_metric_history(tracked: Trained, target: PublishTarget) -> None:
    client = MlflowClient(target.tracking_uri)
    validation = sorted(client.get_metric_history(tracked.run_id, "loss_validation_rmse"), key=lambda m: m.step)
    training = client.get_metric_history(tracked.run_id, "loss_train_rmse")
    n_iter = int(tracked.metadata.params["n_iter"])
    assert [m.step for m in validation] == list(range(n_iter + 1)) and len(training) == n_iter + 1
    assert validation[-1].value < validation[0].value / 2  # the model learnt
    # the last iteration's validation loss is the final model's validation RMSE
    validation_rmse = client.get_run(tracked.run_id).data.metrics["validation_rmse"]
    assert validation[-1].value == pytest.approx(validation_rmse, rel=1e-9)


def test_the_data_set_is_an_input_with_its_hash(tracked: Trained, target: PublishTarget, flight_csv: Path) -> None:
    run = MlflowClient(target.tracking_uri).get_run(tracked.run_id)
    assert run.inputs is not None
    [dataset_input] = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.profile is not None and dataset.schema is not None
    sha256 = file_digest(flight_csv)
    assert tracked.metadata.data_hash == sha256
    assert dataset.digest == sha256[:36] and dataset.name == "flights.csv"
    assert json.loads(dataset.source) == {"uri": str(flight_csv.resolve())}
    assert json.loads(dataset.profile)["num_rows"] == SMALL_ROWS
    columns = {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert {"price", "date", "agency", "distance"} <= columns
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags == {"mlflow.data.context": "training", TAG_DATA_HASH: sha256}


def test_the_plots_are_pngs_downloaded_through_mlflow(tracked: Trained, target: PublishTarget, tmp_path: Path) -> None:
    client = MlflowClient(target.tracking_uri)
    listed = {Path(a.path).name for a in client.list_artifacts(tracked.run_id, PLOTS)}
    assert listed == set(PLOT_FILES)
    for name in PLOT_FILES:
        local = Path(client.download_artifacts(tracked.run_id, f"{PLOTS}/{name}", str(tmp_path)))
        assert local.read_bytes().startswith(PNG_SIGNATURE)
        height, width, _ = matplotlib.image.imread(local).shape  # decodes the whole image
        assert height >= 300 and width >= 400, name


def test_publishing_registers_the_model_in_the_training_run(
    tracked: Trained, target: PublishTarget, published: Published
) -> None:
    assert published.created and published.run_id == tracked.run_id
    version = RestRegistry(target.tracking_uri).version(target.model_name, published.version)
    assert version.run_id == tracked.run_id and version.tags[TAG_DVC_HASH] == published.dvc_hash
    client = MlflowClient(target.tracking_uri)
    assert {a.path for a in client.list_artifacts(tracked.run_id)} == {"model", PLOTS}
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_DVC_HASH] == published.dvc_hash
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [tracked.run_id]  # no second run for the registration


def test_the_dags_publish_task_records_the_training_run_and_registers_it_there(
    trained: TrainResult, flight_csv: Path, s3: S3Server, mlflow_uri: str, tmp_path: Path
) -> None:
    """The DAG's stages run in separate processes: its publish task records the training run from the run's files
    (the raw snapshot, the splits, the bundle), then registers the model in it; a retry records nothing again."""
    target = fresh_target(s3, mlflow_uri, "dagtracking")
    settings = ConnectionSettings(
        mlflow_tracking_uri=target.tracking_uri,
        model_name=target.model_name,
        dvc_remote_url=target.remote_url,
        dvc_remote_endpoint_url=target.endpoint_url,
    )
    config = load_config()
    splits = split(validate(read_data(flight_csv, config.data), config.data)[0], config.split)
    training: dict[str, str] = {"data_uri": str(flight_csv), "data_hash": file_digest(flight_csv)}
    for name, frame in splits._asdict().items():
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
        training[f"{name}_uri"] = str(tmp_path / f"{name}.parquet")
    decision = GateDecision(promote=True, reason="a first model", metric="rmse", candidate=1.0).as_dict()
    bundle = str(trained.bundle_dir)  # the session's, trained without a tracking server
    with open_area("manual__tracking", str(tmp_path / "area")) as area:
        published = tasks.publish_task(area, bundle, decision, settings, training=training, config=config)
        again = tasks.publish_task(area, bundle, decision, settings, training=training, config=config)
    assert again["run_id"] == published["run_id"] and again["version"] == published["version"]
    client = MlflowClient(target.tracking_uri)
    run = client.get_run(published["run_id"])
    assert run.data.tags[TAG_RUN_KIND] == "training" and run.data.tags[TAG_DVC_HASH] == published["dvc_hash"]
    assert run.data.tags["gate_promoted"] == "true" and "validation_rmse" in run.data.metrics
    assert run.inputs is not None and run.inputs.dataset_inputs[0].dataset.digest == training["data_hash"][:36]
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, PLOTS)} == set(PLOT_FILES)
    assert len(client.search_runs([run.info.experiment_id])) == 1
