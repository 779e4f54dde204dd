"""Plan tests: call the Dagger module's functions without an engine and read the pipelines they build."""

from __future__ import annotations

import asyncio
import tomllib
import typing
from pathlib import Path
from typing import Any

import dagger
import pytest
import yaml
from dagger import DefaultPath, Ignore, dag
from flight_price import main as module
from flight_price.main import FlightPrice

from app.contract import walk_build
from app.contract.connection import DEFAULT_ALIAS, DEFAULT_MODEL_NAME, DEFAULT_SERVING_PORT
from app.settings import env_names
from bench import peers as bench_peers
from tests.harness.context import uploaded
from tests.harness.plan import bound, calls, container_of, env, execs, names, one, recording_engine, steps

REPO = Path(__file__).resolve().parents[2]
SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture
def flight_price() -> FlightPrice:
    # mypy does not apply the SDK's dataclass_transform (declared on overloads of a bound method), so it
    # sees no constructor arguments; the module runtime builds the object exactly like this.
    constructor: Any = FlightPrice
    module_object: FlightPrice = constructor(source=dag.host().directory(str(REPO)))
    return module_object


def lock_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(str(p["version"]) for p in lock["package"] if p["name"] == package)


def test_pins_match_the_lock_and_dagger_json() -> None:
    assert lock_version("apache-airflow") == module.AIRFLOW_VERSION
    assert module.UV_IMAGE.endswith(":" + lock_version("uv"))
    config = (REPO / "dagger.json").read_text()
    assert f'"engineVersion": "v{lock_version("dagger-io")}"' in config
    assert '"source": "ci"' in config


def test_source_is_an_allowlist_from_the_repository_root() -> None:
    metadata = typing.get_type_hints(FlightPrice, include_extras=True)["source"].__metadata__
    assert DefaultPath("/") in metadata
    ignore = next(m for m in metadata if isinstance(m, Ignore))
    assert ignore.patterns[0] == "*"
    included = {p.removeprefix("!").rstrip("/") for p in ignore.patterns if p.startswith("!")}
    assert included == {
        *("app", "orchestration", "tests", "bench", "ci/src", "deploy", "docs"),
        *("pyproject.toml", "uv.lock", "ci/uv.lock", "ci/README.md", "README.md", "dagger.json", ".github/workflows"),
    }
    assert {"**/.env", "app/prediction.env", "bench/.venvs/"} <= set(ignore.patterns)


def test_a_locally_built_walk_never_enters_the_source(tmp_path: Path) -> None:
    """A developer's own walk-*.so (gitignored) is not uploaded: the image's libraries come from its builder."""
    contract = tmp_path / "app" / "contract"
    contract.mkdir(parents=True)
    for name in ("walk.c", "walk_build.py", "walk_kernel.py", *module.WALK_LIBRARIES):
        (contract / name).write_text("x")
    kept = uploaded(tmp_path, module.SOURCE_IGNORE)
    assert {f"app/contract/{name}" for name in ("walk.c", "walk_build.py", "walk_kernel.py")} <= set(kept)
    assert not [path for path in kept if path.endswith(".so")]


@pytest.mark.parametrize("platform", [str(p) for p in module.PLATFORMS])
def test_a_platform_s_image_holds_only_its_own_compiled_walk(flight_price: FlightPrice, platform: str) -> None:
    """Every binary of a published image is built for its platform (tests/containers/test_publish.py)."""
    image = flight_price.build(platform=dagger.Platform(platform))
    files = [args["path"] for args in calls(image, "withFile")]
    machine = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}[platform]
    assert files == [f"{module.WALK_CONTRACT_DIR}/{walk_build.library_name(machine)}"]
    with pytest.raises(ValueError, match="built for linux/amd64, linux/arm64 only"):
        module.walk_libraries_for(dagger.Platform("linux/riscv64"))


