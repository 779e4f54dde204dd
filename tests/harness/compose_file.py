"""orchestration/docker-compose.yaml as the tests read and run it: its paths, Debian's ``docker-compose``, and the
two adjustments that implementation needs (the file without its top-level ``name``, an env file read as compose
reads it)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parents[2]
COMPOSE: Final = REPO / "orchestration" / "docker-compose.yaml"
ENV_EXAMPLE: Final = REPO / "orchestration" / ".env.example"
DOCKER_COMPOSE: Final = "docker-compose"
INSTALL: Final = "apt-get install -y docker-compose"
TOP_LEVEL_NAME: Final = re.compile(r"^name:[^\n]*\n", re.MULTILINE)
# The services that run as root in their container, and why; every other one names a user that is not root. They
# too have every capability dropped, no new privileges and a read-only root filesystem.
ROOT_SERVICES: Final = {
    "minio": "the MinIO image has no user of its own, and its /data volume is created belonging to root",
    "minio-buckets": "the MinIO image's mc, as minio runs it: the image has no user of its own",
}


def docker_compose() -> str:
    """The ``docker-compose`` executable; the test fails (not skips) without it, saying how to install it."""
    found = shutil.which(DOCKER_COMPOSE)
    if found is None:
        pytest.fail(
            f"{DOCKER_COMPOSE} is not installed: the compose file is checked by Debian's docker-compose (`{INSTALL}`)",
            pytrace=False,
        )
    return found


def without_name(text: str) -> str:
    """The file without its top-level ``name`` (docker-compose 1.29 predates it; checked on its own)."""
    stripped, count = TOP_LEVEL_NAME.subn("", text)
    assert count == 1, "the compose file names its project once, at the top level"
    return stripped


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}
