"""The suite's two streams under pytest-xdist (``--numprocesses=2``, set in ``pyproject.toml``).

The container tests wait for ``.ci/run``'s background warm-up and then replay the module on one dockerd: they run
in order on one worker, the ``engine`` stream, while the other worker takes every other module, a whole module at
a time (its module-scoped services start once). ``StreamScheduling`` is xdist's scheduling by scope, the scopes
being these streams: the ``engine`` one, and each other module. The latency tests
(``tests/app/test_hostile_clients.py``) end the engine stream and first wait until every other worker has been
idle for ``IDLE_S``: they measure the server, not a busy machine.

Each worker says whether it is inside a test in a file of its own under ``activity_dir``, beside the workers'
temporary directories (pytest removes them with the run's); without xdist (``-n 0``) there is one process and
nothing to wait for.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path, PurePosixPath
from typing import Final

import pytest
from xdist.scheduler import LoadScopeScheduling

ENGINE: Final = "engine"
CONTAINER_TESTS: Final = ("tests", "containers")
# The modules of the engine stream after the container tests: the publish tests, whose images the warm-up makes
# last (under emulation), then the latency tests.
ENGINE_LAST: Final = ("tests/containers/test_publish.py", "tests/app/test_hostile_clients.py")
# The fixtures of the container tests that wait for more than the serving image, in the order the warm-up makes
# what they wait for (tests/harness/warm.py's phases).
WARM_UP_FIXTURES: Final = ("tools_container", "airflow_images")
IDLE_S: Final = 3.0
QUIET_WAIT_S: Final = 1200.0


def stream_of(nodeid: str) -> str:
    """The scope a test runs in: ``engine`` for the container tests and ``ENGINE_LAST``, else its module's path."""
    module = module_of(nodeid)
    if PurePosixPath(module).parts[:2] == CONTAINER_TESTS or module in ENGINE_LAST:
        return ENGINE
    return module


def module_of(nodeid: str) -> str:
    """The path of a test's module, from its node id (relative to the repository)."""
    return nodeid.split("::", 1)[0]


def order(items: list[pytest.Item]) -> None:
    """The engine stream first, then the other modules in file order (in place): xdist hands the scopes out in the
    order of the collection (``--no-loadscope-reorder``). In the engine stream, the tests that need only the serving
    image come first, then those that wait for a later phase of the warm-up (``WARM_UP_FIXTURES``), in the order
    of the phases, then the ``ENGINE_LAST`` modules."""

    def position(item: pytest.Item) -> tuple[int, int]:
        if stream_of(item.nodeid) != ENGINE:
            return (1, 0)
        module = module_of(item.nodeid)
        if module in ENGINE_LAST:
            return (0, 1 + len(WARM_UP_FIXTURES) + ENGINE_LAST.index(module))
        fixtures = getattr(item, "fixturenames", ())
        return (0, max((1 + i for i, name in enumerate(WARM_UP_FIXTURES) if name in fixtures), default=0))

    items.sort(key=position)  # stable: file order otherwise


class StreamScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no type information
    """xdist's scheduling by scope, the scopes being the streams (``stream_of``)."""

    def _split_scope(self, nodeid: str) -> str:
        return stream_of(nodeid)


def worker() -> str | None:
    """This xdist worker's id (``gw0``), or None when pytest runs in one process."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def activity_dir(config: pytest.Config) -> Path:
    """Where the workers of this run say whether they are busy: beside their temporary directories, which xdist
    makes in the run's own (``--basetemp`` of each worker)."""
    return Path(config.option.basetemp).parent / "activity"


def say(config: pytest.Config, state: str) -> None:
    """Record this worker's state (``busy`` or ``idle``); a no-op without xdist."""
    if (name := worker()) is None:
        return
    directory = activity_dir(config)
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(state)


def others_idle(config: pytest.Config, name: str, now: float) -> bool:
    """Whether every other worker has said ``idle`` at least ``IDLE_S`` ago."""
    for path in activity_dir(config).glob("gw*"):
        if path.name == name:
            continue
        if path.read_text() != "idle" or now - path.stat().st_mtime < IDLE_S:
            return False
    return True


def wait_for_quiet(config: pytest.Config, timeout: float = QUIET_WAIT_S) -> None:
    """Return once every other worker is idle (at once without xdist); after ``timeout``, warn and go on."""
    if (name := worker()) is None:
        return
    deadline = time.monotonic() + timeout
    told = False
    while not others_idle(config, name, time.time()):
        if time.monotonic() > deadline:
            warnings.warn(
                f"other workers still busy after {timeout:.0f} s: the latency tests run beside them", stacklevel=2
            )
            return
        if not told:
            print("\nwaiting for the other workers to finish before the latency tests", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.5)
