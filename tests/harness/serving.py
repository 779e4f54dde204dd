"""What the server's tests share: an in-process client for an app that has finished loading, and records."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from fastapi.testclient import TestClient

from app.api.server import create_app
from app.contract.bundle import Feature, Metadata, Target
from app.contract.serving_form import probe_columns
from app.settings import Settings


def settings_for(bundle_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test app: the given bundle, no registry unless asked for."""
    values: dict[str, Any] = {"mlflow_tracking_uri": None, "model_version": None, **overrides}
    return Settings(bundle_dir=bundle_dir, **values)


def wait_ready(client: TestClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"not ready after {timeout}s: {client.get('/health/ready').json()}")


@contextmanager
def ready_client(settings: Settings, *, wait: bool = True) -> Iterator[TestClient]:
    """A TestClient (lifespan running) for ``create_app(settings)``, once its bundle is loaded."""
    with TestClient(create_app(settings, configure_logs=False), raise_server_exceptions=False) as client:
        if wait:
            wait_ready(client)
        yield client


def records(metadata: Metadata, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` valid records (the bundle's example first) drawn across every feature's range."""
    columns = probe_columns(metadata, n, seed=seed)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def metadata_for(features: list[Feature], example: dict[str, Any]) -> Metadata:
    """Metadata for a made-up bundle: only the feature schema and the example matter to the request models."""
    return Metadata(
        created_at="2024-01-01T00:00:00+00:00",
        features=features,
        target=Target(name="price", minimum=1.0, maximum=2.0, mean=1.5),
        metrics={},
        baseline_metrics={},
        data_hash="0" * 64,
        library_versions={},
        example=example,
        files={},
    )


def other_shape_bundle(directory: Path) -> Path:
    """A bundle unlike the flight model's: an integral feature, one categorical, a date, no configured bounds."""
    rng = np.random.default_rng(3)
    rows = 3000
    frame = pd.DataFrame(
        {
            "stops": rng.integers(0, 4, rows),
            "cabin": rng.choice(["basic", "main", "extra legroom"], rows),
            "day": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D"),
        }
    )
    frame["day"] = frame["day"].dt.strftime("%Y-%m-%d")
    frame["fare"] = 100 + 40 * frame["stops"] + (frame["cabin"] == "extra legroom") * 60 + rng.normal(0, 5, rows)
    frame.to_csv(directory / "fares.csv", index=False)
    params = {
        "data": {"target": "fare", "numeric": ["stops"], "categorical": ["cabin"], "dates": ["day"]},
        "evaluate": {"baseline_margin": 0.1},
    }
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    from orchestration.__main__ import main  # training: the serving tests need it only here

    args = ["train", "--data", str(directory / "fares.csv"), "--config", str(directory / "params.yaml")]
    assert main([*args, "--out", str(directory / "bundle")]) == 0
    return directory / "bundle"
