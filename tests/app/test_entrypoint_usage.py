"""The entrypoint's command line and the name it serves a ``BUNDLE_DIR`` under, without starting a server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.contract.bundle import Metadata
from app.delivery.failures import DeliveryError
from app.delivery.resolve import resolve
from app.entrypoint import bundle_model_name, command_line
from app.settings import Settings, env_names, load_settings
from tests.harness.serving import metadata_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable the settings read."""
    for name in list(os.environ):
        if name.upper() in env_names():
            monkeypatch.delenv(name)


def test_help_prints_usage_and_exits_0_without_starting() -> None:
    """A real ``python -m app.entrypoint --help``: usage on stdout, exit 0, no start-up line (nothing delivered)."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in env_names()}
    done = subprocess.run(
        [sys.executable, "-m", "app.entrypoint", "--help"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": os.fspath(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m app.entrypoint")
    for named in ("BUNDLE_DIR", "MODEL_HASH", "MLFLOW_TRACKING_URI", "MODEL_NAME", "MODEL_ALIAS", "PORT"):
        assert named in done.stdout
    assert "docs/configuration.md" in done.stdout
    assert "entrypoint:" not in done.stderr  # not even the settings line: nothing started


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["serve", "--help"]])
def test_help_in_any_position(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        command_line(argv)
    assert caught.value.code == 0 and "BUNDLE_DIR=" in capsys.readouterr().out


def test_an_unknown_argument_is_refused_with_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        command_line(["--port", "9000"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "usage:" in err and "unexpected argument(s) --port 9000" in err
    command_line([])  # the container's start: nothing to do here
    command_line(["serve"])  # what the entrypoint execs into


def test_no_model_source_names_all_three() -> None:
    with pytest.raises(DeliveryError) as caught:
        resolve(load_settings())
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert all(name in message for name in ("BUNDLE_DIR", "MODEL_HASH", "MLFLOW_TRACKING_URI", "--help"))


def named(name: str | None) -> Metadata:
    return metadata_for([], {}).model_copy(update={"name": name})


def test_a_bundle_dir_is_served_under_its_own_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLE_DIR", os.fspath(tmp_path))
    assert bundle_model_name(load_settings(), named("insurance")) == "insurance"


def test_an_explicit_model_name_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLE_DIR", os.fspath(tmp_path))
    monkeypatch.setenv("MODEL_NAME", "flight-price")  # even the default's value, given explicitly
    assert bundle_model_name(load_settings(), named("insurance")) is None


def test_a_bundle_without_a_name_keeps_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLE_DIR", os.fspath(tmp_path))
    settings = load_settings()
    assert bundle_model_name(settings, named(None)) is None and settings.model_name == "flight-price"
    assert bundle_model_name(settings, named(" bad name ")) is None  # not a name MODEL_NAME would take


def test_a_pulled_bundle_keeps_the_registry_name() -> None:
    """Only ``BUNDLE_DIR`` given by the user names the model after the bundle: a registry's model keeps its name."""
    settings = Settings(mlflow_tracking_uri="http://127.0.0.1:5000", bundle_dir=None)
    assert bundle_model_name(settings, named("insurance")) is None
