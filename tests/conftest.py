"""Session fixtures shared by the suite: a small flight data set, a trained bundle, and real services."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from app.contract.walk_build import build_here
from orchestration.config import load_config
from orchestration.data import generate, write_csv
from orchestration.pipeline import Progress, TrainResult, run_pipeline
from tests.harness import streams
from tests.harness.services import S3_ENV, S3Server, mlflow_server, moto_server

SMALL_ROWS = 20_000
# Fixtures that start a real service: a test using one (directly or through another fixture) is "integration".
SERVICE_FIXTURES = frozenset({"s3", "mlflow_uri"})


def pytest_configure(config: pytest.Config) -> None:
    """Build this machine's compiled walk of the serving form (``app.contract.walk_build``, under a second) before
    any test loads a bundle, so every bundle is served as the serving image serves it; once, in pytest-xdist's
    controller or a run without workers. A failed build fails the run: the tests of the compiled walk need it."""
    if not hasattr(config, "workerinput"):
        build_here()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real service as ``integration``, so ``-m "not integration"`` is the fast loop;
    order the suite into its two streams (``tests.harness.streams``)."""
    for item in items:
        in_integration = "integration" in item.path.relative_to(Path(__file__).parent).parts
        if in_integration or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    streams.order(items)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> streams.StreamScheduling:
    """Schedule the suite in its two streams (``tests.harness.streams``)."""
    return streams.StreamScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Say, for the latency tests' wait (``tests.harness.streams.wait_for_quiet``), whether this worker is in a test."""
    streams.say(item.config, "busy")
    try:
        return (yield)
    finally:
        streams.say(item.config, "idle")


@pytest.fixture(scope="session")
def flight_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, deterministic flight data set as CSV."""
    return write_csv(generate(SMALL_ROWS, seed=11), tmp_path_factory.mktemp("data") / "flights.csv")


@pytest.fixture(scope="session")
def trained(flight_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A bundle trained on ``flight_csv`` with the default params (read-only: copy it to modify it)."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return run_pipeline(flight_csv, load_config(), out, Progress(stream=None))


@pytest.fixture(scope="session")
def bundle_dir(trained: TrainResult) -> Path:
    return trained.bundle_dir


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session."""
    with moto_server(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_uri(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, artifacts on the moto bucket), started once per session."""
    workdir = tmp_path_factory.mktemp("mlflow")
    with mlflow_server(workdir, s3, log=workdir / "server.log") as uri:
        yield uri


@pytest.fixture(scope="module")
def s3_credentials() -> Iterator[None]:
    """The fake credentials in this process's environment, for DVC and boto used in-process."""
    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