def test_final_stage_holds_only_the_venv_app_and_the_compiled_walk(flight_price: FlightPrice) -> None:
    image = flight_price.build(revision="abc123", version="1.2.3")
    assert names(image)[:2] == ["container", "from"]
    assert one(image, "from")["address"] == module.PYTHON_IMAGE
    copied = {args["path"]: args["source"] for args in calls(image, "withDirectory")}
    assert set(copied) == {module.VENV, f"{module.APP_ROOT}/app", module.MODEL_DIR}
    # app/ is the source's app directory, nothing wider; the venv is the builder's /opt/venv
    assert steps(copied[f"{module.APP_ROOT}/app"])[-1].args == {"path": "app"}
    assert steps(copied[module.VENV])[-1].args == {"path": module.VENV}
    # the only files: the walk builder's libraries, beside walk.c (where walk_kernel looks), after app/
    files = {args["path"]: args["source"] for args in calls(image, "withFile")}
    assert set(files) == {f"{module.APP_ROOT}/app/contract/{name}" for name in module.WALK_LIBRARIES}
    assert f"{module.APP_ROOT}/app/{walk_build.SOURCE.parent.name}" == module.WALK_CONTRACT_DIR
    assert walk_build.SOURCE.parent.parent.name == "app"
    at = {(s.name, s.args.get("path")): position for position, s in enumerate(steps(image))}
    assert min(at[("withFile", path)] for path in files) > at[("withDirectory", f"{module.APP_ROOT}/app")]
    for path, source in files.items():
        assert steps(source)[-1].name == "file" and steps(source)[-1].args == {"path": path.rsplit("/", 1)[1]}
        assert steps(source)[-2].args == {"path": module.WALK_OUTPUT_DIR}
        assert execs(container_of(steps(source)[:-1]))[-1] == module.walk_build_command(module.WALK_OUTPUT_DIR)
    # the model directory is empty and writable by the (non-root) user the image runs as
    assert names(copied[module.MODEL_DIR]) == ["directory"]
    user = one(image, "withUser")["name"]
    assert user.split(":")[0] == module.APP_UID and int(module.APP_UID) > 0
    assert one(image, "withDirectory", path=module.MODEL_DIR)["owner"] == user
    assert env(image)["MODEL_DIR"] == module.MODEL_DIR and "MODEL_DIR" in env_names()
    # nothing else enters: no mounts or caches; the only command creates the user
    assert not {"withMountedCache", "withMountedDirectory", "withMountedFile"} & set(names(image))
    assert execs(image) == [list(command) for command in module.CREATE_APP_USER]
    group, user_add = module.CREATE_APP_USER
    assert group[group.index("--gid") + 1] == user_add[user_add.index("--gid") + 1] == module.APP_UID
    assert not any("uv" in arg for command in execs(image) for arg in command)


def test_final_stage_runs_the_entrypoint_on_9000_with_a_readiness_check(flight_price: FlightPrice) -> None:
    image = flight_price.build(revision="abc123", version="1.2.3")
    assert one(image, "withExposedPort")["port"] == module.PORT == DEFAULT_SERVING_PORT
    assert one(image, "withEntrypoint")["args"] == ["python", "-m", "app.entrypoint"]
    assert one(image, "withWorkdir")["path"] == module.APP_ROOT  # where `-m app.entrypoint` finds app/
    probe = one(image, "withDockerHealthcheck")
    assert probe["args"][:2] == ["python", "-c"] and "/health/ready" in probe["args"][2]
    labels = {args["name"]: args["value"] for args in calls(image, "withLabel")}
    assert labels["org.opencontainers.image.revision"] == "abc123"
    assert labels["org.opencontainers.image.version"] == "1.2.3"
    assert labels["org.opencontainers.image.source"] == module.SOURCE_URL  # overridable: --source-url


def test_builder_creates_the_venv_from_the_lock_with_the_serving_group_only(flight_price: FlightPrice) -> None:
    venv = flight_price.runtime_venv()
    builder = container_of(steps(venv))  # the container whose /opt/venv is taken
    assert one(builder, "from")["address"] == module.PYTHON_IMAGE
    assert execs(builder) == [
        list(module.SERVE_VENV_SYNC),
        module.prune_test_suites(module.VENV),
        module.remove_uv_lock(module.VENV),
    ]
    sync = module.SERVE_VENV_SYNC
    assert {"--frozen", "--no-dev"} <= set(sync) and sync[sync.index("--only-group") + 1] == "serve"
    assert ("uv", *bench_peers.SERVE_VENV_SYNC) == sync  # bench.serve measures the server in this very venv
    assert env(builder)["UV_PROJECT_ENVIRONMENT"] == module.VENV
    assert one(builder, "withMountedCache")["path"] == env(builder)["UV_CACHE_DIR"]
    # only the lock inputs (and the uv binary) are copied in, so source edits keep the venv layer cached
    assert {args["path"] for args in calls(builder, "withFile")} == {"/usr/local/bin/uv", "pyproject.toml", "uv.lock"}


