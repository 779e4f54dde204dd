"""A schema-driven fuzzer (schemathesis) against the server's own OpenAPI document, on two bundles of different
shape, each served by a real uvicorn process: no 5xx, every schema-valid request accepted, every response as the
document says. Bounded: a fixed number of examples per operation, no shrinking deadline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.core.result import Ok

from tests.harness.services import BIN, LOOPBACK, free_port, running
from tests.harness.serving import other_shape_bundle

pytestmark = pytest.mark.integration  # starts uvicorn processes
EXAMPLES = 30  # per operation and bundle


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
