"""orchestration/docker-compose.yaml and its .env.example, checked without a container engine: valid per the
Compose specification's JSON schema, health-checked, gated on airflow-init, and speaking the settings model's
variable names.

The schema is vendored (``compose-spec.json``, see ``compose-spec.README.md``), so nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]  # no stubs in the locked environment
import pytest
import yaml

from app.contract.connection import load_connection_settings, variable_names
from app.settings import env_names
from orchestration.tasks import WORK_ROOT_ENV

REPO: Final = Path(__file__).resolve().parents[2]
COMPOSE: Final = REPO / "orchestration" / "docker-compose.yaml"
ENV_EXAMPLE: Final = REPO / "orchestration" / ".env.example"
SCHEMA: Final = Path(__file__).with_name("compose-spec.json")
INIT: Final = "airflow-init"
ONE_SHOT: Final = {INIT, "minio-buckets"}
AIRFLOW_COMPONENTS: Final = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
# Variables of the tools in the stack (Airflow, postgres, MinIO, MLflow's server, the Airflow image) and the
# DAG's work directory; every other variable a service receives must be one the settings model reads.
TOOL_VARIABLE: Final = re.compile(
    r"^(AIRFLOW__\w+|AIRFLOW_CONFIG|AIRFLOW_UID|_AIRFLOW_\w+|POSTGRES_\w+|MINIO_ROOT_\w+|MLFLOW_S3_ENDPOINT_URL"
    rf"|MLFLOW_ARTIFACTS_DESTINATION|DUMB_INIT_SETSID|{WORK_ROOT_ENV})$"
)
# What the DAG's tasks read: the connection settings (app.contract.connection.ConnectionSettings).
DAG_SETTINGS: Final = {
    "DVC_REMOTE_URL",
    "DVC_REMOTE_ENDPOINT_URL",
    "DVC_REMOTE_REGION",
    "MLFLOW_TRACKING_URI",
    "MODEL_NAME",
    "MODEL_ALIAS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
# Compose's interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR.
REFERENCE: Final = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(text: str, values: dict[str, str]) -> str:
    """Substitute variables the way ``docker compose`` does (the subset this file uses)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = values.get(name)
        op, arg = match["op"], match["arg"] or ""
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return value or ""

    return REFERENCE.sub(substitute, text)


def referenced(text: str) -> set[str]:
    """Every variable the compose file interpolates (escaped ``$$`` ones belong to the container's shell)."""
    return {m["braced"] or m["named"] for m in REFERENCE.finditer(text) if not m["escaped"]}


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(example_env: dict[str, str]) -> dict[str, Any]:
    """The compose file as ``docker compose config`` would see it with .env.example as its .env."""
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), example_env))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    raw = yaml.safe_load(COMPOSE.read_text())  # as written, before interpolation, too
    for document in (raw, compose):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The schema really constrains: a misspelt key is refused.
    broken = {**compose, "services": {**compose["services"], "postgres": {"image": "x", "helthcheck": {}}}}
    assert not validator.is_valid(broken)


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
    for name in airflow | {"mlflow"}:
        depends = services[name]["depends_on"]
        assert depends[INIT]["condition"] == "service_completed_successfully", name
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


def test_env_example_documents_every_variable(example_env: dict[str, str]) -> None:
    used = referenced(COMPOSE.read_text())
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
    for name, value in example_env.items():
        if re.search("SECRET|PASSWORD", name):
            assert re.search("placeholder|change-me", value), f"{name} holds something other than a placeholder"
    with pytest.raises(KeyError, match="AWS_SECRET_ACCESS_KEY"):  # no default credentials in the compose file
        interpolate(COMPOSE.read_text(), {k: v for k, v in example_env.items() if k != "AWS_SECRET_ACCESS_KEY"})


def test_airflow_image_is_the_one_the_dagger_module_builds(
    services: dict[str, dict[str, Any]], example_env: dict[str, str]
) -> None:
    module_source = str(REPO / "ci" / "src")  # the Dagger module's source directory, as tests/ci uses it
    if module_source not in sys.path:
        sys.path.insert(0, module_source)
    from flight_price.main import AIRFLOW_IMAGE_NAME

    raw = yaml.safe_load(COMPOSE.read_text())
    default = re.fullmatch(r"\$\{AIRFLOW_IMAGE:-(?P<image>[^}]+)\}", raw["x-airflow-common"]["image"])
    assert default is not None and default["image"] == f"{AIRFLOW_IMAGE_NAME}:latest"
    assert example_env["AIRFLOW_IMAGE"] == default["image"]
    assert services["mlflow"]["image"] == services["airflow-scheduler"]["image"] == default["image"]
