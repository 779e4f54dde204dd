"""Train the flight-price model and publish it: ingest -> validate -> split -> fit transformer -> train ->
evaluate -> gate -> publish.

Each task is a thin call into ``orchestration.tasks``; tasks hand each other paths and small dicts through
XCom, never data. Connection settings (``DVC_REMOTE_URL``, ``MLFLOW_TRACKING_URI``, ``MODEL_NAME``, ...)
are read from the environment by the connection settings model training and serving share
(``app.contract.connection``); S3 credentials come from the standard ``AWS_*`` variables and are never logged.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from airflow.sdk import Param, dag, get_current_context, task

from orchestration.data import DEFAULT_ROWS, DEFAULT_SEED
from orchestration.gate import DEFAULT_MARGIN

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import Task

    from app.contract.connection import ConnectionSettings
    from orchestration.config import PipelineConfig

DAG_ID = "train_flight_price_model"

P = ParamSpec("P")
R = TypeVar("R")

# Tasks that talk to S3 or MLflow retry transient failures, waiting 10 s, 20 s, 40 s, 80 s (at most 5 min).
REMOTE_RETRIES: Final = 4
REMOTE_RETRY_DELAY: Final = timedelta(seconds=10)
REMOTE_BACKOFF: Final = 2.0  # multiplier of the delay per retry
REMOTE_MAX_RETRY_DELAY: Final = timedelta(minutes=5)


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


def training_task(body: Callable[P, R]) -> Task[P, R]:
    """A task of this DAG: no retries (a stage on local data fails the same way twice)."""
    return task(_without_skops_noise(body))


def remote_training_task(body: Callable[P, R]) -> Task[P, R]:
    """A task of this DAG that talks to S3 or MLflow: retried with backoff.

    (A fresh decorator each time: Airflow's decorator factory keeps the first task's id in its arguments.)
    """
    decorator = task(
        retries=REMOTE_RETRIES,
        retry_delay=REMOTE_RETRY_DELAY,
        retry_exponential_backoff=REMOTE_BACKOFF,
        max_retry_delay=REMOTE_MAX_RETRY_DELAY,
    )
    return decorator(_without_skops_noise(body))


@dataclass(frozen=True)
class Run:
    """What every task of one DAG run starts from: its work directory (keyed by run id) and its params."""

    work_dir: Path
    params: dict[str, Any]

    @classmethod
    def current(cls) -> Run:
        from orchestration.tasks import work_dir_for

        context = get_current_context()
        return cls(work_dir_for(str(context["run_id"])), dict(context["params"]))

    @property
    def connection(self) -> ConnectionSettings:
        """The registry and DVC remote from the environment (the names the serving container reads)."""
        from app.contract.connection import load_connection_settings

        return load_connection_settings()

    @property
    def config(self) -> PipelineConfig:
        """``params.yaml`` with this run's hyperparameters (a misspelt one fails the task, named)."""
        from orchestration.tasks import training_config

        return training_config(self.params["hyperparameters"])


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
            description="Relative RMSE improvement over the champion, both on this run's test split, needed to "
            "move the alias.",
        ),
    },
)
def train_flight_price_model() -> None:
    @training_task
    def ingest() -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        _ = run.config  # a misspelt hyperparameter fails here, before any work
        return tasks.ingest(
            run.work_dir, data_path=run.params["data_path"], rows=run.params["rows"], seed=run.params["seed"]
        )

    @training_task
    def validate(ingested: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.validate_data(run.work_dir, ingested["data_path"], run.config)

    @training_task
    def split(validated: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.split_data(run.work_dir, validated["clean_path"], run.config)

    @training_task
    def fit_transformer(splits: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.fit_transformer_task(run.work_dir, splits["train_path"], run.config)

    @training_task
    def train(splits: dict[str, Any], fitted: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.train_task(
            run.work_dir,
            transformer_path=fitted["transformer_path"],
            train_path=splits["train_path"],
            validation_path=splits["validation_path"],
            config=run.config,
        )

    @training_task
    def evaluate(
        ingested: dict[str, Any], splits: dict[str, Any], fitted: dict[str, Any], trained: dict[str, Any]
    ) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.evaluate_task(
            run.work_dir,
            data_hash=ingested["data_hash"],
            transformer_path=fitted["transformer_path"],
            model_path=trained["model_path"],
            split_paths=splits,
            config=run.config,
        )

    @remote_training_task
    def gate(evaluated: dict[str, Any], splits: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.gate_task(
            evaluated["bundle_dir"], splits["test_path"], run.connection, float(run.params["promotion_margin"])
        )

    @remote_training_task
    def publish(evaluated: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        return tasks.publish_task(run.work_dir, evaluated["bundle_dir"], decision, run.connection)

    ingested = ingest()
    splits = split(validate(ingested))
    fitted = fit_transformer(splits)
    trained = train(splits, fitted)
    evaluated = evaluate(ingested, splits, fitted, trained)
    publish(evaluated, gate(evaluated, splits))


train_flight_price_model()
