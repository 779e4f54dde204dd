"""The whole training pipeline in one call: ingest -> validate -> split -> fit transformer -> train -> evaluate
and bundle (-> record in MLflow, given a tracking target). The Airflow DAG runs the same stage functions as
separate tasks (``orchestration.tasks``); both end with ``evaluate_and_bundle``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from sklearn.ensemble import HistGradientBoostingRegressor

from app.contract.bundle import Metadata, load_bundle, save_bundle
from app.contract.features import FeatureTransformer
from app.contract.hashing import file_digest
from app.contract.progress import Report, quiet
from orchestration.config import PipelineConfig
from orchestration.data import read_data
from orchestration.evaluate import check_beats_baseline, evaluate
from orchestration.split import Splits, split
from orchestration.train import train_model
from orchestration.transform import example_from_schema, feature_schema, fit_transformer, target_summary
from orchestration.validate import ValidationReport, validate

if TYPE_CHECKING:
    from orchestration.tracking import TrackingTarget

STAGES = ("ingest", "validate", "split", "fit transformer", "train", "evaluate and bundle")
RECORD = "record in MLflow"  # the last stage when a tracking target is given


@dataclass
class Progress:
    """Prints one line per stage as it finishes, with its wall time; keeps the timings."""

    stream: TextIO | None = field(default_factory=lambda: sys.stderr)
    timings: dict[str, float] = field(default_factory=dict)
    stages: tuple[str, ...] = STAGES

    @contextmanager
    def stage(self, name: str) -> Iterator[Callable[[str], None]]:
        """Print the stage's start; the block notes details (printed with its time at the end)."""
        details: list[str] = []
        started = time.perf_counter()
        if self.stream:
            print(f"[{self.stages.index(name) + 1}/{len(self.stages)}] {name} ...", file=self.stream, flush=True)
        yield details.append
        self.timings[name] = time.perf_counter() - started
        if self.stream:
            suffix = f": {'; '.join(details)}" if details else ""
            print(f"      {name} done in {self.timings[name]:.1f}s{suffix}", file=self.stream, flush=True)

    def say(self, name: str, line: str) -> None:
        """Print one line of a stage while it runs (a long fit's progress)."""
        if self.stream:
            print(f"      {name}: {line}", file=self.stream, flush=True)


@dataclass(frozen=True)
class TrainResult:
    bundle_dir: Path
    metadata: Metadata
    report: ValidationReport
    timings: dict[str, float]
    run_id: str | None = None  # the MLflow training run, when one was recorded


def run_pipeline(
    data_path: Path,
    config: PipelineConfig,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    tracking: TrackingTarget | None = None,
) -> TrainResult:
    """Train on ``data_path`` and write a verified bundle to ``out_dir``; with ``tracking``, record the training
    run in MLflow (``orchestration.tracking``: params, metrics, the data set, the bundle's hashes, plots).

    Raises ``DataValidationError`` for bad data and ``QualityGateError`` for a model that does not beat
    the naive baseline; nothing is written in either case.
    """
    progress = progress or Progress()
    if tracking is not None:
        progress.stages = (*STAGES, RECORD)
    data = config.data
    with progress.stage("ingest") as note:
        raw = read_data(data_path, data)
        data_hash = file_digest(data_path)
        note(f"{len(raw)} rows, sha256 {data_hash[:12]}")
    with progress.stage("validate") as note:
        clean, report = validate(raw, data)
        note(f"{report.rows_out} rows kept, {sum(f.count for f in report.dropped)} dropped")
    with progress.stage("split") as note:
        splits = split(clean, config.split)
        note(f"train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}")
    with progress.stage("fit transformer") as note:
        transformer = fit_transformer(splits.train, data)
        note(f"{len(transformer.feature_names_out_)} model features")
    with progress.stage("train") as note:
        model = train_model(
            transformer,
            splits.train,
            splits.validation,
            data,
            config.model,
            report=lambda line: progress.say("train", line),
        )
        note(f"{model.n_iter_} boosting iterations")
    with progress.stage("evaluate and bundle") as note:
        metadata = evaluate_and_bundle(out_dir, transformer, model, splits, config, data_hash, report=note)
    run_id = None
    if tracking is not None:
        with progress.stage(RECORD) as note:
            from orchestration.tracking import DataSource, gather_evidence, record_training

            started = time.perf_counter()
            evidence = gather_evidence(model, transformer, splits, config)
            note(f"validation metrics, permutation importance and plots in {time.perf_counter() - started:.1f}s")
            run_id = record_training(
                tracking,
                bundle_dir=out_dir,
                metadata=metadata,
                config=config,
                data=DataSource(raw, str(data_path.resolve()), data_hash),
                evidence=evidence,
                report=note,
            )
    return TrainResult(bundle_dir=out_dir, metadata=metadata, report=report, timings=progress.timings, run_id=run_id)


def evaluate_and_bundle(
    out_dir: Path,
    transformer: FeatureTransformer,
    model: HistGradientBoostingRegressor,
    splits: Splits,
    config: PipelineConfig,
    data_hash: str,
    *,
    report: Report = quiet,
) -> Metadata:
    """The end of every training run: score the model on the test split against the naive baseline, refuse
    it (``QualityGateError``, nothing written) unless it beats the baseline by ``evaluate.baseline_margin``,
    write the bundle (schema and example from the splits), and prove it verifies and loads."""
    data = config.data
    metrics, baseline = evaluate(
        splits.test[data.target],
        model.predict(transformer.transform(splits.test)),
        float(splits.train[data.target].mean()),
    )
    report(f"test RMSE {metrics['rmse']:.2f} vs baseline {baseline['rmse']:.2f}")
    check_beats_baseline(metrics, baseline, config.evaluate.baseline_margin)
    features = feature_schema(splits.train, data, transformer)
    save_bundle(
        out_dir,
        transformer=transformer,
        model=model,
        features=features,
        target=target_summary(splits.train, data),
        metrics=metrics,
        baseline_metrics=baseline,
        data_hash=data_hash,
        example=example_from_schema(splits.train, features),
        params={**config.model.model_dump(), "n_iter": int(model.n_iter_)},
        rows={"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)},
        name=config.bundle_name,
        check_columns=splits.test,
    )
    metadata = load_bundle(out_dir).metadata  # verified and loaded, trusted types only, before anyone uses it
    report(f"bundle {out_dir} (content hash {metadata.content_hash[:12]})")
    return metadata


def metrics_table(metadata: Metadata) -> str:
    """The model's and the baseline's test metrics side by side."""
    lines = [f"{'metric':<8}{'model':>14}{'baseline':>14}"]
    for name in ("rmse", "mae", "r2"):
        lines.append(f"{name:<8}{metadata.metrics[name]:>14.4f}{metadata.baseline_metrics[name]:>14.4f}")
    return "\n".join(lines)
