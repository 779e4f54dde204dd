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
import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Final, ParamSpec

from airflow.sdk import Param, dag, get_current_context, task

from orchestration.defaults import DEFAULT_MARGIN, DEFAULT_ROWS, DEFAULT_SEED

if TYPE_CHECKING:
    from airflow.sdk.bases.decorator import Task

    from app.contract.connection import ConnectionSettings
    from orchestration.config import PipelineConfig
    from orchestration.work_area import WorkArea

DAG_ID = "train_flight_price_model"

P = ParamSpec("P")
# What a task returns and hands on through XCom: URIs, hashes, small dicts (``orchestration.work_area.Result``,
# not imported: parsing stays cheap). Airflow reads it at parse time: a mapping, so each key is also an XCom.
Result = dict[str, Any]

# Tasks that talk to S3 or MLflow retry transient failures, waiting 10 s, 20 s, 40 s, 80 s (at most 5 min).
REMOTE_RETRIES: Final = 4
REMOTE_RETRY_DELAY: Final = timedelta(seconds=10)
REMOTE_BACKOFF: Final = 2.0  # multiplier of the delay per retry
REMOTE_MAX_RETRY_DELAY: Final = timedelta(minutes=5)


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


@contextmanager
def _without_skops_noise() -> Iterator[None]:
    """Silence skops' lookups of Airflow's deprecated attributes while a task body runs.

    skops names numpy ufuncs by searching every loaded module, which touches Airflow's deprecated module
    attributes: over a thousand FutureWarnings per task log, about Airflow, not about this code. (A filter set
    at module level would not last: Airflow restores the warning filters after parsing this file.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.io\._utils")
        yield


def stage(
    *, remote: bool = False, config_first: bool = False
) -> Callable[[Callable[Concatenate[Run, WorkArea, P], Result]], Task[P, Result]]:
    """Make a stage body into a task of this DAG, named after it.

    The body is called with the current ``Run``, the run's work area, then the upstream results the task is
    given. ``config_first`` resolves the run's config before the area is opened, so a misspelt hyperparameter
    fails the task before any work. Tasks do no retries (a stage on local data fails the same way twice), but
    ``remote`` ones, which talk to S3 or MLflow, are retried with backoff.
    """

    def make_task(body: Callable[Concatenate[Run, WorkArea, P], Result]) -> Task[P, Result]:
        @functools.wraps(body)  # the task id, and the return annotation Airflow reads
        def run_stage(*args: P.args, **kwargs: P.kwargs) -> Result:
            with _without_skops_noise():
                run = Run.current()
                if config_first:
                    _ = run.config
                with run.area() as area:
                    return body(run, area, *args, **kwargs)

        # Airflow binds the upstream results to the body's parameters after ``run`` and ``area``.
        signature = inspect.signature(body)
        run_stage.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[2:]
        )
        if remote:  # a fresh decorator each time: Airflow's decorator factory keeps the first task's id in it
            return task(
                retries=REMOTE_RETRIES,
                retry_delay=REMOTE_RETRY_DELAY,
                retry_exponential_backoff=REMOTE_BACKOFF,
                max_retry_delay=REMOTE_MAX_RETRY_DELAY,
            )(run_stage)
        return task(run_stage)

    return make_task


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
    @stage(config_first=True)  # a misspelt hyperparameter fails here, before any work
    def ingest(run: Run, area: WorkArea) -> Result:
        from orchestration import tasks

        return tasks.ingest(area, data_path=run.params["data_path"], rows=run.params["rows"], seed=run.params["seed"])

    @stage()
    def validate(run: Run, area: WorkArea, ingested: Result) -> Result:
        from orchestration import tasks

        return tasks.validate_data(area, ingested["data_uri"], run.config)

    @stage()
    def split(run: Run, area: WorkArea, validated: Result) -> Result:
        from orchestration import tasks

        return tasks.split_data(area, validated["clean_uri"], run.config)

    @stage()
    def fit_transformer(run: Run, area: WorkArea, splits: Result) -> Result:
        from orchestration import tasks

        return tasks.fit_transformer_task(area, splits["train_uri"], run.config)

    @stage()
    def train(run: Run, area: WorkArea, splits: Result, fitted: Result) -> Result:
        from orchestration import tasks

        return tasks.train_task(
            area,
            transformer_uri=fitted["transformer_uri"],
            train_uri=splits["train_uri"],
            validation_uri=splits["validation_uri"],
            config=run.config,
        )

    @stage()
    def evaluate(run: Run, area: WorkArea, ingested: Result, splits: Result, fitted: Result, trained: Result) -> Result:
        from orchestration import tasks

        return tasks.evaluate_task(
            area,
            data_hash=ingested["data_hash"],
            transformer_uri=fitted["transformer_uri"],
            model_uri=trained["model_uri"],
            split_uris=splits,
            config=run.config,
        )

    @stage(remote=True)
    def gate(run: Run, area: WorkArea, evaluated: Result, splits: Result) -> Result:
        from orchestration import tasks

        return tasks.gate_task(
            area, evaluated["bundle_uri"], splits["test_uri"], run.connection, float(run.params["promotion_margin"])
        )

    @stage(remote=True)
    def publish(
        run: Run, area: WorkArea, evaluated: Result, decision: Result, ingested: Result, splits: Result
    ) -> Result:
        from orchestration import tasks

        return tasks.publish_task(
            area,
            evaluated["bundle_uri"],
            decision,
            run.connection,
            training={**ingested, **splits},  # the training run in MLflow: the data set and the splits
            config=run.config,
        )

    ingested = ingest()
    splits = split(validate(ingested))
    fitted = fit_transformer(splits)
    trained = train(splits, fitted)
    evaluated = evaluate(ingested, splits, fitted, trained)
    publish(evaluated, gate(evaluated, splits), ingested, splits)


train_flight_price_model()
