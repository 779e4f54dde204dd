"""The module's smoke stage, replayed end to end in real containers on dockerd.

The seed step trains a small bundle in the tools container; the moto S3 store and the MLflow mock run as
service containers bound as ``s3`` and ``mlflow``; the built serving image starts with the smoke environment
(its S3 keys as secrets, runtime environment only) and is bound to the checker as ``app`` once its
HEALTHCHECK says healthy; the module's checker then runs every check against it.
"""

from __future__ import annotations

import re

import pytest
from flight_price.main import SMOKE_CREDENTIALS, FlightPrice

from tests.harness.replay import Replay, env_of

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.usefixtures("tools_container")]


def test_the_smoke_stage_passes_with_every_part_in_a_container(replay: Replay, flight_price: FlightPrice) -> None:
    image = flight_price.build()
    readiness_before = len(replay.ready)  # the session's replay also ran other tests' services
    report = replay.stdout(flight_price.smoke_check(image), fresh=True)  # the checker runs now, never from cache
    print(f"\n{report.strip()}")
    lines = report.strip().splitlines()
    passed = re.fullmatch(r"(\d+)/(\d+) checks passed", lines[-1])
    assert passed and passed.group(1) == passed.group(2) and int(passed.group(2)) >= 5, lines[-1]
    assert not [line for line in lines if "FAIL" in line]
    # Dagger's readiness: the mocks by their exposed port, the serving image by its own HEALTHCHECK
    assert sorted(replay.ready[readiness_before:]) == [("app", "healthy"), ("mlflow", "ports"), ("s3", "ports")]
    # the S3 keys reached the server as runtime environment only, never its image
    inspected = replay.inspect(replay.image(image))
    assert not set(SMOKE_CREDENTIALS) & set(env_of(inspected))
    history = replay.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", replay.image(image))
    assert not any(value in history for value in SMOKE_CREDENTIALS.values())