def test_walk_builder_builds_both_libraries_natively_with_the_build_group_only(flight_price: FlightPrice) -> None:
    libraries = flight_price.walk_libraries()
    assert steps(libraries)[-1].name == "directory" and steps(libraries)[-1].args == {"path": module.WALK_OUTPUT_DIR}
    builder = container_of(steps(libraries))
    # the engine's own platform (no emulation for arm64: zig cross-compiles), for the uv binary's image too
    assert one(builder, "container") == {}
    assert all(args == {} for args in calls(one(builder, "withFile", path="/usr/local/bin/uv")["source"], "container"))
    assert one(builder, "from")["address"] == module.PYTHON_IMAGE
    # the build group only, into a venv of its own (never the serving venv), then the project's walk_build with it
    assert execs(builder) == [list(module.WALK_BUILD_SYNC), module.walk_build_command(module.WALK_OUTPUT_DIR)]
    sync = module.WALK_BUILD_SYNC
    assert {"--frozen", "--no-dev", "--no-install-project"} <= set(sync)
    assert sync[sync.index("--only-group") + 1] == "build" and sync.count("--only-group") == 1
    venv = env(builder)["UV_PROJECT_ENVIRONMENT"]
    assert venv == module.WALK_BUILD_VENV and venv != module.VENV
    command = module.walk_build_command(module.WALK_OUTPUT_DIR)
    assert command[0] == f"{module.WALK_BUILD_VENV}/bin/python"
    assert command[1:3] == ["-m", walk_build.__name__] and command[3:] == ["--output-dir", module.WALK_OUTPUT_DIR]
    assert one(builder, "withMountedCache")["path"] == env(builder)["UV_CACHE_DIR"]
    # only the lock inputs and the files the build reads: an edit elsewhere in app/ keeps the stage cached
    copied = {args["path"]: args["source"] for args in calls(builder, "withFile")}
    assert set(copied) == {"/usr/local/bin/uv", "pyproject.toml", "uv.lock", *module.WALK_BUILD_INPUTS}
    for path in module.WALK_BUILD_INPUTS:
        assert steps(copied[path])[-1].args == {"path": path} and (REPO / path).is_file()
    assert one(builder, "withWorkdir")["path"] == "/build"  # where `-m app.contract.walk_build` finds app/
    assert walk_build.SOURCE.relative_to(REPO).as_posix() in module.WALK_BUILD_INPUTS
    assert f"{walk_build.__name__.replace('.', '/')}.py" in module.WALK_BUILD_INPUTS


def test_the_walk_libraries_are_those_walk_build_writes() -> None:
    """The Dagger module cannot import app/: its names for the libraries are checked against walk_build's."""
    assert tuple(walk_build.library_name(machine) for machine in walk_build.TARGETS) == module.WALK_LIBRARIES
    assert sorted(module.WALK_LIBRARY_OF.values()) == sorted(module.WALK_LIBRARIES)
    assert set(module.WALK_LIBRARY_OF) == {str(p) for p in module.PLATFORMS}
    # one library for each architecture the image is published for
    machines = {"amd64": "x86_64", "arm64": "aarch64"}
    assert sorted(machines[str(p).split("/")[1]] for p in module.PLATFORMS) == sorted(walk_build.TARGETS)


