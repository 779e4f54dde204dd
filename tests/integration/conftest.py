"""What the integration tests share: a second, different bundle, S3 helpers, and entrypoint runners.

Every test module publishes into its own fresh bucket and model name on the session's moto server and
MLflow server, so modules never see each other's state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.contract.hashing import file_digest
from orchestration.config import load_config
from orchestration.data import generate, write_csv
from orchestration.pipeline import Progress, TrainResult, run_pipeline
from orchestration.publish import Published, PublishTarget, publish_bundle
from tests.harness.services import S3_ENV, S3Server, running

ROOT = Path(__file__).resolve().parents[2]
SECRET = S3_ENV["AWS_SECRET_ACCESS_KEY"]


def unique(prefix: str) -> str:
    """A fresh bucket / model name (lower case, S3-safe)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def entrypoint_env(
    model_dir: Path, *, remote_url: str, endpoint_url: str | None = None, **variables: str
) -> dict[str, str]:
    """The container's environment for the entrypoint: fake S3 credentials, the DVC remote, and ``variables``."""
    env = {
        **S3_ENV,
        "MODEL_DIR": os.fspath(model_dir),
        "DVC_REMOTE_URL": remote_url,
        "HOST": "127.0.0.1",
        "LOG_FORMAT": "text",
        "PULL_BACKOFF_S": "0.2",
        # The image's working directory holds app/; here the checkout does, wherever pytest runs from.
        "PYTHONPATH": os.fspath(ROOT),
        **variables,
    }
    if endpoint_url:
        env["DVC_REMOTE_ENDPOINT_URL"] = endpoint_url
    return env


def objects_of(bundle_dir: Path) -> int:
    """The objects a bundle is stored as in a DVC remote: its listing, and one per distinct file content."""
    return 1 + len({file_digest(path, "md5") for path in bundle_dir.rglob("*") if path.is_file()})


def run_entrypoint(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m app.entrypoint`` to completion (a failing start), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "app.entrypoint"],
        cwd=ROOT,
        env={**_clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def serving(env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """The entrypoint as a real subprocess that becomes the server; ready once /health/ready answers 200."""
    url = f"http://127.0.0.1:{env['PORT']}/health/ready"
    with running([sys.executable, "-m", "app.entrypoint"], url, env=env, timeout=timeout, log=log) as process:
        yield process


def _clean_environ() -> dict[str, str]:
    """The test process's environment without any serving variable a developer may have exported."""
    from app.settings import env_names

    return {k: v for k, v in os.environ.items() if k.upper() not in env_names()}


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A different model on the same data (fewer, shallower trees): different hashes, different predictions."""
    config = load_config()
    model = config.model.model_copy(update={"max_iter": 20, "max_leaf_nodes": 7, "learning_rate": 0.3})
    work = tmp_path_factory.mktemp("second")
    data = write_csv(generate(4000, seed=5), work / "flights.csv")
    return run_pipeline(data, config.model_copy(update={"model": model}), work / "bundle", Progress(stream=None))


def target_for(s3: S3Server, bucket: str, mlflow_uri: str, model_name: str, prefix: str = "dvc") -> PublishTarget:
    """A publish target on the session's moto server and MLflow server."""
    return PublishTarget(
        remote_url=f"s3://{bucket}/{prefix}",
        tracking_uri=mlflow_uri,
        model_name=model_name,
        endpoint_url=s3.endpoint_url,
    )


@pytest.fixture(scope="session")
def second_bundle_dir(second_bundle: TrainResult) -> Path:
    return second_bundle.bundle_dir


def fresh_target(s3: S3Server, mlflow_uri: str, name: str) -> PublishTarget:
    """A publish target in a new bucket (created here) with a new model name, for one test module."""
    bucket = unique(name)
    s3.create_bucket(bucket)
    return target_for(s3, bucket, mlflow_uri, unique("model"))


def champion_and_challenger(bundle: Path, other: Path, target: PublishTarget) -> tuple[Published, Published]:
    """``bundle`` published as version 1 (``champion``) and ``other``, a different bundle, as version 2 (no
    alias yet)."""
    return publish_bundle(bundle, target), publish_bundle(other, target, alias=None)
