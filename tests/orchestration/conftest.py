"""Fixtures of the orchestration tests: the production-shaped Airflow stack (tests/harness/airflow_stack.py),
started once per session, only for the tests that ask for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.airflow_stack import AirflowStack, start


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """postgres, moto (behind a switchable proxy), mlflow (basic auth), redis and Airflow's api-server,
    scheduler (LocalExecutor), dag-processor and triggerer, on 127.0.0.1; every process stopped at the end.
    Component logs are in ``<pytest tmp>/airflow-stack*/logs``."""
    root = tmp_path_factory.mktemp("airflow-stack")
    with start(root, f"prod-{uuid.uuid4().hex[:8]}") as stack:
        yield stack