def test_smoke_stage_binds_the_image_to_both_mocks_with_settings_names(flight_price: FlightPrice) -> None:
    image = flight_price.build()
    checker = flight_price.smoke_check(image)
    assert execs(checker)[-1] == module.checker_command(f"http://app:{module.PORT}", module.SEED_DIR)

    service = bound(checker, "app")
    assert steps(service)[-1].name == "asService" and steps(service)[-1].args == {"useEntrypoint": True}
    serving = container_of(steps(service))
    own = steps(serving)[len(steps(image)) :]  # what the smoke stage adds to the built image
    assert [s.name for s in steps(serving)[: len(steps(image))]] == names(image)
    assert {s.args["alias"] for s in own if s.name == "withServiceBinding"} == {"s3", "mlflow"}
    plain = {s.args["name"] for s in own if s.name == "withEnvVariable"}
    secret = {s.args["name"] for s in own if s.name == "withSecretVariable"}
    assert plain | secret <= env_names()
    assert secret == SECRET_ENV and not plain & SECRET_ENV
    assert {"DVC_REMOTE_URL", "DVC_REMOTE_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MODEL_NAME"} <= plain
    values = {s.args["name"]: s.args["value"] for s in own if s.name == "withEnvVariable"}
    assert values == module.smoke_env(f"http://s3:{module.MOCK_PORT}", f"http://mlflow:{module.MOCK_PORT}")
    assert (values["MODEL_NAME"], values["MODEL_ALIAS"]) == (DEFAULT_MODEL_NAME, DEFAULT_ALIAS)  # the defaults

    s3, mlflow = bound(serving, "s3"), bound(serving, "mlflow")
    serve = f"0.0.0.0:{module.MOCK_PORT}"
    assert steps(s3)[-1].args["args"] == module.seed_command(module.SEED_DIR, serve=serve)
    assert steps(mlflow)[-1].args["args"] == module.mock_mlflow_command(module.SEED_DIR, "0.0.0.0", module.MOCK_PORT)
    # both mocks and the checker read the one seeded bundle, trained by tests/smoke/seed in the tools container
    for user in (container_of(steps(s3)), container_of(steps(mlflow)), checker):
        seeded = one(user, "withDirectory", path=module.SEED_DIR)["source"]
        assert execs(container_of(steps(seeded)))[-1] == module.seed_command(module.SEED_DIR)


def test_smoke_and_test_run_the_checks_then_the_checker(
    flight_price: FlightPrice, monkeypatch: pytest.MonkeyPatch
) -> None:
    with recording_engine(monkeypatch) as engine:
        asyncio.run(flight_price.run_tests())
    first, second = engine.sent("stdout")
    assert execs(container_of(first))[-4:] == [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
        list(module.UNIT_TESTS),
    ]
    assert execs(container_of(second))[-1][:3] == ["python", "-m", "tests.smoke.checker"]
    # the checks run in a container built from the same lock, with every group
    assert ["uv", "sync", "--frozen", "--no-install-project"] in execs(container_of(first))


