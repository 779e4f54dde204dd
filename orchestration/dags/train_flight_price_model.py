"""Train the flight-price model and publish it: ingest -> validate -> split -> fit transformer -> train ->
evaluate -> gate -> publish.

Each task is a thin call into ``orchestration.tasks``; tasks hand each other paths and small dicts through
XCom, never data. Connection settings (``DVC_REMOTE_URL``, ``MLFLOW_TRACKING_URI``, ``MODEL_NAME``, ...)
are read from the environment by the serving settings model, so training and serving agree on one set of
names; S3 credentials come from the standard ``AWS_*`` variables and are never logged.

Trigger with a conf such as ``{"rows": 50000, "hyperparameters": {"learning_rate": 0.05},
"promotion_margin": 0.02}`` or ``{"data_path": "/data/flights.parquet"}``.

The task bodies import ``orchestration.tasks`` (scikit-learn, skops, ...) when they run, not at module
level: the dag-processor re-parses this file periodically, and parsing should stay cheap.
"""

# TaskFlow calls pass XComArgs where the task functions declare the values Airflow resolves them to.
# mypy: disable-error-code="arg-type"
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from airflow.sdk import Param, dag, get_current_context, task

from orchestration.data import DEFAULT_ROWS, DEFAULT_SEED
from orchestration.gate import DEFAULT_MARGIN

DAG_ID = "train_flight_price_model"

P = ParamSpec("P")
R = TypeVar("R")


def _without_skops_noise(body: Callable[P, R]) -> Callable[P, R]:
    """Run a task body with skops' lookups of Airflow's deprecated attributes silenced.

    skops names numpy ufuncs by searching every loaded module, which touches Airflow's deprecated module
    attributes: over a thousand FutureWarnings per task log, about Airflow, not about this code. (A filter set
    at module level would not last: Airflow restores the warning filters after parsing this file.)
    """

    @functools.wraps(body)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> R:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
            return body(*args, **kwargs)

    return quiet


# Tasks that talk to S3 or MLflow retry transient failures, waiting 10 s, 20 s, 40 s, 80 s (at most 5 min).
REMOTE_RETRIES: Final = 4
REMOTE_RETRY_DELAY: Final = timedelta(seconds=10)
REMOTE_BACKOFF: Final = 2.0  # multiplier of the delay per retry
REMOTE_MAX_RETRY_DELAY: Final = timedelta(minutes=5)


def _run_context() -> tuple[Path, dict[str, Any]]:
    """This run's work directory (keyed by run id) and its params."""
    from orchestration.tasks import work_dir_for

    context = get_current_context()
    run_id = str(context["run_id"])
    return work_dir_for(run_id), dict(context["params"])


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # runs compare with, and move, the same alias: one at a time
    tags=["training", "flight-price"],
    doc_md=__doc__,
    default_args={"retries": 0, "execution_timeout": timedelta(hours=2)},
    params={
        "rows": Param(DEFAULT_ROWS, type="integer", minimum=100, description="Rows to generate (no data_path)."),
        "seed": Param(DEFAULT_SEED, type="integer", description="Seed of the generated data set."),
        "data_path": Param(
            None, type=["null", "string"], description="CSV or Parquet file to train on instead of generating."
        ),
        "hyperparameters": Param(
            {}, type="object", description='Overrides of params.yaml\'s model section, e.g. {"max_iter": 100}.'
        ),
        "promotion_margin": Param(
            DEFAULT_MARGIN,
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            description="Relative RMSE improvement over the champion needed to move the alias.",
        ),
    },
)
def train_flight_price_model() -> None:
    @task
    @_without_skops_noise
    def ingest() -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        tasks.training_config(params["hyperparameters"])  # a misspelt hyperparameter fails here, before any work
        return tasks.ingest(work_dir, data_path=params["data_path"], rows=params["rows"], seed=params["seed"])

    @task
    @_without_skops_noise
    def validate(ingested: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        return tasks.validate_data(work_dir, ingested["data_path"], tasks.training_config(params["hyperparameters"]))

    @task
    @_without_skops_noise
    def split(validated: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        return tasks.split_data(work_dir, validated["clean_path"], tasks.training_config(params["hyperparameters"]))

    @task
    @_without_skops_noise
    def fit_transformer(splits: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        config = tasks.training_config(params["hyperparameters"])
        return tasks.fit_transformer_task(work_dir, splits["train_path"], config)

    @task
    @_without_skops_noise
    def train(splits: dict[str, Any], fitted: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        return tasks.train_task(
            work_dir,
            transformer_path=fitted["transformer_path"],
            train_path=splits["train_path"],
            validation_path=splits["validation_path"],
            config=tasks.training_config(params["hyperparameters"]),
        )

    @task
    @_without_skops_noise
    def evaluate(
        ingested: dict[str, Any], splits: dict[str, Any], fitted: dict[str, Any], trained: dict[str, Any]
    ) -> dict[str, Any]:
        from orchestration import tasks

        work_dir, params = _run_context()
        return tasks.evaluate_task(
            work_dir,
            data_hash=ingested["data_hash"],
            transformer_path=fitted["transformer_path"],
            model_path=trained["model_path"],
            split_paths=splits,
            config=tasks.training_config(params["hyperparameters"]),
        )

    @task(
        retries=REMOTE_RETRIES,
        retry_delay=REMOTE_RETRY_DELAY,
        retry_exponential_backoff=REMOTE_BACKOFF,
        max_retry_delay=REMOTE_MAX_RETRY_DELAY,
    )
    @_without_skops_noise
    def gate(evaluated: dict[str, Any]) -> dict[str, Any]:
        from app.settings import load_settings
        from orchestration import tasks

        _, params = _run_context()
        return tasks.gate_task(evaluated["bundle_dir"], load_settings(), float(params["promotion_margin"]))

    @task(
        retries=REMOTE_RETRIES,
        retry_delay=REMOTE_RETRY_DELAY,
        retry_exponential_backoff=REMOTE_BACKOFF,
        max_retry_delay=REMOTE_MAX_RETRY_DELAY,
    )
    @_without_skops_noise
    def publish(evaluated: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        from app.settings import load_settings
        from orchestration import tasks

        work_dir, _ = _run_context()
        return tasks.publish_task(work_dir, evaluated["bundle_dir"], decision, load_settings())

    ingested = ingest()
    splits = split(validate(ingested))
    fitted = fit_transformer(splits)
    trained = train(splits, fitted)
    evaluated = evaluate(ingested, splits, fitted, trained)
    publish(evaluated, gate(evaluated))


train_flight_price_model()
