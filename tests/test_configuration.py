"""The environment contract has one source, ``Settings``: the configuration reference and the env example are
generated from it, and the files that set its variables (the Kubernetes manifests, the compose stack) use its
names and either its defaults or a value listed below with the reason it differs.

Unit tests (they read repository files only), so they run in the Dagger module's checks too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from pydantic import Field, TypeAdapter, create_model
from pydantic.fields import FieldInfo

from app.contract.connection import variable_names
from app.settings import Settings, env_names
from app.settings_reference import (
    COMMAND,
    ENV_EXAMPLE,
    REFERENCE,
    SECTIONS,
    SettingsReferenceError,
    default_text,
    env_example,
    generated,
    main,
    ordered,
    stale,
    table,
)

ROOT: Final = Path(__file__).resolve().parents[1]
KUBERNETES: Final = "deploy/kubernetes"
COMPOSE: Final = "orchestration/docker-compose.yaml"
# Variables the manifests set that no settings field reads, and who reads them.
NOT_SETTINGS: Final = {
    (KUBERNETES, "AWS_SHARED_CREDENTIALS_FILE"): "the S3 client (botocore) reads the keys from this mounted file, so "
    "no environment holds them (docs/architecture.md, Threat model)",
}
# The rule for a settings variable these files set: a value equal to the default restates it (kept so an operator
# sees the knob; if the default changes, this test fails until the file is changed too or listed here). A value
# from a Secret or the operator's .env (``${VAR:?...}``) is not in the file and is checked by name only. Any other
# value differs on purpose and is listed here, by file and name, with the reason.
DIFFERENT_ON_PURPOSE: Final = {
    (KUBERNETES, "MLFLOW_TRACKING_URI"): "the registry's Service in the cluster; unset by default (no registry)",
    (KUBERNETES, "DVC_REMOTE_URL"): "the installation's bucket; unset by default (no remote)",
    (COMPOSE, "MLFLOW_TRACKING_URI"): "the stack's own MLflow server",
    (COMPOSE, "MLFLOW_TRACKING_USERNAME"): "the stack's MLflow accounts: Airflow's (created by mlflow-users), and "
    "the admin that job logs in as",
    (COMPOSE, "DVC_REMOTE_URL"): "the stack's MinIO bucket",
    (COMPOSE, "DVC_REMOTE_ENDPOINT_URL"): "the stack's MinIO instead of AWS S3",
    (COMPOSE, "DVC_REMOTE_REGION"): "a region for the S3 client to sign with; MinIO accepts us-east-1",
    (COMPOSE, "AWS_ACCESS_KEY_ID"): "the scoped MinIO key's id (created by minio-buckets)",
}
# A compose value taken from the operator's .env: ``${VAR:-default}`` (the default is the file's value) or
# ``${VAR:?message}`` / ``${VAR}`` (no value in the file).
COMPOSE_DEFAULT: Final = re.compile(r"^\$\{\w+:?-(?P<value>[^}]*)\}$")
COMPOSE_REQUIRED: Final = re.compile(r"^\$\{\w+(:?\?[^}]*)?\}$")
FIELDS: Final = {name.upper(): field for name, field in Settings.model_fields.items()}

# --- The generated files ----------------------------------------------------------------------------------------


def test_the_generated_files_are_current() -> None:
    """What CI runs: docs/configuration.md's settings table and the env example are what ``Settings`` generates."""
    outdated = stale()
    assert outdated == [], f"{[str(path) for path in outdated]} are stale: run `{COMMAND}` and commit the result"


