"""The embedded quickstart: ``python -m orchestration quickstart``. No Docker, no cloud account.

State lives in ``./.quickstart/``: a DVC remote that is a plain directory, an MLflow store that is a sqlite
file, the training bundle and the serving ``MODEL_DIR``. If no model is published yet, one is trained and
published there; then the container's own entrypoint (``python -m app.entrypoint``: resolve the alias ->
dvc pull -> verify -> uvicorn) runs as a child process on 127.0.0.1 with the variables a container would get.
Once the server is ready, a sample request built from the served model's own example is printed.

With ``--data CSV`` (and ``--config PARAMS``, default the flight params) it trains on that file instead, every
run, into ``./.quickstart/own-data/bundle``, and the entrypoint serves that bundle from ``BUNDLE_DIR`` under the
name it records: no registry, no DVC remote. The sample request is that data's example record.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any, Final

from app.contract.connection import DEFAULT_ALIAS, DEFAULT_SERVING_PORT
from app.contract.registry import NotFoundError, registry_for
from app.contract.walk_build import WalkBuildError, build_here
from orchestration.config import DEFAULT_PARAMS, load_config
from orchestration.data import generate, write_csv
from orchestration.defaults import DEFAULT_ROWS, DEFAULT_SEED
from orchestration.pipeline import metrics_table, run_pipeline
from orchestration.publish import PublishTarget, publish_bundle
from orchestration.tracking import TrackingTarget

STATE: Final = Path(".quickstart")
HOST: Final = "127.0.0.1"
READY_TIMEOUT_S: Final = 300.0
# Variables from the caller's shell that would override the registry path the container uses.
OVERRIDDEN: Final = ("MODEL_HASH", "MODEL_VERSION", "BUNDLE_DIR", "DVC_REMOTE_ENDPOINT_URL", "DVC_REMOTE_REGION")


def target_for(state: Path) -> PublishTarget:
    """The local DVC remote (a directory) and MLflow store (sqlite) under ``state``."""
    state = state.resolve()
    return PublishTarget(remote_url=os.fspath(state / "dvc-remote"), tracking_uri=f"sqlite:///{state / 'mlflow.db'}")


def mlflow_ui_command(state: Path) -> str:
    """The command that opens the MLflow UI on the quickstart's store (http://127.0.0.1:5000)."""
    store = shlex.quote(f"sqlite:///{(state / 'mlflow.db').resolve()}")
    return f"python3 -m uv run --frozen mlflow ui --backend-store-uri {store} --port 5000 --workers 1"


def published_version(target: PublishTarget) -> int | None:
    """The version ``MODEL_NAME@champion`` points at in the local store, if any."""
    try:
        return registry_for(target.tracking_uri).version_by_alias(target.model_name, DEFAULT_ALIAS).version
    except NotFoundError:
        return None


def train_and_publish(state: Path, target: PublishTarget, rows: int, seed: int) -> None:
    """Train on a generated data set of ``rows`` rows and publish the bundle to the local stores."""
    print(f"quickstart: no published model in {state}/ yet: training one on {rows:,} generated rows", flush=True)
    started = time.perf_counter()
    data = write_csv(generate(rows, seed), state / "data" / "flights.csv")
    print(f"quickstart: generated {data} in {time.perf_counter() - started:.1f}s", flush=True)
    tracking = TrackingTarget(target.tracking_uri, target.model_name)  # the run publishing registers
    result = run_pipeline(data, load_config(DEFAULT_PARAMS), state / "bundle", tracking=tracking)
    print(metrics_table(result.metadata), flush=True)
    started = time.perf_counter()
    published = publish_bundle(
        result.bundle_dir, target, alias=DEFAULT_ALIAS, report=lambda line: print(line, flush=True)
    )
    print(
        f"quickstart: published {target.model_name} version {published.version} as @{DEFAULT_ALIAS} in "
        f"{time.perf_counter() - started:.1f}s; its training run: {mlflow_ui_command(state)}",
        flush=True,
    )


def train_own_data(state: Path, data: Path, config: Path) -> Path:
    """Train on the user's ``data`` with the params file ``config`` into ``state/own-data/bundle``; its path."""
    print(f"quickstart: training on {data} with {config}", flush=True)
    result = run_pipeline(data, load_config(config), state / "own-data" / "bundle")
    print(metrics_table(result.metadata), flush=True)
    return result.bundle_dir


