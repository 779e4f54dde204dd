"""The orchestration image, built by replaying the module's own ``airflow()`` chain on the Airflow stand-in
(tests/harness/standins.py: made the way ``apache/airflow`` is made), and run: ``airflow version`` through the
image's entrypoint, the DAG parsed with no import error, the training dependencies imported as the airflow user.

The build itself is checked by running it: the requirements export must stay installable by pip (a hashed export
puts pip in require-hashes mode, and the image's own ``apache-airflow`` pin then fails the build).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Final

import pytest
from flight_price import main as module

from tests.harness.engine import DOCKER, Engine
from tests.harness.replay import Replay, env_of
from tests.harness.standins import AIRFLOW_HOME, AIRFLOW_UID
from tests.harness.warm import module_on_standins

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.usefixtures("airflow_images")]

DAG_ID: Final = "train_flight_price_model"
PROJECT: Final = "/opt/airflow/project"
# What the DAG's tasks import: the pipeline, the contract it shares with serving, and the libraries under them.
TRAINING_IMPORTS: Final = (
    "orchestration.pipeline",
    "orchestration.publish",
    "app.contract.bundle",
    "mlflow",
    "dvc.repo",
    "dvc_s3",
    "sklearn",
    "skops.io",
    "pandas",
    "pyarrow",
    "boto3",
    "psycopg2",
)


@pytest.fixture(scope="module")
def airflow_image(engine: Engine, replay: Replay) -> str:
    flight_price = module_on_standins(engine, airflow=True)
    image = replay.image(flight_price.airflow(revision="abc123", version="1.2.3"))
    print(f"\nAirflow image {image[:19]}: {replay.inspect(image)['Size'] / 1e6:.0f} MB on disk")
    return image


def run(engine: Engine, image: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``docker run`` of ``image`` with its own entrypoint and user, no network, ``args`` as the command."""
    flags = [f"--env={name}={value}" for name, value in (env or {}).items()]
    return subprocess.run(
        [DOCKER, "run", "--rm", "--network", "none", *flags, image, *args],
        env=engine.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_entrypoint_runs_airflow_commands(engine: Engine, airflow_image: str) -> None:
    for command in (("airflow", "version"), ("version",)):  # as given, and a bare sub-command as compose passes it
        ran = run(engine, airflow_image, *command)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.strip().splitlines()[-1] == module.AIRFLOW_VERSION, ran.stdout
    ran = run(engine, airflow_image, "python", "-c", "import sys; print(sys.argv[1])", "as-given")
    assert ran.returncode == 0 and ran.stdout.strip() == "as-given", ran.stderr[-2000:]


def test_the_image_is_the_official_shape(replay: Replay, airflow_image: str) -> None:
    inspected: dict[str, Any] = replay.inspect(airflow_image)
    env = env_of(inspected)
    assert inspected["Config"]["User"] == str(AIRFLOW_UID)
    assert env["AIRFLOW_HOME"] == AIRFLOW_HOME
    assert env["PYTHONPATH"] == PROJECT
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{PROJECT}/orchestration/dags"
    assert env["VIRTUAL_ENV"] == "/home/airflow/.local" and env["AIRFLOW_VERSION"] == module.AIRFLOW_VERSION
    labels = inspected["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == module.AIRFLOW_IMAGE_NAME
    assert labels["org.opencontainers.image.revision"] == "abc123"
    ran = replay.run_in(airflow_image, "id -u; id -g; whoami; command -v curl")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(AIRFLOW_UID), "0", "airflow", "/usr/bin/curl"]


def test_the_dag_imports_with_no_import_error(engine: Engine, airflow_image: str) -> None:
    script = (
        "airflow db migrate >/dev/null 2>&1 || { echo 'db migrate failed' >&2; exit 1; }; "
        "airflow dags list-import-errors --local --output json 2>/dev/null; echo '--'; "
        "airflow dags list --local --output json 2>/dev/null"
    )
    ran = run(engine, airflow_image, "bash", "-c", script)
    errors_json, _, dags_json = ran.stdout.partition("--\n")
    errors = json.loads(errors_json.strip().splitlines()[-1])
    assert errors == [], "\n".join(f"{e['filepath']}:\n{e['error']}" for e in errors)
    assert ran.returncode == 0, ran.stderr[-3000:]
    dags = json.loads(dags_json.strip().splitlines()[-1])
    assert [d["dag_id"] for d in dags] == [DAG_ID]
    assert dags[0]["fileloc"].startswith(f"{PROJECT}/orchestration/dags/")


def test_the_training_dependencies_import_as_the_airflow_user(engine: Engine, airflow_image: str) -> None:
    code = (
        "import importlib, os, sys; "
        f"[importlib.import_module(name) for name in {list(TRAINING_IMPORTS)!r}]; "
        "import airflow, mlflow, sklearn; "
        "print(os.getuid(), sys.prefix, airflow.__version__, mlflow.__version__, sklearn.__version__)"
    )
    ran = run(engine, airflow_image, "python", "-c", code)
    assert ran.returncode == 0, ran.stderr[-3000:]
    uid, prefix, airflow_version, *_ = ran.stdout.split()
    assert uid == str(AIRFLOW_UID)
    assert prefix == "/home/airflow/.local"  # the airflow user's virtualenv, which the extend step installed into
    assert airflow_version == module.AIRFLOW_VERSION
