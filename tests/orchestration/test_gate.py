"""The promotion gate against real parts: the champion published with DVC to the moto S3 server and registered in
a real ``mlflow server``, fetched by its DVC hash and scored on the candidate's test split. Each way a decision
can go, the margin's edge, a champion that cannot be scored, and what the candidate's run records."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from app.contract.bundle import Metadata
from app.contract.connection import ConnectionSettings
from app.contract.registry import TAG_CONTENT_HASH, TAG_DVC_HASH
from orchestration import tasks
from orchestration.config import PipelineConfig, load_config
from orchestration.data import generate, read_data, write_csv
from orchestration.gate import (
    CANDIDATE_METRIC,
    CHAMPION_LOGGED_METRIC,
    CHAMPION_METRIC,
    PROMOTED_TAG,
    REASON_TAG,
    compare,
    decide_promotion,
)
from orchestration.pipeline import Progress, TrainResult, run_pipeline
from orchestration.publish import PublishTarget, publish_bundle
from orchestration.split import split
from orchestration.validate import validate
from orchestration.work_area import open_area
from tests.harness.services import S3Server
from tests.integration.conftest import fresh_target

MARGIN = 0.05


def _test_split(data: Path, config: PipelineConfig) -> pd.DataFrame:
    """The test split a pipeline run on ``data`` scores its model on."""
    clean, _ = validate(read_data(data, config.data), config.data)
    return split(clean, config.split).test


def _settings(target: PublishTarget, model_name: str) -> ConnectionSettings:
    """What the DAG's gate task reads from the environment, pointed at this target and model."""
    return ConnectionSettings(
        mlflow_tracking_uri=target.tracking_uri,
        model_name=model_name,
        model_alias="champion",
        dvc_remote_url=target.remote_url,
        dvc_remote_endpoint_url=target.endpoint_url,
    )


def _candidate(trained: TrainResult, rmse: float) -> Metadata:
    """The trained bundle's metadata as another bundle's (its own content hash) with test RMSE ``rmse``."""
    metrics = {**trained.metadata.metrics, "rmse": rmse}
    return trained.metadata.model_copy(update={"metrics": metrics, "content_hash": uuid.uuid4().hex})


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "gate")


@pytest.fixture(scope="module")
def champion(target: PublishTarget, trained: TrainResult) -> ConnectionSettings:
    """A fresh model whose ``champion`` (version 1) is the session's trained bundle, pushed and registered for
    real; only the easier candidate is registered beside it (version 2, without the alias)."""
    name = f"gate-{uuid.uuid4().hex[:8]}"
    publish_bundle(trained.bundle_dir, PublishTarget(target.remote_url, target.tracking_uri, name, target.endpoint_url))
    return _settings(target, name)


@pytest.fixture(scope="module")
def own_split(flight_csv: Path) -> pd.DataFrame:
    """The trained bundle's own test split."""
    return _test_split(flight_csv, load_config())


@pytest.fixture(scope="module")
def easier(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, pd.DataFrame]:
    """A model trained on an easier data set (economy flights only: cheaper, so smaller errors in money), and its
    test split."""
    frame = generate(20_000, seed=12)
    work = tmp_path_factory.mktemp("easier")
    data = write_csv(frame[frame["flight_type"] == "economic"].reset_index(drop=True), work / "economy.csv")
    config = load_config()
    return run_pipeline(data, config, work / "bundle", Progress(stream=None)), _test_split(data, config)


def test_margin_is_relative_and_strict() -> None:
    assert compare(98.9, 100.0, 0.01) and not compare(99.0, 100.0, 0.01)
    assert compare(99.99, 100.0, 0.0) and not compare(100.0, 100.0, 0.0)
    with pytest.raises(ValueError, match="margin"):
        compare(1.0, 2.0, 1.0)


def test_first_model_is_promoted(target: PublishTarget, trained: TrainResult, own_split: pd.DataFrame) -> None:
    settings = _settings(target, f"none-{uuid.uuid4().hex[:8]}")
    decision = decide_promotion(_candidate(trained, 50.0), own_split, settings)
    assert decision.promote and decision.champion is None and "first model" in decision.reason
    assert decision.run_metrics() == {CANDIDATE_METRIC: 50.0}


def test_champion_is_scored_on_the_candidates_split_with_the_margin(
    champion: ConnectionSettings, trained: TrainResult, own_split: pd.DataFrame
) -> None:
    # On its own test split, the fetched champion scores what its run logged: the edge is (1 - margin) x that.
    edge = trained.metadata.metrics["rmse"] * (1 - MARGIN)
    lines: list[str] = []
    better = decide_promotion(
        _candidate(trained, edge * 0.999), own_split, champion, margin=MARGIN, report=lines.append
    )
    assert better.champion == pytest.approx(trained.metadata.metrics["rmse"], rel=1e-9)
    assert better.champion_logged == pytest.approx(trained.metadata.metrics["rmse"])
    assert better.promote and better.champion_version == 1 and better.test_rows == len(own_split)
    assert any(line.startswith("dvc pull: ") and "checked" in line for line in lines)  # fetched, hash checked
    slightly = decide_promotion(_candidate(trained, edge * 1.001), own_split, champion, margin=MARGIN)
    assert not slightly.promote and slightly.champion == better.champion
    assert "does not beat" in slightly.reason and f"{edge:.4f}" in slightly.reason
    assert f"same {len(own_split)} test rows" in slightly.reason