def own_data_environment(bundle_dir: Path, port: int) -> dict[str, str]:
    """The variables the container would get to serve ``bundle_dir`` as is (its MODEL_NAME: the bundle's name)."""
    return {"BUNDLE_DIR": os.fspath(bundle_dir.resolve()), "HOST": HOST, "PORT": str(port), "LOG_FORMAT": "text"}


def sample_request(port: int, example: dict[str, Any]) -> str:
    """A ready-to-paste curl command for one record."""
    body = json.dumps(example)
    return f"curl -s -X POST http://{HOST}:{port}/predict -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def serve_environment(state: Path, target: PublishTarget, port: int) -> dict[str, str]:
    """The variables the container would get, pointing at the local stores (see app/prediction.env.example)."""
    return {
        "MODEL_DIR": os.fspath((state / "models").resolve()),
        "MLFLOW_TRACKING_URI": target.tracking_uri,
        "MODEL_NAME": target.model_name,
        "MODEL_ALIAS": DEFAULT_ALIAS,
        "DVC_REMOTE_URL": target.remote_url,
        "HOST": HOST,
        "PORT": str(port),
        "LOG_FORMAT": "text",
    }


def served_example(port: int, server: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the server is ready, then return the example record of the model it serves (``GET /model``)."""
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health/ready", timeout=5):
                pass
            with urllib.request.urlopen(f"http://{HOST}:{port}/model", timeout=30) as response:
                example: dict[str, Any] = json.loads(response.read())["metadata"]["example"]
                return example
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise TimeoutError(f"the server did not become ready on port {port}")


def quiet_mlflow() -> None:
    """Keep MLflow's own chatter (database set-up, pip warnings, artifact progress bars) out of the quickstart."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def run_quickstart(
    *,
    rows: int = DEFAULT_ROWS,
    port: int = DEFAULT_SERVING_PORT,
    seed: int = DEFAULT_SEED,
    state: Path = STATE,
    data: Path | None = None,
    config: Path = DEFAULT_PARAMS,
) -> int:
    """Train and publish if needed (or train on ``data`` with ``config``), then run the entrypoint until it stops;
    returns its exit code."""
    quiet_mlflow()
    state.mkdir(parents=True, exist_ok=True)
    if data is not None:
        serving = own_data_environment(train_own_data(state, data, config), port)
    else:
        target = target_for(state)
        version = published_version(target)
        if version is None:
            train_and_publish(state, target, rows, seed)
        else:
            print(
                f"quickstart: serving the published {target.model_name}@{DEFAULT_ALIAS} (version {version}); "
                f"delete {state}/ to train afresh",
                flush=True,
            )
        serving = serve_environment(state, target, port)
    build_walk()
    env = {name: value for name, value in os.environ.items() if name not in (*OVERRIDDEN, "MODEL_NAME")}
    server = subprocess.Popen([sys.executable, "-m", "app.entrypoint"], env={**env, **serving})

    def forward(signum: int, _: FrameType | None) -> None:
        server.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        try:
            example = served_example(port, server)
        except TimeoutError:
            return server.wait() if server.poll() is not None else _stop(server)
        print(
            f"\nquickstart: the server is ready on http://{HOST}:{port} "
            f"(API docs: http://{HOST}:{port}/docs; stop it with Ctrl-C). Try:\n"
            f"  {sample_request(port, example)}\n",
            flush=True,
        )
        return server.wait()
    except KeyboardInterrupt:  # let the server drain (SIGTERM: a second SIGINT would make uvicorn skip draining)
        if server.poll() is None:
            server.terminate()
        return server.wait()


def build_walk() -> None:
    """This machine's compiled walk of the serving form, as the serving image's build makes it (``walk_build``);
    without it the server predicts with the slower numpy walk, and says so."""
    try:
        library = build_here()
    except WalkBuildError as exc:
        print(f"quickstart: {exc}; the server predicts with the slower numpy walk", flush=True)
        return
    print(f"quickstart: built the serving form's compiled walk, {library}", flush=True)


def _stop(server: subprocess.Popen[bytes]) -> int:
    server.terminate()
    server.wait()
    print("quickstart: the server did not become ready in time; stopped it", file=sys.stderr, flush=True)
    return 1
