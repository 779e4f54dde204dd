"""The training run in MLflow: what a reviewer opens to judge a model before it is promoted.

One MLflow run per training, in the experiment named after the model. It holds the hyperparameters and the
split (params), the test, validation and baseline metrics and the loss by boosting iteration (metrics), the
data set trained on (a dataset input: its source, schema and row count, its sha256 as digest and tag), the
bundle's hashes (tags: content hash, DVC hash, data hash, training fingerprint) and four plots (artifacts
under ``plots/``): residuals and predicted against actual on the test split, permutation importance on the
validation split, and the training/validation loss by iteration.

Publishing (``orchestration.publish``) finds this run by the bundle's content hash and registers the model in
it, so the registered version's run is the training run. A bundle trained without a tracking server gets a
run of its own when it is published, as before.

Everything goes through an ``MlflowClient`` made for the tracking URI, never MLflow's process-global
configuration. matplotlib (Agg backend, no display) loads only when the plots are drawn.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
import pandas as pd

from app.contract.bundle import Metadata, training_fingerprint
from app.contract.progress import Report, quiet
from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DATA_HASH,
    TAG_DVC_HASH,
    TAG_TRAINING_FINGERPRINT,
    mlflow_client,
)
from orchestration.config import PipelineConfig
from orchestration.evaluate import regression_metrics
from orchestration.split import Splits

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from app.contract.features import FeatureTransformer

TAG_RUN_KIND: Final = "run_kind"  # "training" on a training run
TRAINING: Final = "training"
PLOTS: Final = "plots"  # the plots' folder among the run's artifacts
PLOT_FILES: Final = ("residuals.png", "predicted_vs_actual.png", "feature_importance.png", "loss_by_iteration.png")
DIGEST_CHARS: Final = 36  # MLflow stores at most 36 characters of a dataset digest
POINTS: Final = 5_000  # test rows drawn in the scatter plots (all of them above this only slows the drawing)
IMPORTANCE_ROWS: Final = 3_000  # validation rows permuted for the importance
IMPORTANCE_REPEATS: Final = 2
SCHEMA_ROWS: Final = 1_000  # rows the dataset input's schema is inferred from


@dataclass(frozen=True)
class TrackingTarget:
    """The MLflow tracking server (or local store) and the experiment a training run goes to."""

    tracking_uri: str
    experiment: str


@dataclass(frozen=True)
class DataSource:
    """The data set a model was trained on: the frame read (for its schema and size), where it came from, its
    sha256."""

    frame: pd.DataFrame
    source: str  # a path or URI
    sha256: str
    name: str = ""


@dataclass
class Evidence:
    """What the training run shows beyond the bundle's metadata: validation metrics, the loss by iteration,
    permutation importance and the plots."""

    metrics: dict[str, float]
    loss: dict[str, list[float]]  # "train"/"validation" -> RMSE at each iteration (0: the initial prediction)
    importance: dict[str, tuple[float, float]]  # feature -> (mean, std) of the validation RMSE increase
    figures: dict[str, Figure] = field(default_factory=dict)


def experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    """The experiment ``name``, created if needed; a local sqlite store keeps its artifacts beside the database."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///"):
        database = Path(urlparse(tracking_uri).path)
        location = (database.parent / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def training_run(client: Any, experiment: str, content_hash: str) -> str | None:
    """The id of the finished training run that made the bundle ``content_hash``, if there is one."""
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.{TAG_CONTENT_HASH} = '{content_hash}' and tags.{TAG_RUN_KIND} = '{TRAINING}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return str(runs[0].info.run_id) if runs else None


def loss_by_iteration(model: Any) -> dict[str, list[float]]:
    """The training and validation RMSE at each boosting iteration, from the scores HistGradientBoosting keeps
    when it early-stops on the loss (``train_score_`` on a sample of the training split, ``validation_score_``):
    each score is minus the half squared error, so RMSE = sqrt(-2 x score). Empty for other scorers."""
    if getattr(model, "scoring", "loss") != "loss":
        return {}
    curves: dict[str, list[float]] = {}
    for name in ("train", "validation"):
        scores = np.asarray(getattr(model, f"{name}_score_", []), dtype=np.float64)
        if scores.size:
            curves[name] = [float(v) for v in np.sqrt(np.maximum(-2.0 * scores, 0.0))]
    return curves


def permutation_importance(
    model: Any,
    transformer: FeatureTransformer,
    frame: pd.DataFrame,
    target: str,
    features: list[str],
    *,
    repeats: int = IMPORTANCE_REPEATS,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """How much the RMSE on ``frame`` grows when one input column is shuffled: (mean, std) over ``repeats``.

    Columns are shuffled before the transformer, so a date counts once, not once per derived feature.
    """
    rng = np.random.default_rng(seed)
    truth = frame[target].to_numpy(dtype=np.float64)

    def rmse(data: pd.DataFrame) -> float:
        return regression_metrics(truth, model.predict(transformer.transform(data)))["rmse"]

    reference = rmse(frame)
    out: dict[str, tuple[float, float]] = {}
    for name in features:
        shuffled = frame.copy()
        increases = []
        for _ in range(repeats):
            shuffled[name] = rng.permutation(frame[name].to_numpy())
            increases.append(rmse(shuffled) - reference)
        out[name] = (float(np.mean(increases)), float(np.std(increases)))
    return out


def gather_evidence(
    model: Any, transformer: FeatureTransformer, splits: Splits, config: PipelineConfig, *, plots: bool = True
) -> Evidence:
    """Score the model on the validation and test splits, permute each input on (a sample of) the validation
    split, read the loss curves, and draw the plots.

    Predictions run on one thread: these batches are small, and OpenMP's threads waiting on a busy machine's
    cores made them up to seven times slower (5 s instead of 0.8 s for 27,188 rows, load 11 on 2 cores).
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1, user_api="openmp"):
        return _gather(model, transformer, splits, config, plots=plots)


def _gather(
    model: Any, transformer: FeatureTransformer, splits: Splits, config: PipelineConfig, *, plots: bool
) -> Evidence:
    target = config.data.target
    validation_truth = splits.validation[target].to_numpy(dtype=np.float64)
    validation_pred = model.predict(transformer.transform(splits.validation))
    test_truth = splits.test[target].to_numpy(dtype=np.float64)
    test_pred = np.asarray(model.predict(transformer.transform(splits.test)), dtype=np.float64)
    metrics = {f"validation_{k}": v for k, v in regression_metrics(validation_truth, validation_pred).items()}
    metrics["n_iter"] = float(model.n_iter_)
    sample = splits.validation
    if len(sample) > IMPORTANCE_ROWS:
        sample = sample.sample(n=IMPORTANCE_ROWS, random_state=0)
    importance = permutation_importance(model, transformer, sample, target, config.data.features)
    evidence = Evidence(metrics=metrics, loss=loss_by_iteration(model), importance=importance)
    if plots:
        evidence.figures = draw(test_truth, test_pred, importance, evidence.loss, target)
    return evidence


def draw(
    truth: npt.NDArray[np.float64],
    predicted: npt.NDArray[np.float64],
    importance: Mapping[str, tuple[float, float]],
    loss: Mapping[str, list[float]],
    target: str,
) -> dict[str, Figure]:
    """The four plots, as matplotlib figures (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    shown = np.arange(truth.size)
    if truth.size > POINTS:
        shown = np.sort(np.random.default_rng(0).choice(truth.size, POINTS, replace=False))
    y, p = truth[shown], predicted[shown]
    residual = p - y
    note = f"test split, {shown.size:,} of {truth.size:,} rows" if shown.size < truth.size else "test split"
    figures: dict[str, Figure] = {}

    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.scatter(p, residual, s=4, alpha=0.3)
    left.axhline(0.0, color="black", linewidth=1)
    left.set(xlabel=f"predicted {target}", ylabel="residual (predicted - actual)", title=f"Residuals ({note})")
    right.hist(predicted - truth, bins=60)
    right.set(xlabel="residual (predicted - actual)", ylabel="rows", title="Residual distribution (test split)")
    figures["residuals.png"] = fig

    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(y, p, s=4, alpha=0.3)
    low, high = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = actual")
    ax.set(xlabel=f"actual {target}", ylabel=f"predicted {target}", title=f"Predicted vs actual ({note})")
    ax.legend(loc="upper left")
    figures["predicted_vs_actual.png"] = fig

    ranked = sorted(importance.items(), key=lambda item: item[1][0])
    fig = Figure(figsize=(6, 0.45 * len(ranked) + 1.5), layout="constrained")
    ax = fig.subplots()
    ax.barh([name for name, _ in ranked], [m for _, (m, _) in ranked], xerr=[s for _, (_, s) in ranked])
    ax.set(xlabel="validation RMSE increase when shuffled", title="Permutation importance (validation split)")
    figures["feature_importance.png"] = fig

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for name, curve in loss.items():
        label = "training (sample of the train split)" if name == "train" else "validation split"
        ax.plot(range(len(curve)), curve, label=label)
    ax.set(xlabel="boosting iteration", ylabel="RMSE", title="Loss by iteration")
    if loss:
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no loss recorded (scoring is not the loss)", ha="center", transform=ax.transAxes)
    figures["loss_by_iteration.png"] = fig
    return figures


def run_params(metadata: Metadata, config: PipelineConfig) -> dict[str, Any]:
    """The run's params: the model's hyperparameters (and iterations run), the split and the gate's margin."""
    return {
        **metadata.params,
        **{f"rows_{k}": v for k, v in metadata.rows.items()},
        **{f"split_{k}": v for k, v in config.split.model_dump().items()},
        "baseline_margin": config.evaluate.baseline_margin,
    }


def bundle_tags(metadata: Metadata, dvc_hash: str) -> dict[str, str]:
    """The tags naming the bundle, as on the registered version."""
    return {
        TAG_DVC_HASH: dvc_hash,
        TAG_CONTENT_HASH: metadata.content_hash,
        TAG_DATA_HASH: metadata.data_hash,
        TAG_TRAINING_FINGERPRINT: training_fingerprint(metadata),
    }


def record_training(
    target: TrackingTarget,
    *,
    bundle_dir: Path,
    metadata: Metadata,
    config: PipelineConfig,
    data: DataSource,
    evidence: Evidence,
    report: Report = quiet,
) -> str:
    """Log one training run (see the module's docstring) and return its id.

    A bundle already recorded (a finished training run with its content hash: a retried task) keeps that run.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    from app.contract.store import dir_hash

    client = mlflow_client(target.tracking_uri)
    experiment = experiment_id(client, target.tracking_uri, target.experiment)
    existing = training_run(client, experiment, metadata.content_hash)
    if existing is not None:
        report(f"mlflow: bundle {metadata.content_hash[:12]} is already recorded by run {existing}")
        return existing
    tags = {
        TAG_RUN_KIND: TRAINING,
        **bundle_tags(metadata, dir_hash(bundle_dir)),
        **{f"version.{k}": v for k, v in metadata.library_versions.items()},
        "data_source": data.source[:5000],
    }
    run = client.create_run(experiment, run_name=f"train-{metadata.content_hash[:12]}", tags=tags)
    run_id = str(run.info.run_id)
    try:
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, 0)
            for k, v in {
                **metadata.metrics,
                **{f"baseline_{k}": v for k, v in metadata.baseline_metrics.items()},
                **evidence.metrics,
                **{f"importance_{k}": mean for k, (mean, _) in evidence.importance.items()},
            }.items()
        ]
        for name, curve in evidence.loss.items():  # charts of their own in the run's Model metrics tab
            metrics += [Metric(f"loss_{name}_rmse", value, now, step) for step, value in enumerate(curve)]
        params = [Param(k, str(v)) for k, v in run_params(metadata, config).items()]
        for start in range(0, len(metrics), 1000):  # log_batch takes up to 1,000 metrics and 100 params
            client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways" (all of them local)
            warnings.filterwarnings("ignore", message="The specified dataset source", category=UserWarning)
            from mlflow.data.pandas_dataset import from_pandas

            described = from_pandas(  # the schema from the first rows: inferring it from all took 16 s
                data.frame.head(SCHEMA_ROWS),
                source=data.source,
                name=data.name or Path(urlparse(data.source).path).name or "data",
                digest=data.sha256[:DIGEST_CHARS],
                targets=config.data.target,
            )._to_mlflow_entity()
        dataset = Dataset(
            name=described.name,
            digest=described.digest,
            source_type=described.source_type,
            source=described.source,
            schema=described.schema,
            profile=json.dumps({"num_rows": len(data.frame), "num_elements": int(data.frame.size)}),
        )
        input_tags = [InputTag("mlflow.data.context", TRAINING), InputTag(TAG_DATA_HASH, data.sha256)]
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=input_tags)])
        for name, figure in evidence.figures.items():
            client.log_figure(run_id, figure, f"{PLOTS}/{name}")
        client.set_tag(run_id, "mlflow.note.content", _note(metadata, evidence))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    report(
        f"mlflow: run {run_id} in experiment {target.experiment!r}: {len(params)} params, "
        f"{len(metrics)} metric values, the data set, {len(evidence.figures)} plots"
    )
    return run_id


def _note(metadata: Metadata, evidence: Evidence) -> str:
    """The run's description (shown at the top of its page)."""
    lines = [
        f"Training run of bundle `{metadata.content_hash[:12]}` (data sha256 `{metadata.data_hash[:12]}`).",
        "",
        f"Test RMSE {metadata.metrics['rmse']:.2f} against the naive baseline's "
        f"{metadata.baseline_metrics['rmse']:.2f}; validation RMSE {evidence.metrics['validation_rmse']:.2f}; "
        f"{int(evidence.metrics['n_iter'])} boosting iterations.",
        "",
        f"Plots under `{PLOTS}/` in Artifacts; the loss by iteration also as the metrics `loss_*_rmse`.",
    ]
    return "\n".join(lines)
