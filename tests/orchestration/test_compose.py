"""orchestration/docker-compose.yaml and its .env.example, checked without a container engine: accepted by a real
Compose implementation, health-checked, gated on airflow-init, speaking the settings model's variable names, and
holding its credentials tight: the MinIO root account in minio and the bucket job only, a scoped key with a
bucket-only policy for everyone else, no secret with a default, MLflow on postgres with basic auth.

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
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from app.contract.connection import load_connection_settings, variable_names
from app.settings import env_names
from orchestration.work_area import WORK_URL_ENV
from tests.orchestration.airflow_stack import COMMON_ENV_NAMES
from tests.orchestration.compose_file import COMPOSE, ENV_EXAMPLE, docker_compose, read_env_file, without_name

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
    rf"|DUMB_INIT_SETSID|{WORK_URL_ENV})$"
)
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
    assert celery == {"redis", "airflow-worker", "flower"}
    executor = environment(services["airflow-scheduler"])["AIRFLOW__CORE__EXECUTOR"]
    assert executor == "LocalExecutor"


def test_airflow_environment_is_the_production_test_stacks(services: dict[str, dict[str, Any]]) -> None:
    """Every Airflow service's environment holds exactly the variables the production-shape test stack gives its
    components (``tests/orchestration/airflow_stack.py``, which runs the DAG on them), plus what one service
    needs for itself: airflow-init's first-start settings, the Celery worker's warm shutdown."""
    own = {
        INIT: {"AIRFLOW_UID", "_AIRFLOW_DB_MIGRATE", "_AIRFLOW_WWW_USER_CREATE", "_AIRFLOW_WWW_USER_USERNAME",
               "_AIRFLOW_WWW_USER_PASSWORD"},
        "airflow-worker": {"DUMB_INIT_SETSID"},
    }  # fmt: skip
    for name in (*AIRFLOW_COMPONENTS, INIT, "airflow-worker", "flower"):
        variables = set(environment(services[name]))
        assert variables - own.get(name, set()) == set(COMMON_ENV_NAMES), name
        assert own.get(name, set()) <= variables, name


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
    init_script = " ".join(map(str, services[INIT]["command"]))
    assert "chown" in init_script  # fixes ownership of the mounted volumes
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
