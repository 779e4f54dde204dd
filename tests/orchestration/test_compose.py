"""orchestration/docker-compose.yaml and its .env.example, checked without a container engine: accepted by a real
Compose implementation, health-checked, gated on airflow-init, speaking the settings model's variable names, and
holding its credentials tight: the MinIO root account in minio and the bucket job only, a scoped key with a
bucket-only policy for everyone else, no secret with a default, MLflow on postgres with basic auth; and hardened:
every service with CPU and memory limits, no capabilities, no new privileges and a read-only root filesystem,
none running as root but those ``ROOT_SERVICES`` names with a reason, Redis behind a password, flower behind its
own profile and a login.

The implementation is Debian's ``docker-compose`` (1.29): its ``config`` command validates the file against its
own schema and interpolates the variables from an env file without a Docker daemon, and its own template class
lists the variable references. It predates the specification's top-level ``name``, so the file reaches it
without that one line, which is checked here against the specification's rule for project names. Without
``docker-compose`` installed the tests fail, saying how to install it.

The one-shot jobs' scripts are run here with stand-ins for ``mc``, ``mlflow server`` and MLflow's auth client (no
MinIO, postgres or MLflow server is started): what they would create and start is recorded and checked.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import pytest
import redis as redis_client
import yaml

from app.contract.connection import load_connection_settings, variable_names
from app.settings import env_names
from orchestration.work_area import WORK_URL_ENV
from tests.harness.airflow_stack import COMMON_ENV_NAMES
from tests.harness.compose_file import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT_SERVICES,
    docker_compose,
    read_env_file,
    without_name,
)
from tests.harness.services import free_port

pytestmark = pytest.mark.integration  # runs Debian's docker-compose (a real process, absent from the tools image)

REPO: Final = Path(__file__).resolve().parents[2]
# The Compose specification's project name: lower-case letters, digits, '-' and '_', starting with a letter or digit.
PROJECT_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
INIT: Final = "airflow-init"
BUCKET_JOB: Final = "minio-buckets"
ONE_SHOT: Final = {INIT, BUCKET_JOB, "mlflow-database", "mlflow-users"}
AIRFLOW_COMPONENTS: Final = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
# Variables of the tools in the stack (Airflow, postgres, MinIO, MLflow's server, the Airflow image) and the
# DAG's work directory; every other variable a service receives must be one the settings model reads.
TOOL_VARIABLE: Final = re.compile(
    r"^(AIRFLOW__\w+|AIRFLOW_UID|_AIRFLOW_\w+|POSTGRES_\w+|PG(HOST|USER|DATABASE|PASSWORD)"
    r"|MINIO_ROOT_\w+|MINIO_SCOPED_\w+|MLFLOW_S3_ENDPOINT_URL|MLFLOW_ARTIFACTS_DESTINATION|MLFLOW_DB_PASSWORD"
    r"|MLFLOW_AUTH_ADMIN_(USERNAME|PASSWORD)|MLFLOW_FLASK_SERVER_SECRET_KEY|MLFLOW_AIRFLOW_(USERNAME|PASSWORD)"
    rf"|DUMB_INIT_SETSID|AIRFLOW_CONFIG|MC_CONFIG_DIR|REDIS_PASSWORD|FLOWER_BASIC_AUTH|{WORK_URL_ENV})$"
)
# What the Airflow containers get besides the production-shape test stack's environment: where Airflow writes its
# defaults file, off the read-only root filesystem (the host processes of that stack set AIRFLOW_HOME instead).
CONTAINER_ONLY_ENV: Final = {"AIRFLOW_CONFIG"}
# Variables naming a directory or file a service writes: it must be on one of that service's tmpfs or volumes.
WRITTEN_PATH_VARIABLES: Final = ("AIRFLOW_CONFIG", "MC_CONFIG_DIR", "TMPDIR")
# The most CPUs a service may be given: Docker refuses a container more than the machine has, and the stack is
# meant for a machine of 2 cores (the one the tests run on).
MAX_CPUS: Final = 2.0
MEMORY_UNITS: Final = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
# What the DAG's tasks read: the connection settings (app.contract.connection.ConnectionSettings), the Airflow
# environment's names other than Airflow's own and the work area's.
DAG_SETTINGS: Final = {name for name in COMMON_ENV_NAMES if not name.startswith("AIRFLOW__")} - {WORK_URL_ENV}
# A variable holding a password, secret or key (an access key *ID* names an account and is not secret).
SECRET_NAME: Final = re.compile(r"PASSWORD|SECRET|FERNET|KEY(?!_ID$)")
# A URL with a literal password in it (user:password@host); a ${VAR} in the password part does not match.
LITERAL_PASSWORD_URL: Final = re.compile(r"://[\w.~-]+:[\w.~%-]+@")
# What the scoped MinIO key may do: object reads, writes and deletes, and listing; no admin, no other bucket.
SCOPED_ACTIONS: Final = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListBucket",
    "s3:GetBucketLocation",
}
# Run by docker-compose's own interpreter: every variable reference in the file's values, as docker-compose's
# template class (the one its interpolation substitutes with) parses it; escaped ``$$`` ones belong to the shell.
REFERENCES_SCRIPT: Final = """
import json, sys
from compose.config.config import load_yaml
from compose.config.interpolation import TemplateWithDefaults

def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node

