"""The promotion gate against a real MLflow registry: each way a decision can go, and the margin's edge."""

from __future__ import annotations

import uuid

import pytest
from mlflow.tracking import MlflowClient

from app.contract.bundle import Metadata
from app.contract.registry import TAG_CONTENT_HASH
from orchestration.gate import compare, decide_promotion
from orchestration.pipeline import TrainResult


def _champion(uri: str, metrics: dict[str, float], content_hash: str = "other") -> str:
    """A fresh model name whose version 1 holds ``champion`` and whose run logged ``metrics``."""
    # Both URIs explicit: the registry URI otherwise comes from process-global MLflow state other code may set.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = f"gate-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    run = client.create_run(experiment)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={TAG_CONTENT_HASH: content_hash}
    )
    client.set_registered_model_alias(name, "champion", "1")
    return name


def _candidate(trained: TrainResult, rmse: float) -> Metadata:
    return trained.metadata.model_copy(update={"metrics": {**trained.metadata.metrics, "rmse": rmse}})


def test_margin_is_relative_and_strict() -> None:
    assert compare(98.9, 100.0, 0.01) and not compare(99.0, 100.0, 0.01)
    assert compare(99.99, 100.0, 0.0) and not compare(100.0, 100.0, 0.0)
    with pytest.raises(ValueError, match="margin"):
        compare(1.0, 2.0, 1.0)


def test_first_model_is_promoted(mlflow_uri: str, trained: TrainResult) -> None:
    decision = decide_promotion(
        _candidate(trained, 50.0), tracking_uri=mlflow_uri, model_name=f"none-{uuid.uuid4().hex[:8]}", alias="champion"
    )
    assert decision.promote and decision.champion is None and "first model" in decision.reason


def test_better_by_the_margin_is_promoted_and_less_is_not(mlflow_uri: str, trained: TrainResult) -> None:
    name = _champion(mlflow_uri, {"rmse": 100.0, "mae": 70.0})
    better = decide_promotion(
        _candidate(trained, 94.0), tracking_uri=mlflow_uri, model_name=name, alias="champion", margin=0.05
    )
    assert better.promote and better.champion == 100.0 and better.champion_version == 1
    slightly = decide_promotion(
        _candidate(trained, 96.0), tracking_uri=mlflow_uri, model_name=name, alias="champion", margin=0.05
    )
    assert not slightly.promote and "does not beat" in slightly.reason and "95.0000" in slightly.reason


def test_same_bundle_keeps_its_alias_and_unknown_metrics_block(mlflow_uri: str, trained: TrainResult) -> None:
    candidate = _candidate(trained, 500.0)
    same = _champion(mlflow_uri, {"rmse": 100.0}, content_hash=candidate.content_hash)
    decision = decide_promotion(candidate, tracking_uri=mlflow_uri, model_name=same, alias="champion")
    assert decision.promote and "already is" in decision.reason  # a rerun never demotes its own model
    unmeasured = _champion(mlflow_uri, {"mae": 1.0})
    decision = decide_promotion(candidate, tracking_uri=mlflow_uri, model_name=unmeasured, alias="champion")
    assert not decision.promote and "no logged rmse" in decision.reason
