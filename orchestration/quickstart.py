"""The embedded quickstart: ``python -m orchestration quickstart``. No Docker, no cloud account.

State lives in ``./.quickstart/``: a DVC remote that is a plain directory, an MLflow store that is a sqlite
file, the training bundle and the serving ``MODEL_DIR``. If no model is published yet, one is trained and
published there; then the server starts through the container's own entrypoint code path (resolve the
alias -> dvc pull -> verify -> exec uvicorn), on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Final, NoReturn

from app.bundle import Metadata
from app.registry import NotFoundError, registry_for
from app.settings import Settings, load_settings
from orchestration.config import DEFAULT_PARAMS, load_config
from orchestration.data import DEFAULT_ROWS, DEFAULT_SEED, generate, write_csv
from orchestration.pipeline import metrics_table, run_pipeline
from orchestration.publish import PublishTarget, publish_bundle

STATE: Final = Path(".quickstart")
HOST: Final = "127.0.0.1"
ALIAS: Final = "champion"


def target_for(state: Path) -> PublishTarget:
    """The local DVC remote (a directory) and MLflow store (sqlite) under ``state``."""
    state = state.resolve()
    return PublishTarget(remote_url=os.fspath(state / "dvc-remote"), tracking_uri=f"sqlite:///{state / 'mlflow.db'}")


def published_version(target: PublishTarget) -> int | None:
    """The version ``MODEL_NAME@champion`` points at in the local store, if any."""
    try:
        return registry_for(target.tracking_uri).version_by_alias(target.model_name, ALIAS).version
    except NotFoundError:
        return None


def train_and_publish(state: Path, target: PublishTarget, rows: int, seed: int) -> None:
    """Train on a generated data set of ``rows`` rows and publish the bundle to the local stores."""
    print(f"quickstart: no published model in {state}/ yet: training one on {rows:,} generated rows", flush=True)
    data = write_csv(generate(rows, seed), state / "data" / "flights.csv")
    result = run_pipeline(data, load_config(DEFAULT_PARAMS), state / "bundle")
    print(metrics_table(result.metadata), flush=True)
    published = publish_bundle(result.bundle_dir, target, alias=ALIAS, report=lambda line: print(line, flush=True))
    print(f"quickstart: published {target.model_name} version {published.version} as @{ALIAS}", flush=True)


def sample_request(port: int, metadata: Metadata) -> str:
    """A ready-to-paste curl command built from the bundle's own example record."""
    body = json.dumps(metadata.example)
    return f"curl -s -X POST http://{HOST}:{port}/predict -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def serve_environment(state: Path, target: PublishTarget, port: int) -> dict[str, str]:
    """The variables the container would get, pointing at the local stores (see app/prediction.env.example)."""
    return {
        "MODEL_DIR": os.fspath((state / "models").resolve()),
        "MLFLOW_TRACKING_URI": target.tracking_uri,
        "MODEL_NAME": target.model_name,
        "MODEL_ALIAS": ALIAS,
        "DVC_REMOTE_URL": target.remote_url,
        "HOST": HOST,
        "PORT": str(port),
        "LOG_FORMAT": "text",
    }


def run_quickstart(
    *, rows: int = DEFAULT_ROWS, port: int = 9000, seed: int = DEFAULT_SEED, state: Path = STATE
) -> NoReturn:
    """Train and publish if needed, then become the server via the entrypoint (never returns)."""
    from app import entrypoint

    state.mkdir(parents=True, exist_ok=True)
    target = target_for(state)
    version = published_version(target)
    if version is None:
        train_and_publish(state, target, rows, seed)
    else:
        print(
            f"quickstart: serving the published {target.model_name}@{ALIAS} (version {version}); "
            f"delete {state}/ to train afresh",
            flush=True,
        )
    # Pins or bundle paths from the caller's shell would override the registry path the container uses.
    for name in ("MODEL_HASH", "MODEL_VERSION", "BUNDLE_DIR", "DVC_REMOTE_ENDPOINT_URL", "DVC_REMOTE_REGION"):
        os.environ.pop(name, None)
    os.environ.update(serve_environment(state, target, port))

    def announce(serving: Settings, metadata: Metadata) -> None:
        print(
            f"\nquickstart: the server is starting on http://{HOST}:{serving.port} "
            f"(API docs: http://{HOST}:{serving.port}/docs; stop it with Ctrl-C). Try:\n"
            f"  {sample_request(serving.port, metadata)}\n",
            flush=True,
        )

    entrypoint.run(load_settings(), announce=announce)