found = []
for text in strings(load_yaml(sys.argv[1])):
    for match in TemplateWithDefaults.pattern.finditer(text):
        if match.group("escaped") is not None:
            continue
        braced, operator = match.group("braced"), match.group("sep") or ""
        name, _, argument = braced.partition(operator) if operator else (match.group("named") or braced, "", "")
        found.append({"text": match.group(0), "name": name, "operator": operator, "argument": argument, "in": text})
json.dump(found, sys.stdout)
"""


def compose_config(values: dict[str, str], work: Path, *, text: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of the file (or ``text``) with ``values`` as its env file, nothing else from the
    environment; relative paths resolve from orchestration/, as for ``docker compose -f orchestration/...``."""
    env_file = work / f"{uuid.uuid4().hex}.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return subprocess.run(
        [docker_compose(), "-f", "-", "--env-file", str(env_file), "config"],
        input=without_name(COMPOSE.read_text() if text is None else text),
        cwd=COMPOSE.parent,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def is_secret(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose")


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def dot_env(example_env: dict[str, str]) -> dict[str, str]:
    """.env.example with its empty secrets filled in, each with its own value, as a user following it would."""
    return {name: value or f"generated-{name.strip('_').lower()}-0123456789" for name, value in example_env.items()}


@pytest.fixture(scope="module")
def rendered(dot_env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with that .env."""
    return compose_config(dot_env, work)


@pytest.fixture(scope="module")
def compose(rendered: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The compose file as docker-compose resolves it with that .env."""
    assert rendered.returncode == 0, f"docker-compose config refused the file:\n{rendered.stderr}"
    loaded: dict[str, Any] = unescaped(yaml.safe_load(rendered.stdout))
    return loaded


@pytest.fixture(scope="module")
def references() -> list[dict[str, str]]:
    """Every variable reference in the file, as docker-compose parses it: text, name, operator, argument, and
    the whole value it is in."""
    interpreter = Path(docker_compose()).read_text().splitlines()[0].removeprefix("#!").split()
    listed = subprocess.run(
        [*interpreter, "-c", REFERENCES_SCRIPT, str(COMPOSE)], capture_output=True, text=True, timeout=60, check=True
    )
    found: list[dict[str, str]] = json.loads(listed.stdout)
    return found


def unescaped(node: Any) -> Any:
    """``config``'s output as the containers get it: docker-compose writes every ``$`` of a resolved value as
    ``$$``, so its output is itself a compose file (``compose.config.serialize``)."""
    if isinstance(node, dict):
        return {key: unescaped(value) for key, value in node.items()}
    if isinstance(node, list):
        return [unescaped(value) for value in node]
    return node.replace("$$", "$") if isinstance(node, str) else node


def parsed(references: list[dict[str, str]], value: str) -> set[tuple[str, str, str]]:
    """(name, operator, argument) of each reference that is the whole of ``value``."""
    return {(r["name"], r["operator"], r["argument"]) for r in references if r["in"] == r["text"] == value}


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command_line(service: dict[str, Any]) -> list[str]:
    """What the container runs: its entrypoint and command. Without an entrypoint, the image's own runs the
    command as given (the Airflow image's entrypoint execs ``bash ...`` and ``python ...`` commands)."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        parts += [value] if isinstance(value, str) else [str(item) for item in value]
    return parts


def stub(directory: Path, name: str, body: str) -> None:
    """An executable ``name`` in ``directory``: a Python script run by this interpreter."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


MC_STUB: Final = """
import json, os, sys
args = sys.argv[1:]
record = {"argv": args}
if args[:3] == ["admin", "policy", "create"]:
    with open(args[5]) as policy:
        record["policy"] = policy.read()
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
"""


def run_bucket_job(service: dict[str, Any], tmp_path: Path, **overrides: str) -> list[dict[str, Any]]:
    """Runs the bucket job's script with a stand-in ``mc`` that records each call (and the policy file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub(bin_dir, "mc", MC_STUB)
    log = tmp_path / "mc.jsonl"
    log.unlink(missing_ok=True)
    env = {**environment(service), **overrides, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    env |= {"STUB_LOG": str(log), "TMPDIR": str(tmp_path)}
    subprocess.run(command_line(service), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    return [json.loads(line) for line in log.read_text().splitlines()]


class _AnyUrl:
    """Equal to any http(s) URL (the store's endpoint in an mc call)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("http")


ANY_URL: Final = _AnyUrl()


def mc_calls(calls: list[dict[str, Any]], *prefix: str) -> list[list[str]]:
    return [call["argv"] for call in calls if call["argv"][: len(prefix)] == list(prefix)]


def bucket_of(url: str) -> str:
    return urlsplit(url).netloc


def test_docker_compose_accepts_the_file(
    rendered: subprocess.CompletedProcess[str], dot_env: dict[str, str], work: Path
) -> None:
    assert rendered.returncode == 0, f"docker-compose config refused the file:\n{rendered.stderr}"
    # Every variable the file uses is set by the .env (docker-compose warns about each one it defaults to "").
    assert "variable is not set" not in rendered.stderr, rendered.stderr
    name = yaml.safe_load(COMPOSE.read_text())["name"]
    assert isinstance(name, str) and PROJECT_NAME.match(name), f"{name!r} is no Compose project name"
    # The check really constrains: a misspelt key is refused, naming it.
    misspelt = re.sub(r"^(  postgres:\n)", r"\1    helthcheck: {}\n", COMPOSE.read_text(), count=1, flags=re.M)
    refused = compose_config(dot_env, work, text=misspelt)
    assert refused.returncode != 0 and "helthcheck" in refused.stderr, refused.stderr


def test_the_stack_has_every_component(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "minio", "minio-buckets", "mlflow", INIT, *AIRFLOW_COMPONENTS} <= set(services)
    commands = {name: services[name].get("command") for name in AIRFLOW_COMPONENTS}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    celery = {name for name, service in services.items() if "celery" in service.get("profiles", [])}
    assert celery == {"redis", "airflow-worker"}
    assert services["flower"]["profiles"] == ["flower"]  # off even when the celery profile is on
    executor = environment(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTOR"]
    assert executor == "LocalExecutor"


def test_airflow_environment_is_the_production_test_stacks(services: dict[str, dict[str, Any]]) -> None:
    """Every Airflow service's environment holds exactly the variables the production-shape test stack gives its
    components (``tests/harness/airflow_stack.py``, which runs the DAG on them), plus what one service
    needs for itself: airflow-init's first-start settings, the Celery worker's warm shutdown, flower's login; and
    where Airflow writes its defaults in a container (``CONTAINER_ONLY_ENV``)."""
    own = {
        INIT: {"AIRFLOW_UID", "_AIRFLOW_DB_MIGRATE", "_AIRFLOW_WWW_USER_CREATE", "_AIRFLOW_WWW_USER_USERNAME",
               "_AIRFLOW_WWW_USER_PASSWORD"},
        "airflow-worker": {"DUMB_INIT_SETSID"},
        "flower": {"FLOWER_BASIC_AUTH"},
    }  # fmt: skip
    for name in (*AIRFLOW_COMPONENTS, INIT, "airflow-worker", "flower"):
        variables = set(environment(services[name])) - CONTAINER_ONLY_ENV
        assert variables - own.get(name, set()) == set(COMMON_ENV_NAMES), name
        assert own.get(name, set()) <= variables, name
        assert set(environment(services[name])) >= CONTAINER_ONLY_ENV, name


def test_celery_workers_share_no_disk(services: dict[str, dict[str, Any]]) -> None:
    """Two workers with no volume at all: what a task needs comes from the object store (TRAINING_WORK_URL)."""
    worker = services["airflow-worker"]
    assert worker["command"] == "celery worker"
    assert worker["deploy"]["replicas"] == 2
    assert not worker.get("volumes")
    assert environment(worker)[WORK_URL_ENV].startswith("s3://")
    # and no other Airflow component holds a volume the tasks' files could go through: only the logs
    for name in (*AIRFLOW_COMPONENTS, INIT):
        targets = {
            volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
            for volume in services[name].get("volumes", [])
        }
        assert targets <= {"/opt/airflow/logs", "/opt/airflow/project/app", "/opt/airflow/project/orchestration"}


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} is a one-shot job"
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") in {"always", "unless-stopped"}, f"{name} is not restarted"


def test_airflow_services_are_gated_on_init(services: dict[str, dict[str, Any]]) -> None:
    airflow = {name for name, s in services.items() if "AIRFLOW__CORE__EXECUTOR" in environment(s)} - {INIT}
    assert airflow >= AIRFLOW_COMPONENTS
    for name in airflow:
        depends = services[name]["depends_on"]
        assert depends[INIT]["condition"] == "service_completed_successfully", name
        # The scoped MinIO key exists before any Airflow component starts.
        assert depends[BUCKET_JOB]["condition"] == "service_completed_successfully", name
    # Whatever runs tasks (the scheduler under LocalExecutor, the Celery worker) starts once MLflow is up and
    # Airflow's MLflow account exists.
    for name in ("airflow-scheduler", "airflow-worker"):
        assert services[name]["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"
    assert services["mlflow-users"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["mlflow-database"]["condition"] == "service_completed_successfully"
    assert services[INIT]["depends_on"]["postgres"]["condition"] == "service_healthy"
    init_env = environment(services[INIT])
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true" and init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert services["mlflow"]["depends_on"]["minio-buckets"]["condition"] == "service_completed_successfully"


def test_dependencies_exist_and_wait_for_the_right_state(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        profiled = bool(service.get("profiles"))
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            # `docker compose up` without the profile must not need a profiled service.
            assert profiled or not services[target].get("profiles"), f"{name} needs profiled {target}"
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {target}"


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_environment_names_are_the_settings_models(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_names = env_names()
    for name, service in services.items():
        for variable in environment(service):
            assert TOOL_VARIABLE.match(variable) or variable in settings_names, (
                f"{name} passes {variable}, which app.settings.Settings does not define"
            )
    scheduler = environment(services["airflow-scheduler"])
    assert set(scheduler) >= DAG_SETTINGS and variable_names() >= DAG_SETTINGS
    # The values the stack gives the DAG are valid settings.
    for variable in settings_names:
        monkeypatch.delenv(variable, raising=False)
    for variable in DAG_SETTINGS:
        monkeypatch.setenv(variable, scheduler[variable])
    settings = load_connection_settings()
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.dvc_remote_url is not None and settings.dvc_remote_url.startswith("s3://")


def test_env_example_documents_every_variable(example_env: dict[str, str], references: list[dict[str, str]]) -> None:
    used = {reference["name"] for reference in references}
    assert used == set(example_env), (
        f"used but not in .env.example: {sorted(used - set(example_env))}; "
        f"in .env.example but unused: {sorted(set(example_env) - used)}"
    )
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            above = lines[:index]
            while above and above[-1] and not above[-1].startswith("#"):
                above.pop()  # variables of the same block share the comment above them
            assert above and above[-1].startswith("#"), f".env.example: {line.split('=')[0]} has no comment"
    # Every secret is left empty (nothing to copy and use as it is), with a way to generate it; nothing else is.
    secrets = {name for name in example_env if is_secret(name)}
    assert secrets and secrets == {name for name, value in example_env.items() if not value}
    text = ENV_EXAMPLE.read_text()
    assert "secrets.token_urlsafe" in text and "Fernet.generate_key()" in text


def test_airflow_image_is_the_one_the_dagger_module_builds(
    services: dict[str, dict[str, Any]], example_env: dict[str, str], references: list[dict[str, str]]
) -> None:
    module_source = str(REPO / "ci" / "src")  # the Dagger module's source directory, as tests/ci uses it
    if module_source not in sys.path:
        sys.path.insert(0, module_source)
    from flight_price.main import AIRFLOW_IMAGE_NAME

    raw = yaml.safe_load(COMPOSE.read_text())
    ((name, operator, image),) = parsed(references, raw["x-airflow-common"]["image"])
    assert (name, operator) == ("AIRFLOW_IMAGE", ":-")
    assert image == f"{AIRFLOW_IMAGE_NAME}:latest" == example_env["AIRFLOW_IMAGE"]
    assert services["mlflow"]["image"] == services["airflow-scheduler"]["image"] == image


def test_secrets_are_required_variables_without_defaults(
    compose: dict[str, Any],
    dot_env: dict[str, str],
    example_env: dict[str, str],
    references: list[dict[str, str]],
    work: Path,
) -> None:
    text = COMPOSE.read_text()
    for reference in references:
        name, operator = reference["name"], reference["operator"]
        if operator.endswith("?"):  # every error message says what to set and where
            assert name in reference["argument"] and "orchestration/.env" in reference["argument"], reference["text"]
        if is_secret(name):  # each reference of a secret is ${NAME:?...}: never a default, never empty
            assert operator == ":?", f"{reference['text']}: a secret must be required (${{{name}:?...}})"
    secret_names = {reference["name"] for reference in references if is_secret(reference["name"])}
    assert secret_names >= {
        "POSTGRES_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MINIO_SCOPED_SECRET_ACCESS_KEY",
        "AIRFLOW_FERNET_KEY",
        "_AIRFLOW_WWW_USER_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_AIRFLOW_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "REDIS_PASSWORD",
        "FLOWER_PASSWORD",
    }
    # Without any one of them, docker-compose refuses the file, and its message names the variable.
    names = sorted(secret_names)
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = dict(zip(names, pool.map(lambda n: compose_config({**dot_env, n: ""}, work), names), strict=True))
    for name, run in runs.items():
        assert run.returncode != 0 and f"set {name} in orchestration/.env" in run.stderr, (name, run.stderr)
    # Environment entries with a secret's name hold exactly one required variable, no literal.
    required = {reference["in"] for reference in references if reference["operator"] == ":?"}
    whole = {reference["in"] for reference in references if reference["in"] == reference["text"]}
    raw = yaml.safe_load(text)
    for service_name, service in raw["services"].items():
        for variable, value in environment(service).items():
            if is_secret(variable):
                assert value in required & whole, f"{service_name}: {variable}={value!r}"
    # No password written into a URL (postgresql://airflow:airflow@...).
    assert not LITERAL_PASSWORD_URL.search(text), LITERAL_PASSWORD_URL.search(text)
    assert "airflow:airflow@" not in text
    # The values the services get are the ones .env gives (.env.example gives none).
    interpolated = json.dumps(compose)
    for name in secret_names:
        assert example_env.get(name) == "" and dot_env[name] in interpolated, name


def test_minio_root_account_stays_with_minio_and_the_bucket_job(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    minio = environment(services["minio"])
    root_user, root_password = minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]
    holders = {name for name, service in services.items() if root_password in json.dumps(service)}
    assert holders == {"minio", BUCKET_JOB}
    holders = {name for name, service in services.items() if root_user in environment(service).values()}
    assert holders == {"minio", BUCKET_JOB}
    # The bucket job logs in as root and creates the scoped user; the others get that user's key, as AWS_*.
    calls = run_bucket_job(services[BUCKET_JOB], tmp_path)
    assert mc_calls(calls, "alias", "set", "store") == [["alias", "set", "store", ANY_URL, root_user, root_password]]
    (added,) = mc_calls(calls, "admin", "user", "add")
    scoped_id, scoped_secret = added[4], added[5]
    assert scoped_id != root_user and scoped_secret != root_password
    airflow = {name for name, service in services.items() if "AIRFLOW__CORE__EXECUTOR" in environment(service)}
    assert airflow >= AIRFLOW_COMPONENTS | {INIT, "airflow-worker", "flower"}
    for name in airflow | {"mlflow"}:
        env = environment(services[name])
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (scoped_id, scoped_secret), name


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),  # the defaults: the buckets of DVC_REMOTE_URL and MLFLOW_ARTIFACTS_DESTINATION
        ({"DVC_REMOTE_URL": "s3://shared/dvc", "MLFLOW_ARTIFACTS_DESTINATION": "s3://shared/mlflow"}, {"shared"}),
        ({"DVC_REMOTE_URL": "s3://other-bucket"}, {"other-bucket", "mlflow"}),
    ],
)
def test_bucket_job_grants_the_scoped_user_its_buckets_only(
    services: dict[str, dict[str, Any]],
    references: list[dict[str, str]],
    tmp_path: Path,
    overrides: dict[str, str],
    expected: set[str] | None,
) -> None:
    job = services[BUCKET_JOB]
    if expected is None:
        # The policy follows the same defaults the DAG and MLflow use.
        raw_env = yaml.safe_load(COMPOSE.read_text())["x-airflow-common"]["environment"]
        (default,) = parsed(references, raw_env["DVC_REMOTE_URL"])
        assert default[:2] == ("DVC_REMOTE_URL", ":-")
        dvc_url = environment(job)["DVC_REMOTE_URL"]
        assert dvc_url == default[2] == environment(services["airflow-scheduler"])["DVC_REMOTE_URL"]
        artifacts = environment(job)["MLFLOW_ARTIFACTS_DESTINATION"]
        assert artifacts == environment(services["mlflow"])["MLFLOW_ARTIFACTS_DESTINATION"]
        expected = {bucket_of(dvc_url), bucket_of(artifacts)}
        assert expected == {"models", "mlflow"}
    calls = run_bucket_job(job, tmp_path, **overrides)
    assert {argv[-1] for argv in mc_calls(calls, "mb")} == {f"store/{bucket}" for bucket in expected}
    (created,) = [call for call in calls if call["argv"][:3] == ["admin", "policy", "create"]]
    policy_name = created["argv"][4]
    document = json.loads(created["policy"])
    assert document["Version"] == "2012-10-17"
    resources: set[str] = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow" and set(statement) == {"Effect", "Action", "Resource"}
        actions = {statement["Action"]} if isinstance(statement["Action"], str) else set(statement["Action"])
        assert actions <= SCOPED_ACTIONS, actions - SCOPED_ACTIONS
        statement_resources = statement["Resource"]
        resources |= {statement_resources} if isinstance(statement_resources, str) else set(statement_resources)
        # Bucket-level actions on bucket ARNs, object-level actions on object ARNs.
        on_objects = all(resource.endswith("/*") for resource in statement_resources)
        assert on_objects == bool(actions & {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"})
    assert resources == {f"arn:aws:s3:::{b}" for b in expected} | {f"arn:aws:s3:::{b}/*" for b in expected}
    # That policy is the scoped user's, and the job proves the key can list each bucket.
    (added,) = mc_calls(calls, "admin", "user", "add")
    scoped_id = environment(job)["MINIO_SCOPED_ACCESS_KEY_ID"]
    assert added[3:] == ["store", scoped_id, environment(job)["MINIO_SCOPED_SECRET_ACCESS_KEY"]]
    assert mc_calls(calls, "admin", "policy", "attach") == [
        ["admin", "policy", "attach", "store", policy_name, "--user", scoped_id]
    ]
    order = [call["argv"][:3] for call in calls]
    assert order.index(["admin", "policy", "create"]) < order.index(["admin", "policy", "attach"])
    assert sorted(argv[-1] for argv in mc_calls(calls, "ls")) == sorted(f"scoped/{b}" for b in expected)
    (scoped_alias,) = mc_calls(calls, "alias", "set", "scoped")
    assert scoped_alias[4:] == [scoped_id, environment(job)["MINIO_SCOPED_SECRET_ACCESS_KEY"]]


PYTHON_STUB: Final = """
import json, os, stat, sys
if sys.argv[1:3] != ["-m", "mlflow"]:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
config = os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
record = {"argv": sys.argv[1:], "env": dict(os.environ)}
if config:
    with open(config) as file:
        record["auth_config"] = file.read()
    record["auth_config_mode"] = stat.S_IMODE(os.stat(config).st_mode)
with open(os.environ["STUB_LOG"], "w") as log:
    json.dump(record, log)
"""


def test_mlflow_serves_with_basic_auth_on_postgres(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    mlflow = services["mlflow"]
    assert mlflow["healthcheck"]["test"][-1].endswith(":5000/health")  # served without auth by basic-auth
    # Run its command with a stand-in for `python -m mlflow` that records how the server would be started.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "python", PYTHON_STUB)
    log = tmp_path / "server.json"
    db_password = "p@ss:w/rd%20?#&"  # survives the URL and the ini file
    env = {**environment(mlflow), "MLFLOW_DB_PASSWORD": db_password, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    env |= {"STUB_LOG": str(log), "TMPDIR": str(tmp_path)}
    subprocess.run(command_line(mlflow), env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    started = json.loads(log.read_text())
    argv = " ".join(started["argv"])
    assert re.search(r"--app-name[ =]basic-auth\b", argv), argv
    assert "--backend-store-uri" not in argv and db_password not in argv  # the password is not on a command line
    assert re.search(r"--artifacts-destination[ =]s3://", argv), argv
    server_env = started["env"]
    backend = urlsplit(server_env["MLFLOW_BACKEND_STORE_URI"])
    assert (backend.scheme, backend.hostname, backend.username, backend.path) == (
        "postgresql",
        "postgres",
        "mlflow",
        "/mlflow",
    )
    assert unquote(backend.password or "") == db_password
    # The auth config, read as MLflow reads it (configparser with interpolation), from a file only its owner reads.
    assert started["auth_config_mode"] & 0o077 == 0
    config = configparser.ConfigParser()
    config.read_string(started["auth_config"])
    auth = config["mlflow"]
    assert auth["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    auth_db = urlsplit(auth["database_uri"])
    assert (auth_db.scheme, auth_db.hostname, auth_db.username, auth_db.path) == (
        "postgresql",
        "postgres",
        "mlflow",
        "/mlflow_auth",
    )
    assert unquote(auth_db.password or "") == db_password
    # The admin comes from the environment (MLflow prefers it to the file), and so does the CSRF signing key.
    assert server_env["MLFLOW_AUTH_ADMIN_USERNAME"] and server_env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "admin_password" not in auth
    # The role and both databases are the ones the mlflow-database job creates.
    init_sql = " ".join(command_line(services["mlflow-database"]))
    assert "ALTER ROLE mlflow WITH LOGIN PASSWORD :'mlflow_password'" in init_sql
    assert "\\getenv mlflow_password MLFLOW_DB_PASSWORD" in init_sql
    assert "ARRAY['mlflow', 'mlflow_auth']" in init_sql and "OWNER mlflow" in init_sql
    database_env = environment(services["mlflow-database"])
    assert database_env["MLFLOW_DB_PASSWORD"] == environment(mlflow)["MLFLOW_DB_PASSWORD"]
    assert database_env["PGHOST"] == "postgres"
    # Without the database password the script stops before the server: no silent fallback to a sqlite store.
    log.unlink()
    missing = {k: v for k, v in env.items() if k != "MLFLOW_DB_PASSWORD"}
    failed = subprocess.run(command_line(mlflow), env=missing, cwd=tmp_path, capture_output=True, timeout=60)
    assert failed.returncode != 0 and not log.exists()


FAKE_MLFLOW: Final = {
    "mlflow/__init__.py": "",
    "mlflow/exceptions.py": """
class RestException(Exception):
    def __init__(self, json):
        super().__init__(json["message"])
        self.error_code = json["error_code"]
""",
    "mlflow/server/__init__.py": """
import json, os
from mlflow.exceptions import RestException

class Client:
    def __init__(self, tracking_uri):
        login = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        self.record("init", tracking_uri, *login)

    def record(self, *call):
        with open(os.environ["STUB_LOG"], "a") as log:
            log.write(json.dumps(call) + "\\n")

    def get_user(self, username):
        self.record("get_user", username)
        if username not in os.environ["EXISTING_USERS"].split():
            raise RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such user"})

    def create_user(self, username, password):
        self.record("create_user", username, password)

    def update_user_password(self, username, password):
        self.record("update_user_password", username, password)

def get_app_client(app_name, tracking_uri):
    assert app_name == "basic-auth"
    return Client(tracking_uri)
""",
}


@pytest.mark.parametrize("exists", [False, True])
def test_mlflow_users_gives_airflow_its_own_account(
    services: dict[str, dict[str, Any]], tmp_path: Path, exists: bool
) -> None:
    for relative, source in FAKE_MLFLOW.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(source)
    job, server = environment(services["mlflow-users"]), environment(services["mlflow"])
    scheduler = environment(services["airflow-scheduler"])
    airflow_user, airflow_password = scheduler["MLFLOW_TRACKING_USERNAME"], scheduler["MLFLOW_TRACKING_PASSWORD"]
    log = tmp_path / "calls.jsonl"
    env = {**job, "PYTHONPATH": str(tmp_path), "STUB_LOG": str(log), "EXISTING_USERS": airflow_user if exists else ""}
    command = command_line(services["mlflow-users"])
    assert command[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *command[1:]], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # It logs in as MLflow's admin, and makes (or resets) the account every Airflow container uses.
    admin = [server["MLFLOW_AUTH_ADMIN_USERNAME"], server["MLFLOW_AUTH_ADMIN_PASSWORD"]]
    assert calls[0] == ["init", scheduler["MLFLOW_TRACKING_URI"], *admin]
    change = "update_user_password" if exists else "create_user"
    assert calls[1:] == [["get_user", airflow_user], [change, airflow_user, airflow_password]]
    assert airflow_user != admin[0] and airflow_password != admin[1]
    for name, service in services.items():
        if "AIRFLOW__CORE__EXECUTOR" in environment(service):
            env_of = environment(service)
            assert (env_of["MLFLOW_TRACKING_USERNAME"], env_of["MLFLOW_TRACKING_PASSWORD"]) == (
                airflow_user,
                airflow_password,
            ), name
    # The admin's password reaches the server and this job only.
    assert {name for name, service in services.items() if admin[1] in json.dumps(service)} == {"mlflow", "mlflow-users"}
    # Refused when the two accounts would be one.
    same = {**env, "MLFLOW_AIRFLOW_USERNAME": admin[0]}
    refused = subprocess.run([sys.executable, *command[1:]], env=same, cwd=tmp_path, capture_output=True, timeout=60)
    assert refused.returncode != 0 and b"must differ" in refused.stderr


# --- Hardening ------------------------------------------------------------------------------------------------------


def cpu_and_memory_limits(service: dict[str, Any]) -> tuple[float | None, int | None]:
    """The service's CPU limit (cores) and memory limit (bytes), from ``cpus``/``mem_limit`` or the specification's
    ``deploy.resources.limits`` (docker-compose 1.29 applies both forms); None where unset."""
    deploy = (service.get("deploy") or {}).get("resources", {}).get("limits", {})
    cpus, memory = service.get("cpus", deploy.get("cpus")), service.get("mem_limit", deploy.get("memory"))
    if memory is not None and not isinstance(memory, int):
        parsed = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(memory).lower())
        assert parsed, f"a memory limit of {memory!r}"
        memory = int(float(parsed[1]) * MEMORY_UNITS[parsed[2] or "b"])
    return (None if cpus is None else float(cpus)), memory


def tmpfs_paths(service: dict[str, Any]) -> set[str]:
    entries = service.get("tmpfs", [])
    return {entry.split(":", 1)[0] for entry in ([entries] if isinstance(entries, str) else entries)}


def volume_targets(service: dict[str, Any], *, writable_only: bool = False) -> set[str]:
    targets = set()
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            target, read_only = volume["target"], bool(volume.get("read_only"))
        else:
            target, read_only = volume.split(":")[1], volume.endswith(":ro")
        if not (writable_only and read_only):
            targets.add(target)
    return targets


def writable(service: dict[str, Any], path: str) -> bool:
    """Whether ``path`` lies on one of the service's tmpfs mounts or writable volumes."""
    mounts = tmpfs_paths(service) | volume_targets(service, writable_only=True)
    return any(path == mount or path.startswith(mount.rstrip("/") + "/") for mount in mounts)


def test_every_service_has_cpu_and_memory_limits(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        cpus, memory = cpu_and_memory_limits(service)
        assert cpus is not None and memory is not None, f"{name} has no CPU or no memory limit"
        assert 0 < cpus <= MAX_CPUS, f"{name}: cpus {cpus}"
        assert memory >= 64 * 2**20, f"{name}: a memory limit of {memory} bytes"
    # The training tasks run in the scheduler (LocalExecutor) or a worker: those two get the most memory.
    limits = {name: cpu_and_memory_limits(service)[1] or 0 for name, service in services.items()}
    assert limits["airflow-scheduler"] == limits["airflow-worker"] == max(limits.values())


def test_every_service_drops_every_capability_and_gains_no_privileges(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], f"{name} keeps capabilities: cap_drop {service.get('cap_drop')}"
        assert not service.get("cap_add"), f"{name} adds back {service['cap_add']}"
        assert "no-new-privileges:true" in service.get("security_opt", []), f"{name} may gain privileges"
        assert not service.get("privileged"), f"{name} is privileged"
        assert not {"network_mode", "pid", "ipc", "devices"} & set(service), f"{name} reaches into the host"


def test_every_root_filesystem_is_read_only(services: dict[str, dict[str, Any]]) -> None:
    """A read-only root; /tmp and every directory a service is told to write (``WRITTEN_PATH_VARIABLES``) are on
    a tmpfs or a volume of its own."""
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name} has a writable root filesystem"
        assert writable(service, "/tmp"), f"{name} has no writable /tmp"
        for variable in WRITTEN_PATH_VARIABLES:
            if path := environment(service).get(variable):
                assert writable(service, path), f"{name}: {variable}={path} is on the read-only root"
    # Where each service keeps its data: a volume (postgres, MinIO, the Airflow logs) or, for a Celery worker,
    # which shares no disk, a tmpfs of its own.
    assert "/var/lib/postgresql/data" in volume_targets(services["postgres"])
    assert writable(services["postgres"], "/var/run/postgresql/.s.PGSQL.5432")  # its socket and lock file
    assert "/data" in volume_targets(services["minio"])
    assert writable(services["minio"], "/root/.minio/certs/CAs")  # created by MinIO at start
    for name in (*AIRFLOW_COMPONENTS, INIT, "airflow-worker"):
        assert writable(services[name], "/opt/airflow/logs"), name


def user_of(service: dict[str, Any]) -> str | None:
    """The user the container runs as (``user:``'s user part), or None: the image's own."""
    user = service.get("user")
    return None if user is None else str(user).split(":", 1)[0]


def test_no_service_runs_as_root_but_the_listed_ones(services: dict[str, dict[str, Any]]) -> None:
    assert set(ROOT_SERVICES) <= set(services) and all(ROOT_SERVICES.values())
    for name, service in services.items():
        user = user_of(service)
        if name in ROOT_SERVICES:
            assert user in {None, "0", "root"}, f"{name} no longer runs as root: take it off ROOT_SERVICES"
        else:
            # Named explicitly: an image's default user (root, for most) is not assumed to be anything else.
            assert user is not None, f"{name} runs as its image's default user (root for most images)"
            assert user not in {"0", "root"}, f"{name} runs as root"
    # airflow-init runs as every other Airflow container does (AIRFLOW_UID, group 0), and so has nothing to chown:
    # it checks that the logs volume is writable instead.
    airflow_user = services["airflow-scheduler"]["user"]
    assert airflow_user == f"{read_env_file(ENV_EXAMPLE)['AIRFLOW_UID']}:0"
    for name in (*AIRFLOW_COMPONENTS, INIT, "airflow-worker", "flower", "mlflow", "mlflow-users"):
        assert services[name]["user"] == airflow_user, name
    init_script = " ".join(command_line(services[INIT]))
    assert "chown" not in init_script and "/opt/airflow/logs" in init_script


def test_airflow_init_stops_when_it_cannot_write_the_logs(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Its script, run here with the logs directory moved to a path that does not exist (nothing on this machine
    is touched): it stops before migrating, saying what to do."""
    command = command_line(services[INIT])
    assert command[:2] == ["/bin/bash", "-c"] and "/opt/airflow/logs" in command[2]
    missing = tmp_path / "no-such-volume" / "logs"
    script = command[2].replace("/opt/airflow/logs", str(missing))
    env = {**environment(services[INIT]), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [*command[:2], script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"cannot write {missing}" in run.stderr and "docker volume rm" in run.stderr
    assert "airflow-init: database migrated" not in run.stdout and not missing.parent.exists()


REDIS_SERVER: Final = Path("/usr/bin/redis-server")
REDIS_CLI: Final = Path("/usr/bin/redis-cli")
# Wrappers around Debian's redis-server and redis-cli that move the server to a free port on 127.0.0.1 (the
# compose file's command runs unchanged through them) and record the server's arguments.
REDIS_SERVER_WRAPPER: Final = """
import json, os, sys
with open(os.environ["STUB_LOG"], "w") as log:
    json.dump(sys.argv[1:], log)
extra = ["--port", os.environ["REDIS_TEST_PORT"], "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
os.execv("/usr/bin/redis-server", ["redis-server", *sys.argv[1:], *extra])
"""
REDIS_CLI_WRAPPER: Final = """
import os, sys
os.execv("/usr/bin/redis-cli", ["redis-cli", "-p", os.environ["REDIS_TEST_PORT"], *sys.argv[1:]])
"""


def test_redis_requires_the_password_the_broker_url_carries(
    services: dict[str, dict[str, Any]], dot_env: dict[str, str], tmp_path: Path
) -> None:
    """The file's redis command and health check, run with Debian's redis-server and redis-cli (on a free port):
    the server refuses commands without REDIS_PASSWORD, and the Celery broker URL every Airflow container gets
    logs in with it."""
    if not (REDIS_SERVER.exists() and REDIS_CLI.exists()):
        pytest.fail("Debian's redis-server and redis-cli are needed: apt-get install -y redis-server", pytrace=False)
    redis = services["redis"]
    password = dot_env["REDIS_PASSWORD"]
    assert environment(redis)["REDIS_PASSWORD"] == password
    assert user_of(redis) == "redis"
    assert password not in json.dumps(command_line(redis))  # passed from the environment, not written in
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "redis-server", REDIS_SERVER_WRAPPER)
    stub(bin_dir, "redis-cli", REDIS_CLI_WRAPPER)
    port = free_port()
    log = tmp_path / "redis-server.json"
    env = {**environment(redis), "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "REDIS_TEST_PORT": str(port)}
    env |= {"STUB_LOG": str(log), "HOME": str(tmp_path)}
    health = redis["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL"
    server = subprocess.Popen(command_line(redis), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start (exit status {server.poll()})")
            time.sleep(0.1)
        anonymous = redis_client.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        with pytest.raises(redis_client.AuthenticationError):
            anonymous.ping()
        assert json.loads(log.read_text()) == ["--requirepass", password]
        # The health check passes with the container's environment, and fails on a wrong password.
        checked = subprocess.run(["sh", "-c", health[1]], env=env, capture_output=True, timeout=30, check=False)
        assert checked.returncode == 0, checked
        wrong = subprocess.run(
            ["sh", "-c", health[1]], env={**env, "REDIS_PASSWORD": "wrong"}, capture_output=True, timeout=30
        )
        assert wrong.returncode != 0
        # Every Airflow container's broker URL carries the password and logs in with it.
        for name, service in services.items():
            url = environment(service).get("AIRFLOW__CELERY__BROKER_URL")
            if url is None:
                continue
            parts = urlsplit(url)
            assert (parts.scheme, parts.hostname, parts.port, parts.password) == ("redis", "redis", 6379, password)
            local = parts._replace(netloc=f":{parts.password}@127.0.0.1:{port}").geturl()
            assert redis_client.Redis.from_url(local, socket_timeout=5).ping(), name
    finally:
        server.terminate()
        server.wait(timeout=30)


# Flower's options after it reads its environment, and which of its pages ask for the login (tornado's
# ``authenticated`` wraps a handler's ``get``): the dashboard does, the health check does not.
FLOWER_LOGIN_SCRIPT: Final = """
import json
from flower.command import apply_env_options
from flower.options import options
from flower.views.monitor import Healthcheck
from flower.views.workers import WorkersView
apply_env_options()
guarded = {"/healthcheck": hasattr(Healthcheck.get, "__wrapped__"), "/": hasattr(WorkersView.get, "__wrapped__")}
print(json.dumps({"basic_auth": options.basic_auth, "guarded": guarded}))
"""


def test_flower_is_off_by_default_and_asks_for_a_login(
    services: dict[str, dict[str, Any]], dot_env: dict[str, str]
) -> None:
    flower = services["flower"]
    assert flower["profiles"] == ["flower"]
    login = f"{dot_env['FLOWER_USERNAME']}:{dot_env['FLOWER_PASSWORD']}"
    assert environment(flower)["FLOWER_BASIC_AUTH"] == login
    assert "FLOWER_BASIC_AUTH" not in environment(services["airflow-worker"])  # the login is flower's only
    # Flower (the lock's version, the image's) reads that variable as its one login, and its health check asks
    # the one page Flower serves without it.
    env = {"FLOWER_BASIC_AUTH": login, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    read = subprocess.run(
        [sys.executable, "-c", FLOWER_LOGIN_SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(read.stdout.strip().splitlines()[-1])
    assert seen == {"basic_auth": [login], "guarded": {"/healthcheck": False, "/": True}}
    assert flower["healthcheck"]["test"][-1].endswith(":5555/healthcheck")
