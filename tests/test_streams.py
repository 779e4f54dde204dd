"""The suite's two streams (``tests.harness.streams``): which tests share a worker, in what order, the quiet wait."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness import streams

TESTS = Path(__file__).parent


def test_every_container_test_and_the_last_modules_are_one_engine_stream() -> None:
    container_modules = sorted(p.name for p in (TESTS / "containers").glob("test_*.py"))
    assert container_modules  # the stream is not empty
    for name in container_modules:
        assert streams.stream_of(f"tests/containers/{name}::test_x") == streams.ENGINE
        assert streams.stream_of(f"tests/containers/{name}::TestX::test_y[a::b]") == streams.ENGINE
    assert streams.stream_of("tests/app/test_hostile_clients.py::test_x") == streams.ENGINE
    assert streams.stream_of("tests/integration/test_publish.py::test_x") == "tests/integration/test_publish.py"
    for module in streams.ENGINE_LAST:
        assert (TESTS.parent / module).is_file(), f"{module} names no test module"


def test_every_other_test_is_scoped_by_its_module() -> None:
    assert streams.stream_of("tests/app/test_api.py::test_a[x]") == "tests/app/test_api.py"
    assert streams.stream_of("tests/app/test_api.py::test_b") == "tests/app/test_api.py"
    assert streams.stream_of("tests/test_layout.py::test_c") == "tests/test_layout.py"
    assert streams.stream_of("tests/app/containers.py::test_d") != streams.ENGINE  # only the folder counts


def test_the_engine_stream_comes_first_serving_image_tests_first_and_its_last_modules_at_its_end() -> None:
    names = [
        "tests/app/test_api.py::a",
        "tests/app/test_hostile_clients.py::b",
        "tests/containers/test_publish.py::c",
        "tests/containers/test_image.py::d",
        "tests/orchestration/test_dag.py::e",
        "tests/containers/test_pod.py::f",
        "tests/containers/test_context.py::g",
    ]
    tools, airflow = streams.WARM_UP_FIXTURES
    waits = {"d": [airflow], "f": [tools], "g": []}
    fakes: list[Any] = [SimpleNamespace(nodeid=n, fixturenames=waits.get(n[-1], [])) for n in names]
    streams.order(fakes)
    assert [f.nodeid.split("::")[1] for f in fakes] == ["g", "f", "d", "c", "b", "a", "e"]


def test_the_container_tests_that_wait_for_a_later_phase_say_so_by_its_fixture() -> None:
    conftest = (TESTS / "containers" / "conftest.py").read_text()
    for name in streams.WARM_UP_FIXTURES:
        assert f"def {name}(" in conftest


def config_in(tmp_path: Path) -> Any:
    return SimpleNamespace(option=SimpleNamespace(basetemp=str(tmp_path / "popen-gw0")))


def test_the_quiet_wait_needs_every_other_worker_idle_for_a_while(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    activity = streams.activity_dir(config)
    activity.mkdir()
    now = time.time()
    (activity / "gw0").write_text("busy")  # this worker: not counted
    (activity / "gw1").write_text("busy")
    assert not streams.others_idle(config, "gw0", now)
    (activity / "gw1").write_text("idle")
    assert not streams.others_idle(config, "gw0", time.time())  # idle, but only just
    os.utime(activity / "gw1", (now - 2 * streams.IDLE_S, now - 2 * streams.IDLE_S))
    assert streams.others_idle(config, "gw0", time.time())


def test_the_quiet_wait_gives_up_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_in(tmp_path)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    streams.say(config, "busy")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    with pytest.warns(UserWarning, match="other workers still busy"):
        streams.wait_for_quiet(config, timeout=0.6)
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    streams.wait_for_quiet(config, timeout=0)  # one process: nothing to wait for
