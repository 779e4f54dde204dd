"""The training DAG's task bodies: plain functions over files in one run's work directory.

Each task reads its inputs from files an earlier task wrote, writes its outputs next to them, and returns
only paths, hashes and small dicts (what Airflow passes through XCom), never data frames. The stage logic
is the pipeline's own (``orchestration.validate``, ``split``, ``transform``, ``train``, ``evaluate``); this
module only moves it onto files so each stage can run as its own task, in its own process.

A rerun of the same DAG run is idempotent: the work directory is keyed by the run id, and a stage whose
result is already recorded there (``<stage>.json``, written last) returns that result instead of computing
it again. That matters most for the bundle: its content hash covers a creation time, so re-creating it
would register a second model version for the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

import pandas as pd
import skops.io as sio

from app.contract.bundle import BundleError, load_trusted, read_metadata
from app.contract.connection import ConnectionSettings
from app.contract.features import FeatureTransformer
from app.contract.hashing import file_digest
from orchestration.config import DEFAULT_PARAMS, ModelConfig, PipelineConfig, load_config
from orchestration.data import generate, read_data, write_csv
from orchestration.gate import GateDecision, decide_promotion
from orchestration.pipeline import evaluate_and_bundle
from orchestration.split import Splits, split
from orchestration.train import train_model
from orchestration.transform import fit_transformer
from orchestration.validate import DataValidationError, validate

log = logging.getLogger(__name__)

# Where run work directories live (one sub-directory per DAG run); compose points it at a shared volume.
WORK_ROOT_ENV: Final = "TRAINING_WORK_DIR"
DEFAULT_WORK_ROOT: Final = Path(tempfile.gettempdir()) / "flight-price-training"

Result = dict[str, Any]


def work_root() -> Path:
    """The directory under which each DAG run gets its work directory."""
    return Path(os.environ.get(WORK_ROOT_ENV) or DEFAULT_WORK_ROOT)


def work_dir_for(run_id: str, root: Path | None = None) -> Path:
    """The run's own work directory: the same run id always maps to the same directory.

    Run ids hold characters unsafe in paths (``manual__2025-01-01T00:00:00+00:00``); a short hash of the
    exact id keeps two ids that sanitise alike apart.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")[:80]
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    path = (root or work_root()) / f"{readable}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def training_config(hyperparameters: Mapping[str, Any] | None = None, params: Path = DEFAULT_PARAMS) -> PipelineConfig:
    """``params.yaml`` with the model section's values overridden by ``hyperparameters``.

    Unknown or invalid hyperparameters are refused (``pydantic.ValidationError`` names them).
    """
    config = load_config(params)
    if not hyperparameters:
        return config
    model = ModelConfig.model_validate({**config.model.model_dump(), **hyperparameters})
    return config.model_copy(update={"model": model})


def _checkpoint(work_dir: Path, stage: str, compute: Callable[[], Result]) -> Result:
    """Return the stage's recorded result if this run already produced it, else compute and record it.

    The record is written after the stage's files, atomically, so a stage that died half-way is redone.
    """
    record = work_dir / f"{stage}.json"
    if record.is_file():
        result: Result = json.loads(record.read_text())
        if all(Path(p).exists() for p in _paths(result)):
            log.info("%s: reusing this run's earlier result (%s)", stage, record)
            return result
    result = compute()
    partial = record.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    partial.replace(record)
    return result


def _paths(result: Result) -> list[str]:
    found: list[str] = []
    for key, value in result.items():
        if isinstance(value, dict):
            found += _paths(value)
        elif isinstance(value, str) and (key.endswith("_path") or key.endswith("_dir")):
            found.append(value)
    return found


def ingest(work_dir: Path, *, data_path: str | None = None, rows: int, seed: int) -> Result:
    """Snapshot the raw data into the work directory and record its sha256.

    The source is ``data_path`` (CSV or Parquet) when given, else the generated flight data set with
    ``rows`` rows. Later stages read the snapshot only, so the hash names exactly what was trained on.
    """

    def snapshot() -> Result:
        raw_dir = work_dir / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        if data_path:
            source = Path(data_path)
            target = raw_dir / f"data{source.suffix.lower()}"
            shutil.copyfile(source, target.with_name(target.name + ".partial"))
            described = str(source)
        else:
            target = raw_dir / "flights.csv"
            write_csv(generate(rows, seed), target.with_name(target.name + ".partial"))
            described = f"generated flight data set ({rows} rows, seed {seed})"
        target.with_name(target.name + ".partial").replace(target)
        digest = file_digest(target)
        log.info("ingest: %s -> %s (sha256 %s)", described, target, digest)
        return {"data_path": str(target), "data_hash": digest, "source": described}

    return _checkpoint(work_dir, "ingest", snapshot)


