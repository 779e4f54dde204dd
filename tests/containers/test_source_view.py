"""The ``test`` stage's view of the source: the tools container with ``/src`` exactly as Dagger uploads it.

The module's ``source`` is the repository filtered by its ``Ignore`` patterns (``tests/harness/context.py``
has Dagger's rules); the checks ``checks()`` runs (ruff, mypy, the unit tests) must pass on that view.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from flight_price.main import FlightPrice

from tests.harness.context import uploaded
from tests.harness.replay import Replay
from tests.harness.warm import REPO, source_ignore

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.usefixtures("tools_container")]


def test_src_holds_exactly_what_the_allowlist_keeps(replay: Replay, flight_price: FlightPrice) -> None:
    listing = replay.stdout(flight_price.tools().with_exec(["find", ".", "-mindepth", "1"]))
    seen = sorted(path.removeprefix("./") for path in listing.split())
    assert seen == uploaded(REPO, source_ignore())
    # what the unit tests read is there; what must never leave the machine is not
    assert {"README.md", "dagger.json", "uv.lock", "docs/architecture.md", "ci/src/flight_price/main.py"} <= set(seen)
    assert "deploy/kubernetes/kustomization.yaml" in seen
    forbidden = [
        path
        for path in seen
        if path.split("/")[0] in {".git", ".venv", ".ci"}
        or (path.startswith(".github") and path not in {".github", ".github/workflows", ".github/workflows/ci.yml"})
        or "__pycache__" in path.split("/")
        or path.startswith(("bench/.venvs", "bench/results", "ci/sdk", "ci/pyproject.toml"))
        or path.endswith((".pyc", "/.env", "prediction.env"))
    ]
    assert forbidden == []


def unit_test_count() -> int:
    """How many unit tests this checkout has (what ``checks()``'s pytest selects)."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not integration", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"(\d+)/\d+ tests collected", collected) or re.search(r"(\d+) tests? collected", collected)
    assert found, collected[-500:]
    return int(found.group(1))


# the whole unit suite again in the tools container: 470 s on a busy 2-core machine, past the suite's 600 s default
@pytest.mark.timeout(1500)
def test_the_checks_pass_on_that_view(replay: Replay, flight_price: FlightPrice) -> None:
    output = replay.stdout(flight_price.checks())
    summary = output.strip().splitlines()[-1]
    print(f"\nchecks() in the tools container: {summary}")
    # under pytest-xdist (pyproject.toml's addopts) the summary leaves out the deselected tests
    passed = re.match(r"(\d+) passed(, \d+ deselected)?(, \d+ warnings?)? in ", summary)
    assert passed, output[-3000:]  # nothing failed, errored or was skipped
    # every unit test of this checkout ran there and passed: none failed, errored or was skipped
    assert int(passed.group(1)) == unit_test_count()
