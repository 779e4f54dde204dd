"""The module as the engine sees it: registered through the SDK's own type-definition path (tests/harness/register.py,
in a fresh process, as the engine's runtime does), with a recording client instead of an engine.

A signature the SDK cannot register fails here as it would fail every ``dagger call``; what registers is read
back: the main object and its constructor (the ``source`` directory's default path and ignore patterns), each
function with its arguments, the checks ``dagger check`` runs, the service ``dagger up`` starts, and the cache
policy of ``publish``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import pytest
from flight_price import main as module
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.harness.register import main_object_name

REPO: Final = Path(__file__).resolve().parents[2]
CHECKS: Final = {"lint", "typecheck", "unit_tests", "smoke"}


def selections(value: Any, name: str) -> list[dict[str, Any]]:
    return [s["args"] for s in value if s["name"] == name]


@pytest.fixture(scope="module")
def registered() -> dict[str, Any]:
    """The main object's type definition as ``Module.register()`` sends it."""
    ran = subprocess.run(
        [sys.executable, "-m", "tests.harness.register"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, f"the SDK could not register the module:\n{ran.stderr[-3000:]}"
    query = json.loads(ran.stdout)
    [main] = [
        obj["object"]
        for obj in selections(query, "withObject")
        if selections(obj["object"], "withObject")[0]["name"] == main_object_name()
    ]
    return {"selections": main, "functions": {f["function"][0]["args"]["name"]: f["function"]
                                              for f in selections(main, "withFunction")}}  # fmt: skip


def test_the_main_object_is_the_module_class() -> None:
    assert main_object_name() == module.FlightPrice.__name__


def test_every_function_registers_with_its_arguments(registered: dict[str, Any]) -> None:
    functions = registered["functions"]
    assert set(functions) == {
        "build",
        "airflow",
        "smoke",
        "lint",
        "typecheck",
        "unit_tests",
        "test",
        "publish",
        "serve",
    }
    arguments = {name: [a["name"] for a in selections(f, "withArg")] for name, f in functions.items()}
    assert arguments["build"] == arguments["airflow"] == ["platform", "revision", "version"]
    assert arguments["publish"] == ["username", "password", "repository", "tag", "revision", "version", "tested"]
    password = next(a for a in selections(functions["publish"], "withArg") if a["name"] == "password")
    assert selections(password["typeDef"], "withObject") == [{"name": "Secret"}]


def test_checks_and_the_service_are_marked_for_dagger_check_and_up(registered: dict[str, Any]) -> None:
    functions = registered["functions"]
    marked = {name for name, f in functions.items() if selections(f, "withCheck")}
    assert marked == CHECKS
    assert {name for name, f in functions.items() if selections(f, "withUp")} == {"serve"}
    assert selections(functions["publish"], "withCachePolicy") == [{"policy": "Never"}]


def test_the_constructor_loads_the_source_as_the_allowlist(registered: dict[str, Any]) -> None:
    [constructor] = selections(registered["selections"], "withConstructor")
    arguments = {a["name"]: a for a in selections(constructor["function"], "withArg")}
    assert list(arguments) == ["source", "python_image", "airflow_image", "uv_image", "source_url"]
    assert arguments["source"]["defaultPath"] == "/"
    assert arguments["source"]["ignore"] == module.SOURCE_IGNORE
    assert json.loads(arguments["python_image"]["defaultValue"]) == module.PYTHON_IMAGE


def test_the_module_lock_pins_the_sdk_the_engine_vendors() -> None:
    """``ci/uv.lock`` is what ``dagger develop`` writes: the module editable, the SDK editable from ``ci/sdk`` (where
    the engine vendors it), the SDK's requirements those of the pinned ``dagger-io`` release, each one locked.
    The engine runs ``uv lock`` then ``uv sync --no-dev`` when a module has a lock, so it pins the SDK's
    dependencies across runs and a stale lock is brought up to date, not fatal."""
    lock = tomllib.loads((REPO / "ci" / "uv.lock").read_text())
    packages = {package["name"]: package for package in lock["package"]}
    module_name = json.loads((REPO / "dagger.json").read_text())["name"]
    assert packages[module_name]["source"] == {"editable": "."}
    assert packages[module_name]["dependencies"] == [{"name": "dagger-io"}]
    sdk = packages["dagger-io"]
    assert sdk["source"] == {"editable": "sdk"}

    def normalized(name: str, extras: list[str], specifier: str) -> tuple[str, tuple[str, ...], str]:
        return canonicalize_name(name), tuple(sorted(extras)), str(SpecifierSet(specifier))

    locked = {
        normalized(r["name"], r.get("extras", []), r.get("specifier", "")) for r in sdk["metadata"]["requires-dist"]
    }
    released = {
        normalized(r.name, list(r.extras), str(r.specifier))
        for r in map(Requirement, metadata.requires("dagger-io") or [])
        if r.marker is None
    }
    assert locked == released
    for dependency in sdk["dependencies"]:
        assert "version" in packages[dependency["name"]], dependency
