"""A schema-driven fuzzer (schemathesis) against the server's own OpenAPI document, on two bundles of different
shape, each served by a real uvicorn process: no 5xx, every schema-valid request accepted, every response as the
document says. Bounded: a fixed number of examples per operation, no shrinking deadline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.core.result import Ok

from orchestration.__main__ import main
from tests.services import BIN, LOOPBACK, free_port, running

pytestmark = pytest.mark.integration  # starts uvicorn processes
EXAMPLES = 30  # per operation and bundle


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
    args = ["train", "--data", str(directory / "fares.csv"), "--config", str(directory / "params.yaml")]
    assert main([*args, "--out", str(directory / "bundle")]) == 0
    return directory / "bundle"


@pytest.fixture(scope="module", params=["flights", "fares"])
def served(request: pytest.FixtureRequest, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = bundle_dir if request.param == "flights" else other_shape_bundle(tmp_path_factory.mktemp("fares"))
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port)]
    env = {"BUNDLE_DIR": str(bundle), "LOG_LEVEL": "warning"}
    with running(args, f"{url}/health/ready", env=env, timeout=120):
        yield url


def test_the_api_keeps_its_own_contract(served: str) -> None:
    """Every operation of the document, fuzzed from its own schema; every default check of schemathesis."""
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid OpenAPI
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/predict", "/predict/batch", "/model", "/health/ready", "/metrics"}
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
            database=None,
        )  # fmt: skip
        def keeps_the_contract(case: Case[Any]) -> None:
            case.call_and_validate()
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1

        keeps_the_contract()
    assert calls["POST /predict"] >= EXAMPLES // 2 and calls["POST /predict/batch"] >= EXAMPLES // 2, calls
