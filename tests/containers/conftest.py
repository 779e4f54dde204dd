"""The container tests' engine, stand-in base images and replay, each made once per test session."""

from __future__ import annotations

import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from dagger import Ignore, dag

from tests.containers.engine import Engine, start, stop
from tests.containers.replay import Replay
from tests.containers.standins import python_standin, uv_standin

REPO: Final = Path(__file__).resolve().parents[2]
MODULE_SOURCE: Final = REPO / "ci" / "src"
if str(MODULE_SOURCE) not in sys.path:
    sys.path.insert(0, str(MODULE_SOURCE))

from flight_price.main import FlightPrice  # noqa: E402 (the module's source is put on the path above)


def source_ignore() -> list[str]:
    """The ``Ignore`` patterns the module declares on its ``source`` directory."""
    metadata = typing.get_type_hints(FlightPrice, include_extras=True)["source"].__metadata__
    return list(next(m for m in metadata if isinstance(m, Ignore)).patterns)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A dockerd: the one ``.ci/run`` started (or any that answers), else one started here and stopped after."""
    running = start()
    yield running
    if running.started:
        stop()


@pytest.fixture(scope="session")
def replay(engine: Engine) -> Iterator[Replay]:
    with Replay(engine) as replayed:
        yield replayed
    if replayed.differences:
        print("\nreplay: what dockerd 20.10 could not express:", *sorted(replayed.differences), sep="\n  ")


@pytest.fixture(scope="session")
def flight_price(engine: Engine) -> FlightPrice:
    """The module object as ``dagger call`` makes it, on the stand-ins, its source uploaded as Dagger uploads it."""
    constructor: Any = FlightPrice  # see tests/ci/test_plan.py: mypy sees no constructor arguments
    module_object: FlightPrice = constructor(
        source=dag.host().directory(str(REPO), exclude=source_ignore()),
        python_image=python_standin(engine),
        uv_image=uv_standin(engine),
    )
    return module_object