def test_the_check_command_fails_on_a_stale_file(tmp_path: Path) -> None:
    for path in (REFERENCE, ENV_EXAMPLE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text())
    assert main(["--check"], tmp_path) == 0
    edited = (tmp_path / ENV_EXAMPLE).read_text().replace("# PORT=9000", "# PORT=9001")
    (tmp_path / ENV_EXAMPLE).write_text(edited)
    assert main(["--check"], tmp_path) == 1
    assert main(["--write"], tmp_path) == 0 and main(["--check"], tmp_path) == 0
    assert (tmp_path / ENV_EXAMPLE).read_text() == (ROOT / ENV_EXAMPLE).read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"port": (int, Field(9001, ge=1, le=65535, description=FIELDS["PORT"].description))},
        {"port": (int, Field(9000, ge=1, le=65535, description="Another description."))},
        {"log_format": (str, Field("json", description=FIELDS["LOG_FORMAT"].description))},  # no longer a choice
    ],
    ids=["default", "description", "allowed-values"],
)
def test_a_changed_setting_makes_both_files_stale(change: dict[str, Any]) -> None:
    changed = create_model("Changed", __base__=Settings, **change)
    assert stale(model=changed) == [REFERENCE, ENV_EXAMPLE]


def test_a_new_setting_must_be_placed_and_described() -> None:
    placed = create_model("Placed", __base__=Settings, extra_knob=(int, Field(1)))
    with pytest.raises(SettingsReferenceError, match="EXTRA_KNOB is in no section"):
        ordered(placed)
    with pytest.raises(SettingsReferenceError, match="EXTRA_KNOB is in no section"):
        stale(model=placed)
    undescribed = create_model("Undescribed", __base__=Settings, port=(int, Field(9000)))
    with pytest.raises(SettingsReferenceError, match="PORT has no description"):
        ordered(undescribed)


def test_the_sections_list_every_setting_once() -> None:
    listed = [name for section in SECTIONS for name in section.names]
    assert sorted(listed) == sorted(env_names())


def test_every_default_shown_means_the_default() -> None:
    """A default as the files show it, set as the variable, gives the default back (an env value, not a repr)."""
    for name, field in FIELDS.items():
        shown = default_text(field)
        if field.default is None:
            assert shown is None, name
        else:
            assert shown is not None and value_of(field, shown) == field.default, name


def test_the_reference_table_is_in_the_docs_once_with_the_rest_hand_written() -> None:
    reference = (ROOT / REFERENCE).read_text()
    assert reference.count(table()) == 1
    assert COMMAND in reference.split("\n## ", 1)[0].split("\n| ", 1)[0]  # said above the table
    assert generated()[REFERENCE] == reference


def test_env_example_documents_exactly_the_settings() -> None:
    example = (ROOT / ENV_EXAMPLE).read_text()
    documented = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE)
    assert sorted(documented) == sorted(env_names())
    assert example == env_example()
    for line in example.splitlines():
        if line and not line.startswith("#"):  # a set variable: a valid value
            name, _, value = line.partition("=")
            assert value and value_of(FIELDS[name], value) is not None, line


def test_configuration_reference_lists_exactly_the_settings() -> None:
    reference = (ROOT / REFERENCE).read_text()
    section = reference.split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(env_names())


# --- Files that set the variables -------------------------------------------------------------------------------


def value_of(field: FieldInfo, text: str) -> object:
    """``text`` as the settings read it from the environment (type and coercion only; range checks aside)."""
    assert field.annotation is not None
    return TypeAdapter(field.annotation).validate_python(text)


def equals_default(name: str, text: str) -> bool:
    field = FIELDS[name]
    if text == "":
        return True  # an empty variable counts as unset
    return field.default is not None and value_of(field, text) == field.default