def validate_data(work_dir: Path, data_path: str, config: PipelineConfig) -> Result:
    """Validate the snapshot; write the clean data as Parquet.

    On bad data the full validation report goes to the log and ``DataValidationError`` fails the task.
    """

    def run() -> Result:
        raw = read_data(Path(data_path), config.data)
        try:
            clean, report = validate(raw, config.data)
        except DataValidationError as exc:
            log.error("validate: the data was refused\n%s", exc.report.format())
            (work_dir / "validation_report.json").write_text(json.dumps(exc.report.as_dict(), indent=2) + "\n")
            raise
        log.info("validate: %s", report.format())
        clean_path = work_dir / "clean.parquet"
        clean.to_parquet(clean_path, index=False)
        (work_dir / "validation_report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        return {
            "clean_path": str(clean_path),
            "rows_in": report.rows_in,
            "rows_out": report.rows_out,
            "rows_dropped": sum(f.count for f in report.dropped),
        }

    return _checkpoint(work_dir, "validate", run)


def split_data(work_dir: Path, clean_path: str, config: PipelineConfig) -> Result:
    """Cut the clean data into train/validation/test Parquet files with the configured seed."""

    def run() -> Result:
        splits = split(pd.read_parquet(clean_path), config.split)
        paths: dict[str, str] = {}
        for name, frame in splits._asdict().items():
            path = work_dir / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            paths[f"{name}_path"] = str(path)
        log.info("split: %s", ", ".join(f"{name} {len(frame)}" for name, frame in splits._asdict().items()))
        return paths

    return _checkpoint(work_dir, "split", run)


def fit_transformer_task(work_dir: Path, train_path: str, config: PipelineConfig) -> Result:
    """Fit the feature transformer on the training split and save it (skops)."""

    def run() -> Result:
        transformer = fit_transformer(pd.read_parquet(train_path), config.data)
        path = work_dir / "transformer.skops"
        sio.dump(transformer, path)
        log.info("fit transformer: %d model features", len(transformer.feature_names_out_))
        return {"transformer_path": str(path)}

    return _checkpoint(work_dir, "fit_transformer", run)


def train_task(
    work_dir: Path, *, transformer_path: str, train_path: str, validation_path: str, config: PipelineConfig
) -> Result:
    """Train the regressor with the config's hyperparameters and save it (skops)."""

    def run() -> Result:
        transformer = _load_transformer(transformer_path)
        model = train_model(
            transformer, pd.read_parquet(train_path), pd.read_parquet(validation_path), config.data, config.model
        )
        path = work_dir / "model.skops"
        sio.dump(model, path)
        log.info("train: %d boosting iterations with %s", model.n_iter_, config.model.model_dump())
        return {"model_path": str(path), "n_iter": int(model.n_iter_)}

    return _checkpoint(work_dir, "train", run)


def evaluate_task(
    work_dir: Path,
    *,
    data_hash: str,
    transformer_path: str,
    model_path: str,
    split_paths: Mapping[str, str],
    config: PipelineConfig,
) -> Result:
    """The pipeline's ``evaluate_and_bundle`` on this run's files: a model that does not beat the naive
    baseline by ``evaluate.baseline_margin`` fails the task (``QualityGateError``) and no bundle is written.
    """

    def run() -> Result:
        transformer = _load_transformer(transformer_path)
        model = load_trusted(Path(model_path))
        splits = Splits(*(pd.read_parquet(split_paths[f"{n}_path"]) for n in ("train", "validation", "test")))
        bundle_dir = work_dir / "bundle"
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
            "bundle_dir": str(bundle_dir),
            "content_hash": metadata.content_hash,
            "metrics": metadata.metrics,
            "baseline_metrics": metadata.baseline_metrics,
        }

    return _checkpoint(work_dir, "evaluate", run)


def gate_task(bundle_dir: str, test_path: str, settings: ConnectionSettings, margin: float) -> Result:
    """Decide whether the new bundle replaces the registry's current champion, both scored on this run's test
    split (``test_path``); log and return why."""
    metadata = read_metadata(Path(bundle_dir))
    decision: GateDecision = decide_promotion(
        metadata,
        pd.read_parquet(test_path),
        settings,
        margin=margin,
        report=lambda line: log.info("gate: champion: %s", line),
    )
    log.info("gate: %s", decision.reason)
    return decision.as_dict()


def publish_task(work_dir: Path, bundle_dir: str, decision: Mapping[str, Any], settings: ConnectionSettings) -> Result:
    """Push the bundle to the DVC remote and register it; move the alias only if the gate said so. The gate's
    numbers and decision are recorded on the new version's run.

    Publishing is idempotent (the same bundle yields the same version), so a rerun changes nothing.
    """
    from orchestration.publish import PublishTarget, publish_bundle

    target = PublishTarget.from_settings(settings)
    gated = GateDecision(**decision)
    alias = settings.model_alias if gated.promote else None
    published = publish_bundle(
        Path(bundle_dir),
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
    (work_dir / "published.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _load_transformer(path: str) -> FeatureTransformer:
    transformer = load_trusted(Path(path))
    if not isinstance(transformer, FeatureTransformer):
        raise BundleError(f"{path} holds {type(transformer).__name__}, not a FeatureTransformer")
    return transformer
