"""The container tests' engine, stand-in base images and replay, each made once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.harness.engine import Engine, start, stop
from tests.harness.replay import Replay
from tests.harness.warm import module_on_standins, wait_for_warm_up

if TYPE_CHECKING:
    from flight_price.main import FlightPrice


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A dockerd: the one ``.ci/run`` started (or any that answers), else one started here and stopped after."""
    running = start()
    yield running
    if running.started:
        stop()


@pytest.fixture(scope="session")
def replay(engine: Engine) -> Iterator[Replay]:
    wait_for_warm_up("serving")
    with Replay(engine) as replayed:
        yield replayed
    if replayed.differences:
        print("\nreplay: what dockerd 20.10 could not express:", *sorted(replayed.differences), sep="\n  ")


@pytest.fixture(scope="session")
def tools_container() -> None:
    """Wait for the warm-up's ``tools`` phase: the tests that use the tools container take this fixture (the
    others start once the serving image is built)."""
    wait_for_warm_up("tools")


@pytest.fixture(scope="session")
def airflow_images() -> None:
    """Wait for the warm-up's ``airflow`` phase: the Airflow image and the compose stack's other stand-ins."""
    wait_for_warm_up("airflow")


@pytest.fixture(scope="session")
def flight_price(engine: Engine) -> FlightPrice:
    """The module object as ``dagger call`` makes it, on the stand-ins, its source uploaded as Dagger uploads it."""
    return module_on_standins(engine)