def kubernetes_environment() -> dict[str, list[str | None]]:
    """Every variable the ConfigMap and the Deployment's container set, with its values (None: from a Secret)."""
    found: dict[str, list[str | None]] = {}
    for path in sorted((ROOT / KUBERNETES).glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            if document["kind"] == "ConfigMap":
                for name, value in document.get("data", {}).items():
                    found.setdefault(name, []).append(str(value))
            if document["kind"] == "Deployment":
                for container in document["spec"]["template"]["spec"]["containers"]:
                    for variable in container.get("env", []):
                        value = variable.get("value")
                        found.setdefault(variable["name"], []).append(None if value is None else str(value))
    return found


def compose_environment(text: str | None = None) -> dict[str, list[str | None]]:
    """Every settings variable a compose service sets, with the file's values (None: from the operator's .env)."""
    services = yaml.safe_load(text if text is not None else (ROOT / COMPOSE).read_text())["services"]
    found: dict[str, list[str | None]] = {}
    for service in services.values():
        env = service.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for name, raw in env.items():
            if name in FIELDS:
                text = str(raw)
                default = COMPOSE_DEFAULT.match(text)
                value = default["value"] if default else None if COMPOSE_REQUIRED.match(text) else text
                found.setdefault(name, []).append(value)
    return found


def problems(where: str, environment: dict[str, list[str | None]]) -> list[str]:
    """Names that are no setting (and not listed), and values differing from the default (and not listed)."""
    found = []
    for name, values in sorted(environment.items()):
        if name not in FIELDS:
            if (where, name) not in NOT_SETTINGS:
                found.append(f"{where}: {name} is no setting of app/settings.py")
            continue
        differing = sorted({value for value in values if value is not None and not equals_default(name, value)})
        listed = (where, name) in DIFFERENT_ON_PURPOSE
        if differing and not listed:
            shown = default_text(FIELDS[name]) or "unset"
            found.append(f"{where}: {name}={differing} differs from the default ({shown}) and is not listed")
        if listed and not differing:
            found.append(f"{where}: {name} is listed as different on purpose but is the default or not set")
    return found


def test_the_kubernetes_manifests_use_the_settings_names_and_defaults() -> None:
    environment = kubernetes_environment()
    assert {"PORT", "MODEL_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"} <= set(environment)
    assert problems(KUBERNETES, environment) == []


def test_the_compose_stack_uses_the_settings_names_and_defaults() -> None:
    environment = compose_environment()
    assert {"MODEL_NAME", "DVC_REMOTE_URL", "MLFLOW_TRACKING_PASSWORD"} <= set(environment)
    # compose runs no prediction server: what it sets is read by training, which reads the connection settings only
    assert set(environment) <= variable_names()
    assert problems(COMPOSE, environment) == []


def test_every_listed_exception_is_used() -> None:
    used = {(KUBERNETES, name) for name in kubernetes_environment()} | {
        (COMPOSE, name) for name in compose_environment()
    }
    assert set(DIFFERENT_ON_PURPOSE) | set(NOT_SETTINGS) <= used
    assert not {name for _, name in NOT_SETTINGS} & set(FIELDS)


@pytest.mark.parametrize(
    ("where", "environment", "expected"),
    [
        (KUBERNETES, {"PORT": ["9001"]}, "PORT=['9001'] differs from the default (9000)"),
        (KUBERNETES, {"MODEL_REFRESH_S": ["30"], "PORT": ["9000"], "MODEL_DIR": ["/models"]}, None),
        (KUBERNETES, {"MLFLOW_TRACKING_URI": [None]}, "listed as different on purpose"),
        (KUBERNETES, {"MODEL_ALAIS": ["champion"]}, "MODEL_ALAIS is no setting"),
        (COMPOSE, {"LOG_LEVEL": ["debug"]}, "LOG_LEVEL=['debug'] differs from the default (info)"),
        (COMPOSE, {"MLFLOW_TRACKING_PASSWORD": [None]}, None),  # from the operator's .env: checked by name only
    ],
    ids=["changed-default", "restated-defaults", "stale-exception", "unknown-name", "unlisted-value", "secret"],
)
def test_the_rule_catches_what_it_is_for(
    where: str, environment: dict[str, list[str | None]], expected: str | None
) -> None:
    found = problems(where, environment)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_compose_values_are_read_as_compose_substitutes_them() -> None:
    text = """
services:
  a:
    environment:
      MODEL_NAME: ${MODEL_NAME:-other}
      MODEL_ALIAS: ${X:?set X}
      LOG_LEVEL: debug
      AIRFLOW__CORE__EXECUTOR: LocalExecutor
  b:
    environment: ["MODEL_NAME=flight-price", "REGISTRY_TIMEOUT_S=${T}"]
"""
    assert compose_environment(text) == {
        "MODEL_NAME": ["other", "flight-price"],
        "MODEL_ALIAS": [None],
        "LOG_LEVEL": ["debug"],
        "REGISTRY_TIMEOUT_S": [None],
    }
