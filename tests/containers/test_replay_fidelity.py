"""The replay waits for services as Dagger 0.21 does, and ``serve()`` runs as ``dagger call serve up`` runs it.

Dagger's readiness (core/service.go and core/healthcheck.go of the engine): a container with a healthcheck is
ready when its command exits 0, run at once and then every ``start_interval``, failures counting only after
``start_period``, given up after ``retries``; one without is ready when its exposed ports accept. With neither,
Dagger starts the clients at once; the replay refuses that service, so a mock that lost its ``withExposedPort``
fails the smoke stage instead of racing it.
"""

from __future__ import annotations

import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from dagger import dag
from flight_price import main as module
from flight_price.main import FlightPrice

from tests.harness.engine import DOCKER, Engine
from tests.harness.replay import ImageTree, Replay, ReplayError
from tests.harness.services import LOOPBACK
from tests.harness.standins import python_standin
from tests.smoke.checker import run_checks

pytestmark = [pytest.mark.integration, pytest.mark.containers]


def test_a_service_with_neither_port_nor_healthcheck_is_refused(replay: Replay, flight_price: FlightPrice) -> None:
    silent = flight_price.tools().as_service(args=["sleep", "60"])
    with pytest.raises(ReplayError, match="neither an exposed port nor a healthcheck"), replay.running(silent):
        pass


def test_a_healthcheck_is_probed_every_start_interval(replay: Replay, engine: Engine) -> None:
    """Ready within about a start interval of the check passing, long before Docker's own 30 s interval."""
    service = (
        dag.container()
        .from_(python_standin(engine))
        .with_docker_healthcheck(["test", "-f", "/tmp/ready"], start_period="30s", start_interval="1s", retries=3)
        .as_service(args=["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 60"])
    )
    started = time.monotonic()
    before = len(replay.ready)
    with replay.running(service):
        waited = time.monotonic() - started
    assert replay.ready[before:] == [("service", "healthy")]
    assert 3 <= waited < 12, waited


def test_a_failing_healthcheck_gives_up_after_start_period_and_retries(replay: Replay, engine: Engine) -> None:
    service = (
        dag.container()
        .from_(python_standin(engine))
        .with_docker_healthcheck(["false"], start_period="4s", start_interval="1s", retries=2)
        .as_service(args=["sleep", "60"])
    )
    started = time.monotonic()
    with pytest.raises(ReplayError, match="failed 2 times after its start period"), replay.running(service):
        pass
    assert 4 <= time.monotonic() - started < 20


def test_serve_answers_through_a_published_port(replay: Replay, flight_price: FlightPrice, tmp_path: Path) -> None:
    """``dagger call serve up --ports 9000:9000``: the image with its mocks, checked from the host."""
    seed = copy_out(replay, replay.evaluate(flight_price.seed()), tmp_path)
    with replay.running(flight_price.serve(), publish=module.PORT) as (_, port):
        assert port is not None
        report = run_checks(
            f"http://{LOOPBACK}:{port}",
            seed / "bundle",
            (seed / "dvc-hash").read_text().strip(),
            module.SMOKE_MODEL_NAME,
            180,
        )
    print("\n" + "\n".join(report.lines))
    assert report.failures == 0, "\n".join(report.lines)
    assert len(report.lines) >= 5


def copy_out(replay: Replay, tree: ImageTree, into: Path) -> Path:
    """A directory of an image, copied to the host."""
    name = f"replay-copy-out-{time.monotonic_ns()}"
    replay.docker("create", "--name", name, "--entrypoint", "", tree.image, "placeholder")
    try:
        archive = into / "tree.tar"
        with archive.open("wb") as out:
            subprocess.run([DOCKER, "cp", f"{name}:{tree.path}", "-"], env=replay.engine.env(), stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    finally:
        replay.docker("rm", "--force", name, check=False)
    return into / Path(tree.path).name
