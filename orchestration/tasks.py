"""The training DAG's task bodies: plain functions over the files of one run's work area.

Each task reads its inputs from files an earlier task stored in the run's area (``orchestration.work_area``:
a prefix on the S3 store, or a local directory), writes its outputs into its own scratch directory, stores
them in the area, and returns only URIs, hashes and small dicts (what Airflow passes through XCom), never data
frames. So any worker can run any task: they share the store, not a disk. The stage logic is the pipeline's
own (``orchestration.validate``, ``split``, ``transform``, ``train``, ``evaluate``); this module only moves
it onto stored files so each stage can run as its own task, in its own process.

A rerun of the same DAG run is idempotent: the area is keyed by the run id, and a stage whose result is
already recorded there (``<stage>.json``, written last) returns that result instead of computing it again.
That matters most for the bundle: its content hash covers a creation time, so re-creating it would register
a second model version for the same run.

Each task runs in a process of its own, so each stage function imports what its stage needs when it runs, not
this module at import: the data stages (ingest, validate, split) need no scikit-learn, and only the stages that
read or write a skops file pay for skops (whose import walks every scikit-learn estimator). Importing this
module costs the config and the work area only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestration.config import DEFAULT_PARAMS, ModelConfig, PipelineConfig, load_config
from orchestration.work_area import Result, WorkArea

if TYPE_CHECKING:
    from app.contract.connection import ConnectionSettings
    from app.contract.features import FeatureTransformer
    from orchestration.publish import PublishTarget

log = logging.getLogger(__name__)


def training_config(hyperparameters: Mapping[str, Any] | None = None, params: Path = DEFAULT_PARAMS) -> PipelineConfig:
    """``params.yaml`` with the model section's values overridden by ``hyperparameters``.

    Unknown or invalid hyperparameters are refused (``pydantic.ValidationError`` names them).
    """
    config = load_config(params)
    if not hyperparameters:
        return config
    model = ModelConfig.model_validate({**config.model.model_dump(), **hyperparameters})
    return config.model_copy(update={"model": model})


def ingest(area: WorkArea, *, data_path: str | None = None, rows: int, seed: int) -> Result:
    """Snapshot the raw data into the run's area and record its sha256.

    The source is ``data_path`` (a CSV or Parquet file: a path on the worker, or an ``s3://`` URI on the work
    area's store) when given, else the generated flight data set with ``rows`` rows. Later stages read the
    snapshot only, so the hash names exactly what was trained on.
    """
    from app.contract.hashing import file_digest
    from orchestration.data import generate, write_csv

    def snapshot() -> Result:
        raw_dir = area.scratch / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        if data_path:
            source = area.local(data_path)
            target = raw_dir / f"data{source.suffix.lower()}"
            shutil.copyfile(source, target.with_name(target.name + ".partial"))
            described = data_path
        else:
            target = raw_dir / "flights.csv"
            write_csv(generate(rows, seed), target.with_name(target.name + ".partial"))
            described = f"generated flight data set ({rows} rows, seed {seed})"
        target.with_name(target.name + ".partial").replace(target)
        digest = file_digest(target)
        stored = area.put(target)
        log.info("ingest: %s -> %s (sha256 %s)", described, stored, digest)
        return {"data_uri": stored, "data_hash": digest, "source": described}

    return area.checkpoint("ingest", snapshot)


def validate_data(area: WorkArea, data_uri: str, config: PipelineConfig) -> Result:
    """Validate the snapshot; store the clean data as Parquet and the validation report.

    On bad data the full validation report goes to the log and the area, and ``DataValidationError`` fails the
    task.
    """
    from orchestration.data import read_data
    from orchestration.validate import DataValidationError, validate

    def run() -> Result:
        raw = read_data(area.local(data_uri), config.data)
        try:
            clean, report = validate(raw, config.data)
        except DataValidationError as exc:
            log.error("validate: the data was refused\n%s", exc.report.format())
            area.write_json("validation_report.json", exc.report.as_dict())
            raise
        log.info("validate: %s", report.format())
        clean_path = area.scratch / "clean.parquet"
        clean.to_parquet(clean_path, index=False)
        area.write_json("validation_report.json", report.as_dict())
        return {
            "clean_uri": area.put(clean_path),
            "rows_in": report.rows_in,
            "rows_out": report.rows_out,
            "rows_dropped": sum(f.count for f in report.dropped),
        }

    return area.checkpoint("validate", run)


def split_data(area: WorkArea, clean_uri: str, config: PipelineConfig) -> Result:
    """Cut the clean data into train/validation/test Parquet files with the configured seed."""
    import pandas as pd

    from orchestration.split import split

    def run() -> Result:
        splits = split(pd.read_parquet(area.local(clean_uri)), config.split)
        uris: dict[str, str] = {}
        for name, frame in splits._asdict().items():
            path = area.scratch / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            uris[f"{name}_uri"] = area.put(path)
        log.info("split: %s", ", ".join(f"{name} {len(frame)}" for name, frame in splits._asdict().items()))
        return uris

    return area.checkpoint("split", run)


def fit_transformer_task(area: WorkArea, train_uri: str, config: PipelineConfig) -> Result:
    """Fit the feature transformer on the training split and store it (skops)."""
    import pandas as pd
    import skops.io as sio

    from orchestration.transform import fit_transformer

    def run() -> Result:
        transformer = fit_transformer(pd.read_parquet(area.local(train_uri)), config.data)
        path = area.scratch / "transformer.skops"
        sio.dump(transformer, path)
        log.info("fit transformer: %d model features", len(transformer.feature_names_out_))
        return {"transformer_uri": area.put(path)}

    return area.checkpoint("fit_transformer", run)


def train_task(
    area: WorkArea, *, transformer_uri: str, train_uri: str, validation_uri: str, config: PipelineConfig
) -> Result:
    """Train the regressor with the config's hyperparameters and store it (skops)."""
    import pandas as pd
    import skops.io as sio

    from orchestration.train import train_model

    def run() -> Result:
        transformer = _load_transformer(area.local(transformer_uri))
        model = train_model(
            transformer,
            pd.read_parquet(area.local(train_uri)),
            pd.read_parquet(area.local(validation_uri)),
            config.data,
            config.model,
        )
        path = area.scratch / "model.skops"
        sio.dump(model, path)
        log.info("train: %d boosting iterations with %s", model.n_iter_, config.model.model_dump())
        return {"model_uri": area.put(path), "n_iter": int(model.n_iter_)}

    return area.checkpoint("train", run)


def evaluate_task(
    area: WorkArea,
    *,
    data_hash: str,
    transformer_uri: str,
    model_uri: str,
    split_uris: Mapping[str, str],
    config: PipelineConfig,
) -> Result:
    """The pipeline's ``evaluate_and_bundle`` on this run's files: a model that does not beat the naive
    baseline by ``evaluate.baseline_margin`` fails the task (``QualityGateError``) and no bundle is stored.
    """
    import pandas as pd

    from app.contract.bundle import load_trusted
    from orchestration.pipeline import evaluate_and_bundle
    from orchestration.split import Splits

    def run() -> Result:
        transformer = _load_transformer(area.local(transformer_uri))
        model = load_trusted(area.local(model_uri))
        splits = Splits(*(pd.read_parquet(area.local(split_uris[f"{n}_uri"])) for n in ("train", "validation", "test")))
        bundle_dir = area.scratch / "bundle"
        shutil.rmtree(bundle_dir, ignore_errors=True)  # leftovers of an attempt that died before recording
        metadata = evaluate_and_bundle(
            bundle_dir,
            transformer,
            model,
            splits,
            config,
            data_hash,
            report=lambda line: log.info("evaluate: %s", line),
        )
        return {
            "bundle_uri": area.put(bundle_dir),
            "content_hash": metadata.content_hash,
            "metrics": metadata.metrics,
            "baseline_metrics": metadata.baseline_metrics,
        }

    return area.checkpoint("evaluate", run)


def gate_task(area: WorkArea, bundle_uri: str, test_uri: str, settings: ConnectionSettings, margin: float) -> Result:
    """Decide whether the new bundle replaces the registry's current champion, both scored on this run's test
    split (``test_uri``); log and return why."""
    import pandas as pd

    from app.contract.bundle import read_metadata
    from orchestration.gate import GateDecision, decide_promotion

    metadata = read_metadata(area.local(bundle_uri))
    decision: GateDecision = decide_promotion(
        metadata,
        pd.read_parquet(area.local(test_uri)),
        settings,
        margin=margin,
        report=lambda line: log.info("gate: champion: %s", line),
    )
    log.info("gate: %s", decision.reason)
    return decision.as_dict()


def publish_task(
    area: WorkArea,
    bundle_uri: str,
    decision: Mapping[str, Any],
    settings: ConnectionSettings,
    *,
    training: Mapping[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> Result:
    """Record the training run in MLflow (given ``training``: ingest's and split's results, and the run's
    ``config``; ``orchestration.tracking``), push the bundle to the DVC remote and register it in that run; move
    the alias only if the gate said so. The gate's numbers and decision are recorded on the version's run.

    Publishing is idempotent (the same bundle yields the same version, a recorded bundle keeps its training
    run), so a rerun changes nothing.
    """
    from orchestration.gate import GateDecision
    from orchestration.publish import PublishTarget, publish_bundle

    target = PublishTarget.from_settings(settings)
    bundle_dir = area.local(bundle_uri)
    if training is not None and config is not None:
        _record_training(area, bundle_dir, training, config, target)
    gated = GateDecision(**decision)
    alias = settings.model_alias if gated.promote else None
    published = publish_bundle(
        bundle_dir,
        target,
        alias=alias,
        report=lambda line: log.info("publish: %s", line),
        run_metrics=gated.run_metrics(),
        run_tags=gated.run_tags(),
    )
    result = {**asdict(published), "promoted": gated.promote, "reason": gated.reason}
    log.info(
        "publish: %s version %d (%s), DVC hash %s, %s",
        target.model_name,
        published.version,
        "new" if published.created else "already registered",
        published.dvc_hash,
        f"alias {alias!r} set" if alias else f"alias {settings.model_alias!r} left where it was",
    )
    area.write_json("published.json", result)
    return result


def _record_training(
    area: WorkArea, bundle_dir: Path, training: Mapping[str, Any], config: PipelineConfig, target: PublishTarget
) -> str:
    """The DAG's training run: the bundle's model scored on this run's splits, with the raw snapshot as its data
    set, in the experiment publishing registers the model in."""
    import pandas as pd

    from app.contract.bundle import load_bundle
    from orchestration.data import read_data
    from orchestration.split import Splits
    from orchestration.tracking import DataSource, TrackingTarget, gather_evidence, record_training

    bundle = load_bundle(bundle_dir)
    splits = Splits(*(pd.read_parquet(area.local(training[f"{n}_uri"])) for n in ("train", "validation", "test")))
    data_uri = str(training["data_uri"])
    return record_training(
        TrackingTarget(target.tracking_uri, target.model_name),
        bundle_dir=bundle_dir,
        metadata=bundle.metadata,
        config=config,
        data=DataSource(read_data(area.local(data_uri), config.data), data_uri, str(training["data_hash"])),
        evidence=gather_evidence(bundle.model, bundle.transformer, splits, config),
        report=lambda line: log.info("publish: %s", line),
    )


def _load_transformer(path: Path) -> FeatureTransformer:
    from app.contract.bundle import BundleError, load_trusted
    from app.contract.features import FeatureTransformer

    transformer = load_trusted(path)
    if not isinstance(transformer, FeatureTransformer):
        raise BundleError(f"{path} holds {type(transformer).__name__}, not a FeatureTransformer")
    return transformer
