"""Publish a bundle: DVC push to the remote, then an MLflow run and registered model version that point at it.

The remote gets a normal DVC cache layout (``files/md5/..``), written by DVC itself from a throw-away work
repository (``dvc init --no-scm``). The registered version carries the bundle's DVC hash, content hash and
data hash as tags (``app.contract.registry.TAG_*``): the entrypoint goes from ``MODEL_NAME@alias`` to the DVC hash,
and from there to the blobs. Publishing is idempotent: DVC skips blobs the remote already has, and a bundle
whose content hash is already registered gets its existing version back instead of a new one.

``pull_bundle`` fetches a published bundle back by its DVC hash (the promotion gate's champion).

Called by the Airflow DAG, the Dagger smoke seed, the quickstart and ``python -m orchestration publish``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Final

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import app.contract.bundle
from app.contract.bundle import Metadata, read_metadata, training_fingerprint
from app.contract.connection import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, ConnectionSettings, redact
from app.contract.progress import Report, quiet
from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DATA_HASH,
    TAG_DVC_HASH,
    TAG_TRAINING_FINGERPRINT,
    mlflow_client,
)
from app.contract.store import BUNDLE_NAME, dir_hash, prepare_work_repo, write_dvc_file
from orchestration import bundle_model
from orchestration.tracking import experiment_id, training_run

MODEL_ARTIFACT: Final = "model"  # the pyfunc model's path inside the run
COLUMN_TYPES: Final = {"float": "double", "int": "long", "str": "string", "date": "string"}


class PublishError(RuntimeError):
    """The bundle could not be pushed or registered; the message says which and why."""


class PullError(RuntimeError):
    """A bundle could not be pulled from the DVC remote, or what arrived is not the bundle asked for."""


@dataclass(frozen=True)
class PublishTarget:
    """Where a bundle is published: the DVC remote and the MLflow tracking server / registry."""

    remote_url: str  # s3://bucket/prefix or a local directory
    tracking_uri: str  # http(s)://... or sqlite:///...
    model_name: str = DEFAULT_MODEL_NAME
    endpoint_url: str | None = None  # S3-compatible endpoint (moto, MinIO)
    region: str | None = None

    @classmethod
    def from_settings(cls, settings: ConnectionSettings) -> PublishTarget:
        """The target the connection settings name: DVC_REMOTE_URL, MLFLOW_TRACKING_URI, MODEL_NAME, ..."""
        missing = [
            name
            for name, value in (
                ("DVC_REMOTE_URL", settings.dvc_remote_url),
                ("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
            )
            if not value
        ]
        if missing:
            raise PublishError(f"cannot publish: {' and '.join(missing)} not set")
        assert settings.dvc_remote_url and settings.mlflow_tracking_uri
        return cls(
            remote_url=settings.dvc_remote_url,
            tracking_uri=settings.mlflow_tracking_uri,
            model_name=settings.model_name,
            endpoint_url=settings.dvc_remote_endpoint_url,
            region=settings.dvc_remote_region,
        )


@dataclass(frozen=True)
class Published:
    """The outcome of ``publish_bundle``."""

    dvc_hash: str  # e.g. "<md5>.dir"
    version: int  # registered model version
    run_id: str
    uploaded: int  # files pushed this time (0 when the remote already had them all)
    created: bool  # False when this exact bundle was already registered (the same version is returned)
    alias: str | None  # alias pointed at this version, if any


# --- DVC ---


def push_bundle(bundle_dir: Path, target: PublishTarget) -> tuple[str, int]:
    """``dvc add`` + ``dvc push`` the bundle to ``target.remote_url``: (DVC hash, files uploaded this time).

    The bundle is verified first, so nothing unverifiable reaches the remote. Credentials for S3 come from
    the standard ``AWS_*`` variables and are never written to the DVC config.
    """
    read_metadata(bundle_dir)
    from dvc.repo import Repo

    with tempfile.TemporaryDirectory(prefix="dvc-publish-") as tmp:
        work = Path(tmp)
        try:
            prepare_work_repo(work, target.remote_url, endpoint_url=target.endpoint_url, region=target.region)
            shutil.copytree(bundle_dir, work / BUNDLE_NAME)
            repo = Repo(tmp)
            [stage] = repo.add(os.fspath(work / BUNDLE_NAME))
            dvc_hash = str(stage.outs[0].hash_info.value)
            uploaded = int(repo.push())
            repo.close()
        except Exception as exc:  # DVC's errors share no public base class worth naming
            raise PublishError(f"dvc push of {bundle_dir} to {target.remote_url} failed: {exc}") from exc
    return dvc_hash, uploaded


def pull_bundle(dvc_hash: str, target: PublishTarget, work: Path, *, report: Report = quiet) -> Path:
    """``dvc pull`` the bundle ``dvc_hash`` from ``target.remote_url`` into ``work/bundle`` (a DVC work repository
    set up as the serving entrypoint's), and check that what arrived is that hash: DVC trusts the remote.

    The promotion gate fetches the champion this way; ``read_metadata``/``load_bundle`` then check its content.
    """
    from dvc.repo import Repo

    bundle = work / BUNDLE_NAME
    try:
        prepare_work_repo(work, target.remote_url, endpoint_url=target.endpoint_url, region=target.region)
        write_dvc_file(work, dvc_hash)
        repo = Repo(os.fspath(work))
        try:
            stats = repo.pull(force=True)
        finally:
            repo.close()
    except Exception as exc:  # DVC's errors share no public base class worth naming
        raise PullError(f"dvc pull of {dvc_hash} from {target.remote_url} failed: {redact(str(exc))}") from exc
    actual = dir_hash(bundle) if bundle.is_dir() else "nothing"
    if actual != dvc_hash:
        raise PullError(f"the bundle pulled from {target.remote_url} hashes to {actual}, not {dvc_hash}: altered")
    report(f"dvc pull: {stats.get('fetched', 0)} files fetched from {target.remote_url}, DVC hash {dvc_hash} checked")
    return bundle


# --- MLflow ---


def model_code(into: Path) -> list[str]:
    """The modules of ``app`` the pyfunc model imports (``bundle_model.CODE_FILES``) copied into ``into/app``, and
    the model's ``code_paths`` naming them: MLflow copies that directory into the model as ``code/app`` and puts
    ``code/`` first on ``sys.path`` when it loads the model, so ``import app.contract.bundle`` finds them there."""
    root = Path(app.contract.bundle.__file__).resolve().parents[2]  # app/contract/bundle.py -> the checkout
    for name in bundle_model.CODE_FILES:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, into / name)
    return [os.fspath(into / "app")]


def model_requirements(library_versions: Mapping[str, str]) -> list[str]:
    """The pip requirements of what the pyfunc model imports: the libraries the bundle's artifacts were written
    with at their recorded versions (the stored formats depend on them), pandas (the model's input) and pydantic
    (the bundle's metadata) at this environment's; MLflow adds its own pin."""
    pinned = [f"{name}=={library_versions[name]}" for name in ("scikit-learn", "numpy", "skops")]
    return [*pinned, *(f"{name}=={installed_version(name)}" for name in ("pandas", "pydantic"))]


def signature(metadata: Metadata) -> ModelSignature:
    """The model signature, from the bundle's own feature schema and target."""
    inputs = Schema([ColSpec(COLUMN_TYPES[f.dtype], f.name) for f in metadata.features])
    outputs = Schema([ColSpec("double", metadata.target.name)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _experiment_id(client: Any, target: PublishTarget) -> str:
    """The experiment named after the model; a local sqlite store keeps its artifacts beside the database."""
    return experiment_id(client, target.tracking_uri, target.model_name)


@dataclass(frozen=True)
class RegisteredVersion:
    version: int
    run_id: str
    dvc_hash: str
    content_hash: str


def registered_version(client: Any, model_name: str, tag: str, value: str) -> RegisteredVersion | None:
    """The oldest of ``model_name``'s versions tagged ``tag`` = ``value``, if any."""
    found = client.search_model_versions(f"name = '{model_name}' and tags.{tag} = '{value}'")
    if not found:
        return None
    oldest = min(found, key=lambda mv: int(mv.version))
    tags = oldest.tags or {}
    return RegisteredVersion(
        int(oldest.version), str(oldest.run_id), str(tags.get(TAG_DVC_HASH, "")), str(tags.get(TAG_CONTENT_HASH, ""))
    )


def _register(
    client: Any,
    bundle_dir: Path,
    metadata: Metadata,
    dvc_hash: str,
    target: PublishTarget,
    run_metrics: Mapping[str, float],
    run_tags: Mapping[str, str],
) -> tuple[int, str]:
    """The pyfunc model with the bundle inside, logged in the bundle's training run (``orchestration.tracking``)
    or, for a bundle trained without one, in a new run (params, metrics, tags); and a registered version of it.

    ``run_metrics`` and ``run_tags`` are logged on the run as well (the promotion gate's numbers and decision).

    Everything goes through ``client``, never MLflow's process-global tracking URI, so publishing leaves the
    caller's MLflow configuration (an Airflow task's, a test's) as it found it.
    """
    tags = {
        TAG_DVC_HASH: dvc_hash,
        TAG_CONTENT_HASH: metadata.content_hash,
        TAG_DATA_HASH: metadata.data_hash,
        TAG_TRAINING_FINGERPRINT: training_fingerprint(metadata),
    }
    experiment = _experiment_id(client, target)
    trained_in = training_run(client, experiment, metadata.content_hash)
    if trained_in is None:
        run = client.create_run(
            experiment,
            run_name=f"bundle-{metadata.content_hash[:12]}",
            tags={**run_tags, **tags, **{f"version.{k}": v for k, v in metadata.library_versions.items()}},
        )
        run_id = run.info.run_id
    else:  # the training run already holds the params, metrics and the other tags
        run_id = trained_in
    try:
        params = {**metadata.params, **{f"rows_{k}": v for k, v in metadata.rows.items()}}
        metrics = {
            **run_metrics,
            **metadata.metrics,
            **{f"baseline_{k}": v for k, v in metadata.baseline_metrics.items()},
        }
        if trained_in is not None:
            params, metrics = {}, dict(run_metrics)
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in {**run_tags, **tags}.items()] if trained_in is not None else [],
        )
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT
            mlflow.pyfunc.save_model(
                model_dir,
                python_model=bundle_model.__file__,  # models from code: nothing pickled
                artifacts={bundle_model.BUNDLE_ARTIFACT: os.fspath(bundle_dir)},
                code_paths=model_code(Path(tmp) / "code"),  # so it loads outside this checkout
                # a directory with no uv project: from the working directory MLflow would copy this project's uv.lock
                # and pyproject.toml (Airflow and all) into the model, for `--env-manager uv` to install them
                uv_project_path=Path(tmp) / "code",
                signature=signature(metadata),
                input_example=pd.DataFrame([metadata.example]),
                # Stated, not inferred: inference would load the model in a subprocess just to list imports.
                pip_requirements=model_requirements(metadata.library_versions),
            )
            client.log_artifacts(run_id, os.fspath(model_dir), MODEL_ARTIFACT)
        try:
            client.create_registered_model(target.model_name)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        version = client.create_model_version(target.model_name, source, run_id=run_id, tags=tags)
    except BaseException:
        if trained_in is None:  # a training run stays finished: its training did
            client.set_terminated(run_id, "FAILED")
        raise
    if trained_in is None:
        client.set_terminated(run_id, "FINISHED")
    return int(version.version), run_id


def publish_bundle(
    bundle_dir: Path,
    target: PublishTarget,
    *,
    alias: str | None = DEFAULT_ALIAS,
    report: Report = quiet,
    run_metrics: Mapping[str, float] | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> Published:
    """Push the bundle with DVC, register it in MLflow (once per model), and point ``alias`` at it.

    A model is registered once: a bundle already registered (its content hash), or trained the same way as a
    registered one (its training fingerprint: the same data, parameters, library versions and metrics; only
    the creation time and the archives' timestamps differ), returns that version and registers nothing; the
    twin's blobs are not even pushed. Blobs are pushed before anything is registered, so a registered version
    never names missing blobs. ``run_metrics`` and ``run_tags`` (the gate's record) go on the run registered
    with the version; a model already registered keeps the record of the run that registered it.
    """
    metadata = read_metadata(bundle_dir)
    fingerprint = training_fingerprint(metadata)
    try:
        client = mlflow_client(target.tracking_uri)
        twin = registered_version(client, target.model_name, TAG_TRAINING_FINGERPRINT, fingerprint)
        if twin is not None and twin.content_hash == metadata.content_hash:
            twin = None  # this very bundle: pushed again below (restoring any blob gone from the remote)
        uploaded = 0
        existing: RegisteredVersion | None = twin
        if twin is not None:
            dvc_hash = twin.dvc_hash
            report(
                f"registry: {target.model_name} version {twin.version} was trained the same way (training "
                f"fingerprint {fingerprint[:12]}: same data, parameters, libraries and metrics); no new version"
            )
        else:
            dvc_hash, uploaded = push_bundle(bundle_dir, target)
            if uploaded:
                report(f"dvc push: {uploaded} files uploaded to {target.remote_url} (bundle {dvc_hash})")
            else:
                report(f"dvc push: {target.remote_url} already holds every file of bundle {dvc_hash}; nothing uploaded")
            existing = registered_version(client, target.model_name, TAG_CONTENT_HASH, metadata.content_hash)
            if existing is not None:
                report(
                    f"registry: this bundle (content hash {metadata.content_hash[:12]}) is already "
                    f"{target.model_name} version {existing.version}; no new version"
                )
        if existing is None:
            version, run_id = _register(
                client, bundle_dir, metadata, dvc_hash, target, run_metrics or {}, run_tags or {}
            )
            report(f"registry: registered {target.model_name} version {version} (run {run_id})")
        else:
            version, run_id = existing.version, existing.run_id
        if alias:
            client.set_registered_model_alias(target.model_name, alias, str(version))
            report(f"registry: {target.model_name}@{alias} -> version {version}")
    except mlflow.exceptions.MlflowException as exc:
        raise PublishError(
            f"registering {bundle_dir} in MLflow at {redact(target.tracking_uri)} failed: {exc}"
        ) from exc
    return Published(dvc_hash, version, run_id, uploaded, existing is None, alias)
