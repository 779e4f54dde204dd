"""Publishing a bundle against real services: DVC push to the moto S3 server, registration in ``mlflow server``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from app.contract.bundle import load_bundle, read_metadata, training_fingerprint
from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DATA_HASH,
    TAG_DVC_HASH,
    TAG_TRAINING_FINGERPRINT,
    RestRegistry,
)
from app.contract.store import dir_hash
from orchestration.__main__ import main
from orchestration.config import load_config
from orchestration.pipeline import Progress, run_pipeline
from orchestration.publish import Published, PublishTarget, publish_bundle, push_bundle
from tests.harness.services import S3Server, blob_key
from tests.harness.serving import records
from tests.integration.conftest import fresh_target


@pytest.fixture(scope="module")
def target(s3: S3Server, mlflow_uri: str, s3_credentials: None) -> PublishTarget:
    return fresh_target(s3, mlflow_uri, "publish")


@pytest.fixture(scope="module")
def published(bundle_dir: Path, target: PublishTarget) -> Published:
    return publish_bundle(bundle_dir, target)


def test_remote_holds_a_dvc_cache_layout_of_the_bundle(
    bundle_dir: Path, target: PublishTarget, published: Published, s3: S3Server
) -> None:
    assert published.dvc_hash == dir_hash(bundle_dir)
    files = sum(1 for path in bundle_dir.iterdir() if path.is_file())
    assert files == 4  # metadata.json, the two skops files, serving.npz
    assert published.created and published.uploaded == files + 1  # every file and the directory listing
    bucket, prefix = target.remote_url.removeprefix("s3://").split("/", 1)
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    md5 = published.dvc_hash.removesuffix(".dir")
    assert blob_key(prefix, md5) + ".dir" in keys
    assert len(keys) == files + 1 and all(key.startswith(f"{prefix}/files/md5/") for key in keys)


def test_registered_version_carries_the_bundle_tags_and_the_alias(
    bundle_dir: Path, target: PublishTarget, published: Published
) -> None:
    metadata = read_metadata(bundle_dir)
    version = RestRegistry(target.tracking_uri).version_by_alias(target.model_name, "champion")
    assert version.version == published.version and published.alias == "champion"
    assert version.tags[TAG_DVC_HASH] == published.dvc_hash
    assert version.tags[TAG_CONTENT_HASH] == metadata.content_hash
    assert version.tags[TAG_DATA_HASH] == metadata.data_hash
    assert version.run_id == published.run_id


def test_run_has_params_metrics_and_a_servable_model_with_signature(
    bundle_dir: Path, target: PublishTarget, published: Published
) -> None:
    bundle = load_bundle(bundle_dir)
    run = MlflowClient(target.tracking_uri).get_run(published.run_id)
    assert run.data.params["learning_rate"] == str(bundle.metadata.params["learning_rate"])
    assert run.data.metrics["rmse"] == pytest.approx(bundle.metadata.metrics["rmse"])
    assert run.data.metrics["baseline_rmse"] == pytest.approx(bundle.metadata.baseline_metrics["rmse"])
    assert run.data.tags[TAG_DVC_HASH] == published.dvc_hash

    mlflow.set_tracking_uri(target.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{target.model_name}/{published.version}")
    signature = model.metadata.signature
    assert signature is not None
    assert signature.inputs.input_names() == bundle.metadata.feature_names()
    frame = pd.DataFrame(records(bundle.metadata, 50))
    assert list(model.predict(frame)) == pytest.approx(list(bundle.predict(frame)), rel=1e-12)


def test_publishing_again_uploads_nothing_and_creates_no_version(
    bundle_dir: Path, target: PublishTarget, published: Published, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["publish", str(bundle_dir), "--remote", target.remote_url, "--tracking-uri", target.tracking_uri]
    args += ["--model-name", target.model_name, "--endpoint-url", str(target.endpoint_url)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "nothing uploaded" in out and "no new version" in out
    assert f"version {published.version} (already registered" in out

    again = publish_bundle(bundle_dir, target)
    assert (again.uploaded, again.created, again.version) == (0, False, published.version)
    assert push_bundle(bundle_dir, target) == (published.dvc_hash, 0)
    versions = MlflowClient(target.tracking_uri).search_model_versions(f"name = '{target.model_name}'")
    assert len(versions) == 1


def test_retraining_the_same_way_registers_no_new_version(
    flight_csv: Path, bundle_dir: Path, target: PublishTarget, published: Published, tmp_path: Path, s3: S3Server
) -> None:
    """The same data, parameters and libraries again: another bundle (its creation time and the archives'
    timestamps differ, so its content hash does), the same training fingerprint: the registered version comes
    back, and nothing is pushed or registered."""
    retrained = run_pipeline(flight_csv, load_config(), tmp_path / "bundle", Progress(stream=None))
    first = read_metadata(bundle_dir)
    assert retrained.metadata.content_hash != first.content_hash
    assert training_fingerprint(retrained.metadata) == training_fingerprint(first)
    keys_before = {
        o["Key"] for o in s3.client().list_objects_v2(Bucket=target.remote_url[5:].split("/")[0])["Contents"]
    }
    again = publish_bundle(retrained.bundle_dir, target)
    assert (again.version, again.created, again.uploaded, again.dvc_hash) == (
        published.version,
        False,
        0,
        published.dvc_hash,
    )
    keys_after = {o["Key"] for o in s3.client().list_objects_v2(Bucket=target.remote_url[5:].split("/")[0])["Contents"]}
    assert keys_after == keys_before
    version = RestRegistry(target.tracking_uri).version(target.model_name, published.version)
    assert version.tags[TAG_TRAINING_FINGERPRINT] == training_fingerprint(first)


def test_a_second_bundle_is_a_new_version_and_the_alias_moves_only_when_asked(
    second_bundle_dir: Path,
    target: PublishTarget,
    published: Published,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'callers-own.db'}"
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: monkeypatch puts the variable back after the test,
    # or the next test on this worker (a `train` that records its run when the variable is set) would inherit it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    mlflow.set_tracking_uri(elsewhere)  # a caller's own MLflow set-up (an Airflow task's, say)
    try:
        unaliased = publish_bundle(second_bundle_dir, target, alias=None)
        assert mlflow.get_tracking_uri() == elsewhere  # publishing did not repoint it
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # its code takes None: the default, the variable unset
    assert unaliased.created and unaliased.version == published.version + 1 and unaliased.alias is None
    registry = RestRegistry(target.tracking_uri)
    assert registry.version_by_alias(target.model_name, "champion").version == published.version
    publish_bundle(second_bundle_dir, target, alias="champion")
    assert registry.version_by_alias(target.model_name, "champion").version == unaliased.version