def test_an_easier_data_set_no_longer_wins_promotion(
    champion: ConnectionSettings,
    target: PublishTarget,
    trained: TrainResult,
    easier: tuple[TrainResult, pd.DataFrame],
    tmp_path: Path,
) -> None:
    candidate, candidate_split = easier
    ours, logged = candidate.metadata.metrics["rmse"], trained.metadata.metrics["rmse"]
    # Compared with what the champion logged on its own (harder) split, the candidate wins by far ...
    assert compare(ours, logged, MARGIN)
    # ... but on the candidate's own split the champion does at least as well: no promotion.
    decision = decide_promotion(candidate.metadata, candidate_split, champion, margin=MARGIN)
    assert decision.champion is not None and decision.champion < logged * (1 - MARGIN)
    assert not decision.promote and not compare(ours, decision.champion, MARGIN)
    assert decision.candidate == ours and decision.champion_logged == pytest.approx(logged)
    assert "does not beat" in decision.reason and f"{decision.champion:.4f}" in decision.reason

    # The DAG's publish task records both numbers and the decision on the candidate's run; the alias stays.
    with open_area("manual__gate", str(tmp_path)) as area:
        published = tasks.publish_task(area, str(candidate.bundle_dir), decision.as_dict(), champion)
    assert published["alias"] is None and published["promoted"] is False and published["version"] == 2
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    run = client.get_run(published["run_id"])
    assert run.data.metrics[CANDIDATE_METRIC] == ours == run.data.metrics["rmse"]
    assert run.data.metrics[CHAMPION_METRIC] == decision.champion
    assert run.data.metrics[CHAMPION_LOGGED_METRIC] == pytest.approx(logged)
    assert run.data.tags[PROMOTED_TAG] == "false" and run.data.tags[REASON_TAG] == decision.reason
    assert client.get_model_version_by_alias(champion.model_name, "champion").version == "1"


def test_same_bundle_keeps_its_alias(
    champion: ConnectionSettings, trained: TrainResult, own_split: pd.DataFrame
) -> None:
    decision = decide_promotion(trained.metadata, own_split, champion)
    assert decision.promote and "already is" in decision.reason  # a rerun never demotes its own model
    assert decision.champion == decision.candidate == trained.metadata.metrics["rmse"]


def test_a_champion_without_a_dvc_hash_is_not_replaced(
    target: PublishTarget, trained: TrainResult, own_split: pd.DataFrame
) -> None:
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    name = f"gate-{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(name))
    client.log_metric(run.info.run_id, "rmse", 1000.0)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={TAG_CONTENT_HASH: "other"}
    )
    client.set_registered_model_alias(name, "champion", "1")
    decision = decide_promotion(_candidate(trained, 1.0), own_split, _settings(target, name))
    assert not decision.promote and decision.champion is None and decision.champion_logged == 1000.0
    assert f"no valid {TAG_DVC_HASH} tag" in decision.reason and "not promoting" in decision.reason


def test_a_champion_whose_blobs_are_gone_is_not_replaced(
    s3: S3Server, target: PublishTarget, trained: TrainResult, own_split: pd.DataFrame
) -> None:
    # The champion pushed under a prefix of its own, whose blobs then disappear.
    name = f"gate-{uuid.uuid4().hex[:8]}"
    lonely = PublishTarget(f"{target.remote_url}-{name}", target.tracking_uri, name, target.endpoint_url)
    published = publish_bundle(trained.bundle_dir, lonely)
    bucket, prefix = lonely.remote_url.removeprefix("s3://").split("/", 1)
    client = s3.client()
    for item in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    settings = _settings(lonely, lonely.model_name)
    decision = decide_promotion(_candidate(trained, 1.0), own_split, settings)
    assert not decision.promote and decision.champion is None and decision.champion_dvc_hash == published.dvc_hash
    assert "could not be fetched" in decision.reason and "missing" in decision.reason
    assert "not promoting" in decision.reason


def test_a_champion_that_cannot_read_the_candidates_columns_is_not_replaced(
    champion: ConnectionSettings, trained: TrainResult, own_split: pd.DataFrame
) -> None:
    decision = decide_promotion(_candidate(trained, 1.0), own_split.drop(columns=["agency"]), champion)
    assert not decision.promote and decision.champion is None
    assert "cannot predict these rows" in decision.reason and "agency" in decision.reason