def test_publish_authenticates_with_the_secret_and_pushes_both_images_for_both_platforms(
    flight_price: FlightPrice, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = dag.set_secret("registry-token", "not-a-real-token")
    with recording_engine(monkeypatch) as engine:
        references = asyncio.run(
            flight_price.publish(username="robot", password=password, repository="ghcr.io/acme/flight", tag="v1.0.0")
        )
    assert len(engine.sent("stdout")) == 2  # `test` ran first: the checks and the smoke checker
    assert engine.queries.index(engine.sent("stdout")[-1]) < engine.queries.index(engine.sent("publish")[0])
    published = {}
    for query in engine.sent("publish"):
        publisher = container_of(query)
        auth = one(publisher, "withRegistryAuth")
        assert auth["address"] == "ghcr.io" and auth["username"] == "robot" and auth["secret"] is password
        variants = query[-1].args["platformVariants"]
        published[query[-1].args["address"]] = variants
        assert sorted(one(v, "container")["platform"] for v in variants) == ["linux/amd64", "linux/arm64"]
    serving, airflow = (
        published["ghcr.io/acme/flight/prediction-server:v1.0.0"],
        published["ghcr.io/acme/flight/flight-price-airflow:v1.0.0"],
    )
    assert {one(v, "from")["address"] for v in serving} == {module.PYTHON_IMAGE}
    assert {one(v, "from")["address"] for v in airflow} == {module.AIRFLOW_IMAGE}
    assert references.splitlines() == [f"{address}@{engine.DIGEST}" for address in published]
    meta = getattr(FlightPrice.publish, "__dagger_function__")  # noqa: B009 (the SDK's attribute name)
    assert meta.cache == "never"


def test_publish_after_a_passed_test_job_runs_no_check_again(
    flight_price: FlightPrice, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = dag.set_secret("registry-token", "not-a-real-token")
    with recording_engine(monkeypatch) as engine:
        asyncio.run(flight_price.publish(username="robot", password=password, repository="acme/flight", tested=True))
    assert engine.sent("stdout") == []  # neither the checks nor the smoke checker ran
    assert len(engine.sent("publish")) == 2
    for query in engine.sent("publish"):
        assert one(container_of(query), "withRegistryAuth")["address"] == "docker.io"  # user/name is Docker Hub's
        assert query[-1].args["address"].startswith("acme/flight/")


@pytest.mark.parametrize(
    ("repository", "registry"),
    [
        ("ghcr.io/acme/flight-price", "ghcr.io"),
        ("acme/flight-price", "docker.io"),
        ("flight-price", "docker.io"),
        ("localhost/flight-price", "localhost"),
        ("127.0.0.1:5000/acme/flight-price", "127.0.0.1:5000"),
        ("registry.example.com:443/flight-price", "registry.example.com:443"),
    ],
)
def test_the_registry_is_read_from_the_repository_as_docker_reads_it(repository: str, registry: str) -> None:
    assert module.registry_of(repository) == registry


def test_airflow_image_extends_the_official_image_with_the_training_group(flight_price: FlightPrice) -> None:
    image = flight_price.airflow()
    assert one(image, "from")["address"] == f"apache/airflow:{module.AIRFLOW_VERSION}-python{module.PYTHON_VERSION}"
    requirements = one(image, "withFile", path=module.AIRFLOW_REQUIREMENTS)["source"]
    exporter = container_of(steps(requirements))
    assert execs(exporter)[-1][: len(module.TRAIN_REQUIREMENTS_EXPORT)] == list(module.TRAIN_REQUIREMENTS_EXPORT)
    assert execs(image) == [list(module.AIRFLOW_EXTEND)]
    assert f"apache-airflow=={module.AIRFLOW_VERSION}" in module.AIRFLOW_EXTEND
    assert "withUser" not in names(image)  # pip runs as the image's airflow user, as Airflow requires
    copied = {args["path"]: steps(args["source"])[-1].args["path"] for args in calls(image, "withDirectory")}
    assert copied == {"/opt/airflow/project/app": "app", "/opt/airflow/project/orchestration": "orchestration"}
    dags = env(image)["AIRFLOW__CORE__DAGS_FOLDER"]
    assert dags == "/opt/airflow/project/orchestration/dags" and (REPO / "orchestration" / "dags").is_dir()
    assert env(image)["PYTHONPATH"] == "/opt/airflow/project"


def test_serve_is_the_image_with_its_mocks(flight_price: FlightPrice) -> None:
    service = flight_price.serve()
    assert isinstance(service, dagger.Service)
    serving = container_of(steps(service))
    assert one(serving, "withExposedPort")["port"] == module.PORT
    assert {args["alias"] for args in calls(serving, "withServiceBinding")} == {"s3", "mlflow"}


def test_the_workflow_publishes_only_what_its_check_job_passed() -> None:
    """`publish --tested` skips the checks: safe only because the job needs the check job, on the same commit."""
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    test_job, publish_job = workflow["jobs"]["test"], workflow["jobs"]["publish"]
    [check_step] = [step for step in test_job["steps"] if "dagger-for-github" in step.get("uses", "")]
    assert check_step["with"]["verb"] == "check"
    assert publish_job["needs"] == "test"
    [publish_step] = [step for step in publish_job["steps"] if "dagger-for-github" in step.get("uses", "")]
    assert "--tested=true" in publish_step["with"]["args"].split()
    checkouts = [
        s for job in (test_job, publish_job) for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")
    ]
    assert all("ref" not in s.get("with", {}) for s in checkouts)  # both check out the commit that triggered the run
