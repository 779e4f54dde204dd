"""Train the flight-price model and publish it: ingest -> validate -> split -> fit transformer -> train ->
evaluate -> gate -> publish.

Each task is a thin call into ``orchestration.tasks``; tasks hand each other URIs in the run's work area
(``TRAINING_WORK_URL``: a prefix on the S3 store, so workers need share no disk) and small dicts through XCom,
never data. Connection settings (``DVC_REMOTE_URL``, ``MLFLOW_TRACKING_URI``, ``MODEL_NAME``, ...)
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from airflow.sdk import Param, dag, get_current_context, task

from orchestration.defaults import DEFAULT_MARGIN, DEFAULT_ROWS, DEFAULT_SEED

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import Task

    from app.contract.connection import ConnectionSettings
    from orchestration.config import PipelineConfig
    from orchestration.work_area import WorkArea

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
    """What every task of one DAG run starts from: its run id (which keys its work area) and its params."""

    run_id: str
    params: dict[str, Any]

    @classmethod
    def current(cls) -> Run:
        context = get_current_context()
        return cls(str(context["run_id"]), dict(context["params"]))

    @contextmanager
    def area(self) -> Iterator[WorkArea]:
        """The run's work area on the store every worker reaches (``TRAINING_WORK_URL``)."""
        from orchestration.work_area import open_area

        with open_area(self.run_id) as area:
            yield area

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
            None,
            type=["null", "string"],
            description="CSV or Parquet file to train on instead of generating: a path on the workers, or an s3:// "
            "URI on the work area's store.",
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
        with run.area() as area:
            return tasks.ingest(
                area, data_path=run.params["data_path"], rows=run.params["rows"], seed=run.params["seed"]
            )

    @training_task
    def validate(ingested: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.validate_data(area, ingested["data_uri"], run.config)

    @training_task
    def split(validated: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.split_data(area, validated["clean_uri"], run.config)

    @training_task
    def fit_transformer(splits: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.fit_transformer_task(area, splits["train_uri"], run.config)

    @training_task
    def train(splits: dict[str, Any], fitted: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.train_task(
                area,
                transformer_uri=fitted["transformer_uri"],
                train_uri=splits["train_uri"],
                validation_uri=splits["validation_uri"],
                config=run.config,
            )

    @training_task
    def evaluate(
        ingested: dict[str, Any], splits: dict[str, Any], fitted: dict[str, Any], trained: dict[str, Any]
    ) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.evaluate_task(
                area,
                data_hash=ingested["data_hash"],
                transformer_uri=fitted["transformer_uri"],
                model_uri=trained["model_uri"],
                split_uris=splits,
                config=run.config,
            )

    @remote_training_task
    def gate(evaluated: dict[str, Any], splits: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.gate_task(
                area,
                evaluated["bundle_uri"],
                splits["test_uri"],
                run.connection,
                float(run.params["promotion_margin"]),
            )

    @remote_training_task
    def publish(evaluated: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        from orchestration import tasks

        run = Run.current()
        with run.area() as area:
            return tasks.publish_task(area, evaluated["bundle_uri"], decision, run.connection)

    ingested = ingest()
    splits = split(validate(ingested))
    fitted = fit_transformer(splits)
    trained = train(splits, fitted)
    evaluated = evaluate(ingested, splits, fitted, trained)
    publish(evaluated, gate(evaluated, splits))


train_flight_price_model()
