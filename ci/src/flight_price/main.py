"""The Dagger module: it wires containers, and every command a stage runs is a project command or script.

The wiring is read back by ``tests/ci/test_plan.py``, which inspects the lazily built pipelines without an engine,
and the pipelines themselves run in real containers in ``tests/containers/`` (on Docker, through a replay of
the same lazy pipelines), which import the constants below.
"""

from collections.abc import Callable
from typing import Annotated, Final

import dagger
from dagger import DefaultPath, Doc, Ignore, check, dag, field, function, object_type, up

PYTHON_VERSION: Final = "3.11"  # the Python every image is verified with (tests/containers); others by argument
PYTHON_IMAGE: Final = f"python:{PYTHON_VERSION}-slim"
UV_IMAGE: Final = "ghcr.io/astral-sh/uv:0.13.9"  # the uv the lock was written with
AIRFLOW_VERSION: Final = "3.3.2"  # the apache-airflow pin in uv.lock
AIRFLOW_IMAGE: Final = f"apache/airflow:{AIRFLOW_VERSION}-python{PYTHON_VERSION}"
SERVING_IMAGE_NAME: Final = "prediction-server"
AIRFLOW_IMAGE_NAME: Final = "flight-price-airflow"
PLATFORMS: Final = (dagger.Platform("linux/amd64"), dagger.Platform("linux/arm64"))
SOURCE_URL: Final = "https://github.com/flight-price/flight-price-mlops"  # CI passes the real one

# The serving image's layout.
VENV: Final = "/opt/venv"
APP_ROOT: Final = "/srv"  # app/ lives at /srv/app, the working directory
MODEL_DIR: Final = "/models"
PORT: Final = 9000
APP_USER: Final = "app"
APP_UID: Final = "10001"  # numeric, so a cluster can verify runAsNonRoot
# The user's group gets the same id: `useradd --system --user-group` would take the next free system gid (999).
CREATE_APP_USER: Final = (
    ("groupadd", "--system", "--gid", APP_UID, APP_USER),
    ("useradd", "--system", "--uid", APP_UID, "--gid", APP_UID, "--create-home", APP_USER),
)
ENTRYPOINT: Final = ("python", "-m", "app.entrypoint")
READY_PROBE: Final = (
    "python",
    "-c",
    "import os, urllib.request; "
    f"urllib.request.urlopen(f\"http://127.0.0.1:{{os.environ.get('PORT', '{PORT}')}}/health/ready\", timeout=3)",
)
RUNTIME_ENV: Final[dict[str, str]] = {
    "VIRTUAL_ENV": VENV,
    "MODEL_DIR": MODEL_DIR,
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",  # the venv is compiled at build time and read-only at run time
}

# The builder: uv creates the runtime venv from uv.lock with the serving group only.
UV_CACHE_DIR: Final = "/root/.cache/uv"
UV_CACHE_VOLUME: Final = "uv-cache"  # the engine's cache volume uv's cache lives on, shared by every uv step
UV_ENV: Final[dict[str, str]] = {
    "UV_PROJECT_ENVIRONMENT": VENV,
    "UV_LINK_MODE": "copy",  # the cache is a separate mount
    "UV_PYTHON_DOWNLOADS": "never",  # the base image's interpreter, which the final stage has too
    "UV_PYTHON_PREFERENCE": "only-system",
}
# Start-up imports numpy, FastAPI, pydantic and the pull's libraries: compile them once at build time, not on every
# start.
BUILDER_ENV: Final[dict[str, str]] = {**UV_ENV, "UV_COMPILE_BYTECODE": "1"}
# Airflow's way of extending its image: pip as the airflow user, pinning the image's own Airflow version.
AIRFLOW_REQUIREMENTS: Final = "/opt/airflow/requirements.txt"
AIRFLOW_EXTEND: Final = (
    "pip", "install", "--no-cache-dir", f"apache-airflow=={AIRFLOW_VERSION}", "--requirement", AIRFLOW_REQUIREMENTS,
)  # fmt: skip
SERVE_VENV_SYNC: Final = ("uv", "sync", "--frozen", "--no-dev", "--only-group", "serve", "--no-install-project")
# The walk builder: the serving form's compiled walk (app/contract/walk.c) built by `python -m
# app.contract.walk_build` with zig's C compiler from the `build` group, in a venv of its own that never enters an
# image. One run on the engine's own platform cross-compiles the library of every architecture the image is made
# for; only the files the build reads are copied in, so an edit elsewhere in app/ keeps the stage cached.
WALK_BUILD_VENV: Final = "/opt/build-venv"
WALK_BUILD_ENV: Final[dict[str, str]] = {**UV_ENV, "UV_PROJECT_ENVIRONMENT": WALK_BUILD_VENV}
WALK_BUILD_SYNC: Final = ("uv", "sync", "--frozen", "--no-dev", "--only-group", "build", "--no-install-project")
WALK_BUILD_INPUTS: Final = (
    "app/__init__.py", "app/contract/__init__.py", "app/contract/walk.c", "app/contract/walk_build.py",
)  # fmt: skip
WALK_OUTPUT_DIR: Final = "/walk"
# The library each published platform's image holds (every binary of an image is built for its platform):
# app.contract.walk_build's library_name() of each of its TARGETS (the module's environment cannot import app/;
# tests/ci/test_plan.py checks the two agree).
WALK_LIBRARY_OF: Final[dict[str, str]] = {"linux/amd64": "walk-x86_64.so", "linux/arm64": "walk-aarch64.so"}
WALK_LIBRARIES: Final = tuple(WALK_LIBRARY_OF.values())
WALK_CONTRACT_DIR: Final = f"{APP_ROOT}/app/contract"  # where walk_kernel looks for them: beside walk.c
TRAIN_REQUIREMENTS_EXPORT: Final = (
    "uv", "export", "--frozen", "--only-group", "train", "--no-emit-project", "--no-hashes", "--no-header",
)  # fmt: skip


def walk_libraries_for(platform: dagger.Platform | None) -> tuple[str, ...]:
    """The compiled-walk libraries an image for ``platform`` holds: its own; with no platform (the engine's own,
    which the module cannot name before it runs) every one, of which the server loads its machine's."""
    if platform is None:
        return WALK_LIBRARIES
    if str(platform) not in WALK_LIBRARY_OF:
        raise ValueError(f"platform {platform}: the compiled walk is built for {', '.join(WALK_LIBRARY_OF)} only")
    return (WALK_LIBRARY_OF[str(platform)],)


def walk_build_command(output_dir: str) -> list[str]:
    """The project's build of the compiled walk, with the build venv's Python, writing every library to
    ``output_dir``."""
    return [f"{WALK_BUILD_VENV}/bin/python", "-m", "app.contract.walk_build", "--output-dir", output_dir]


def remove_uv_lock(venv: str) -> list[str]:
    """The command deleting uv's lock file from the venv: uv creates it writable by every user."""
    return ["rm", "-f", f"{venv}/.lock"]


def prune_test_suites(venv: str) -> list[str]:
    """The command deleting the installed packages' own test suites (~100 MB with their bytecode)."""
    site_packages = f"{venv}/lib"
    return [
        "find", site_packages, "-type", "d", "(", "-name", "tests", "-o", "-name", "test", ")",
        "-path", "*/site-packages/*", "-prune", "-exec", "rm", "-rf", "{}", "+",
    ]  # fmt: skip


# The smoke stage: a moto S3 store seeded with a freshly trained bundle, an MLflow mock, the image bound to both.
SEED_DIR: Final = "/seed"  # the seed step's output: bundle/, remote/ (a local DVC remote) and dvc-hash
SMOKE_BUCKET: Final = "smoke-models"
SMOKE_REGION: Final = "us-east-1"
# The registry names the serving settings default to (app.contract.connection; the plan tests cross-check).
SMOKE_MODEL_NAME: Final = "flight-price"
SMOKE_MODEL_ALIAS: Final = "champion"
MOCK_PORT: Final = 5000
# Fake credentials for the moto store; passed as secrets all the same.
SMOKE_CREDENTIALS: Final[dict[str, str]] = {
    "AWS_ACCESS_KEY_ID": "smoke-access-key",
    "AWS_SECRET_ACCESS_KEY": "smoke-secret-key",
}


def smoke_env(s3_url: str, mlflow_url: str) -> dict[str, str]:
    """The environment the smoke stage gives the serving image (names from app/settings.py)."""
    return {
        "DVC_REMOTE_URL": f"s3://{SMOKE_BUCKET}/bundles",
        "DVC_REMOTE_ENDPOINT_URL": s3_url,
        "DVC_REMOTE_REGION": SMOKE_REGION,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MODEL_NAME": SMOKE_MODEL_NAME,
        "MODEL_ALIAS": SMOKE_MODEL_ALIAS,
    }


def seed_command(out: str, *, serve: str | None = None) -> list[str]:
    """Train a small bundle into ``out`` (once) and push it with DVC; with ``serve``, host the S3 store."""
    if serve is None:
        return ["python", "-m", "tests.smoke.seed", "--out", out, "--remote-url", f"{out}/remote"]
    return [
        "python", "-m", "tests.smoke.seed", "--out", out, "--remote-url", f"s3://{SMOKE_BUCKET}/bundles",
        "--region", SMOKE_REGION, "--serve", serve,
    ]  # fmt: skip


def mock_mlflow_command(seed_dir: str, host: str, port: int) -> list[str]:
    """The MLflow mock answering ``MODEL_NAME@champion`` with the seeded bundle's DVC hash."""
    return [
        "python", "-m", "tests.smoke.mock_mlflow", "--host", host, "--port", str(port),
        "--model-name", SMOKE_MODEL_NAME, "--bundle", f"{seed_dir}/bundle", "--dvc-hash-file", f"{seed_dir}/dvc-hash",
    ]  # fmt: skip


def checker_command(url: str, seed_dir: str) -> list[str]:
    """The smoke checker: readiness, predictions against the bundle's own, a 422, /model, /metrics, the docs' files."""
    return [
        "python", "-m", "tests.smoke.checker", "--url", url, "--bundle", f"{seed_dir}/bundle",
        "--dvc-hash-file", f"{seed_dir}/dvc-hash",
    ]  # fmt: skip


# Only what some stage needs enters the engine: caches stay warm and nothing stray reaches an image.
# Dagger 0.21 applies no .gitignore to it: what git ignores inside an included directory is excluded here.
SOURCE_IGNORE: Final = [
    "*",
    "!app/",
    "!orchestration/",
    "!tests/",
    "!bench/",
    "!ci/src/",
    "!ci/uv.lock",  # a unit test checks the module's lock
    "!ci/README.md",  # and that every Markdown link reaches its file and heading (tests/test_doc_links.py)
    "!deploy/",
    "!docs/",
    "!pyproject.toml",
    "!uv.lock",
    "!README.md",  # the unit tests check the README's tables and the pins in dagger.json
    "!.github/workflows/",  # and that the workflow publishes only what its check job passed
    "!dagger.json",
    "**/__pycache__",
    "**/*.pyc",
    "**/.env",
    "app/prediction.env",
    "bench/results/",
    "bench/.venvs/",  # the peers' venvs bench/serve.py creates: gigabytes
    "app/contract/walk-*.so",  # a developer's own build of the compiled walk: the image's comes from its builder
]
# The checks, each a list of commands run in the tools container (`dagger check` runs each as its own check).
LINT: Final = (("ruff", "check", "."), ("ruff", "format", "--check", "."))
TYPECHECK: Final = (("mypy",),)
# The unit tests: the integration ones start services, a container engine or Airflow, which the smoke stage covers.
UNIT_TESTS: Final = ("pytest", "-q", "-p", "no:cacheprovider", "-m", "not integration")
DOCKER_HUB: Final = "docker.io"


def registry_of(repository: str) -> str:
    """The registry host of an image repository, as Docker reads a reference: the first component when it has a
    dot or a port or is ``localhost`` (``ghcr.io/owner/x``, ``127.0.0.1:5000/x``), else Docker Hub (``user/x``)."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def uv_tool(image: str, platform: dagger.Platform | None = None) -> Callable[[dagger.Container], dagger.Container]:
    """A step adding uv from ``image`` (for ``platform``) with its cache on a cache volume."""

    def add_uv(container: dagger.Container) -> dagger.Container:
        return (
            container.with_file("/usr/local/bin/uv", dag.container(platform=platform).from_(image).file("/uv"))
            .with_mounted_cache(UV_CACHE_DIR, dag.cache_volume(UV_CACHE_VOLUME))
            .with_env_variable("UV_CACHE_DIR", UV_CACHE_DIR)
        )

    return add_uv


def run_each(commands: tuple[tuple[str, ...], ...]) -> Callable[[dagger.Container], dagger.Container]:
    """A step running each of ``commands`` in turn."""

    def apply(container: dagger.Container) -> dagger.Container:
        for command in commands:
            container = container.with_exec(list(command))
        return container

    return apply


def with_env(env: dict[str, str]) -> Callable[[dagger.Container], dagger.Container]:
    """A step setting every variable of ``env``."""

    def apply(container: dagger.Container) -> dagger.Container:
        for name, value in env.items():
            container = container.with_env_variable(name, value)
        return container

    return apply


def oci_labels(title: str, source: str, revision: str, version: str) -> Callable[[dagger.Container], dagger.Container]:
    """A step adding the OCI image labels."""

    def apply(container: dagger.Container) -> dagger.Container:
        return (
            container.with_label("org.opencontainers.image.title", title)
            .with_label("org.opencontainers.image.source", source)
            .with_label("org.opencontainers.image.revision", revision)
            .with_label("org.opencontainers.image.version", version)
        )

    return apply


@object_type
class FlightPrice:
    """The flight-price stack's images, smoke test, publishing and local serve."""

    source: Annotated[
        dagger.Directory,
        Doc("The repository (only the files some stage needs are loaded)"),
        DefaultPath("/"),
        Ignore(SOURCE_IGNORE),
    ] = field()
    python_image: Annotated[str, Doc("Python slim base of the serving image and the tools")] = field(
        default=PYTHON_IMAGE
    )
    airflow_image: Annotated[str, Doc("Official Apache Airflow image the orchestration image extends")] = field(
        default=AIRFLOW_IMAGE
    )
    uv_image: Annotated[str, Doc("Image holding the uv binary at /uv (the lock's uv version)")] = field(
        default=UV_IMAGE
    )
    source_url: Annotated[str, Doc("Repository URL for the images' OCI source label")] = field(default=SOURCE_URL)

    def _locked(self, container: dagger.Container) -> dagger.Container:
        """``container`` in /build with only the project's lock inputs, so dependency layers stay cached."""
        return (
            container.with_workdir("/build")
            .with_file("pyproject.toml", self.source.file("pyproject.toml"))
            .with_file("uv.lock", self.source.file("uv.lock"))
        )

    def runtime_venv(self, platform: dagger.Platform | None = None) -> dagger.Directory:
        """Builder stage: the serving venv from uv.lock (serving group only, compiled, test suites pruned)."""
        return (
            dag.container(platform=platform)
            .from_(self.python_image)
            .with_(uv_tool(self.uv_image, platform))
            .with_(with_env(BUILDER_ENV))
            .with_(self._locked)
            .with_exec(list(SERVE_VENV_SYNC))
            .with_exec(prune_test_suites(VENV))
            .with_exec(remove_uv_lock(VENV))
            .directory(VENV)
        )

    def walk_libraries(self) -> dagger.Directory:
        """Walk builder stage, on the engine's own platform: the compiled walk's libraries for every image
        architecture (zig cross-compiles), built from walk.c by the project's walk_build in a build-group venv."""
        builder = (
            dag.container()
            .from_(self.python_image)
            .with_(uv_tool(self.uv_image))
            .with_(with_env(WALK_BUILD_ENV))
            .with_(self._locked)
            .with_exec(list(WALK_BUILD_SYNC))
        )
        for path in WALK_BUILD_INPUTS:
            builder = builder.with_file(path, self.source.file(path))
        return builder.with_exec(walk_build_command(WALK_OUTPUT_DIR)).directory(WALK_OUTPUT_DIR)

    @function
    def build(
        self,
        platform: Annotated[dagger.Platform | None, Doc("Target platform (default: the engine's)")] = None,
        revision: Annotated[str, Doc("Source revision for the OCI label (e.g. the git SHA)")] = "unknown",
        version: Annotated[str, Doc("Version for the OCI label (e.g. the git tag)")] = "dev",
    ) -> dagger.Container:
        """The serving image: only the runtime venv, app/ and the compiled walk, non-root, port PORT, the
        entrypoint."""
        walk = self.walk_libraries()
        image = (
            dag.container(platform=platform)
            .from_(self.python_image)
            .with_exec(list(CREATE_APP_USER[0]))
            .with_exec(list(CREATE_APP_USER[1]))
            .with_directory(VENV, self.runtime_venv(platform))
            .with_directory(f"{APP_ROOT}/app", self.source.directory("app"))
        )
        for name in walk_libraries_for(platform):
            image = image.with_file(f"{WALK_CONTRACT_DIR}/{name}", walk.file(name))
        return (
            image.with_directory(MODEL_DIR, dag.directory(), owner=f"{APP_UID}:{APP_UID}")
            .with_env_variable("PATH", f"{VENV}/bin:${{PATH}}", expand=True)
            .with_(with_env(RUNTIME_ENV))
            .with_workdir(APP_ROOT)
            .with_user(f"{APP_UID}:{APP_UID}")
            .with_exposed_port(PORT)
            .with_entrypoint(list(ENTRYPOINT))
            .with_docker_healthcheck(
                list(READY_PROBE), interval="15s", timeout="5s", start_period="120s", start_interval="2s", retries=3
            )
            .with_(oci_labels(SERVING_IMAGE_NAME, self.source_url, revision, version))
        )

    @function
    def airflow(
        self,
        platform: Annotated[dagger.Platform | None, Doc("Target platform (default: the engine's)")] = None,
        revision: Annotated[str, Doc("Source revision for the OCI label")] = "unknown",
        version: Annotated[str, Doc("Version for the OCI label")] = "dev",
    ) -> dagger.Container:
        """The orchestration image: apache/airflow with our training dependencies, orchestration/ and the DAGs."""
        requirements = (
            dag.container()
            .from_(self.python_image)
            .with_(uv_tool(self.uv_image))
            .with_(self._locked)
            .with_exec([*TRAIN_REQUIREMENTS_EXPORT, "--output-file", "requirements.txt"])
            .file("requirements.txt")
        )
        project = "/opt/airflow/project"
        return (
            dag.container(platform=platform)
            .from_(self.airflow_image)
            .with_file(AIRFLOW_REQUIREMENTS, requirements)
            .with_exec(list(AIRFLOW_EXTEND))
            .with_directory(f"{project}/app", self.source.directory("app"))
            .with_directory(f"{project}/orchestration", self.source.directory("orchestration"))
            .with_env_variable("PYTHONPATH", project)
            .with_env_variable("AIRFLOW__CORE__DAGS_FOLDER", f"{project}/orchestration/dags")
            .with_(oci_labels(AIRFLOW_IMAGE_NAME, self.source_url, revision, version))
        )

    def tools(self) -> dagger.Container:
        """Python with the whole locked environment (every group) and the source: checks, seed, mocks."""
        return (
            dag.container()
            .from_(self.python_image)
            .with_(uv_tool(self.uv_image))
            .with_(with_env(UV_ENV))
            .with_(self._locked)
            .with_exec(["uv", "sync", "--frozen", "--no-install-project"])
            .with_env_variable("PATH", f"{VENV}/bin:${{PATH}}", expand=True)
            .with_directory("/src", self.source)
            .with_workdir("/src")
        )

    def seed(self) -> dagger.Directory:
        """A small bundle trained by tests/smoke/seed, with its DVC hash (the seed step's output)."""
        return self.tools().with_exec(seed_command(SEED_DIR)).directory(SEED_DIR)

    def with_mocks(self, image: dagger.Container, seeded: dagger.Directory) -> dagger.Container:
        """``image`` bound to a moto S3 store seeded with ``seeded`` (as ``s3``) and the MLflow mock (``mlflow``)."""
        with_seed = self.tools().with_directory(SEED_DIR, seeded).with_exposed_port(MOCK_PORT)
        s3 = with_seed.as_service(args=seed_command(SEED_DIR, serve=f"0.0.0.0:{MOCK_PORT}"))
        mlflow = with_seed.as_service(args=mock_mlflow_command(SEED_DIR, "0.0.0.0", MOCK_PORT))
        return image.with_service_binding("s3", s3).with_service_binding("mlflow", mlflow)

    def stack(self, image: dagger.Container, seeded: dagger.Directory) -> dagger.Service:
        """``image`` as a service bound to its mocks, with the smoke environment and the S3 keys as secrets."""
        serving = self.with_mocks(image, seeded)
        for name, value in smoke_env(f"http://s3:{MOCK_PORT}", f"http://mlflow:{MOCK_PORT}").items():
            serving = serving.with_env_variable(name, value)
        for name, value in SMOKE_CREDENTIALS.items():
            serving = serving.with_secret_variable(name, dag.set_secret(f"smoke-{name.lower()}", value))
        return serving.as_service(use_entrypoint=True)

    def smoke_check(self, image: dagger.Container) -> dagger.Container:
        """The checker run against ``image`` started with its mocks (lazy: the exec fails on any mismatch)."""
        seeded = self.seed()
        return (
            self.tools()
            .with_directory(SEED_DIR, seeded)
            .with_service_binding("app", self.stack(image, seeded))
            .with_exec(checker_command(f"http://app:{PORT}", SEED_DIR))
        )

    @function
    @check
    async def smoke(self) -> str:
        """Start the built image against a seeded mock S3 and a mock MLflow; check its predictions."""
        return await self.smoke_check(self.build()).stdout()

    def checks(self) -> dagger.Container:
        """ruff, mypy (strict) and the unit tests in the tools container, built from the same lock."""
        return self.tools().with_(run_each(LINT)).with_(run_each(TYPECHECK)).with_exec(list(UNIT_TESTS))

    @function
    @check
    async def lint(self) -> str:
        """ruff's lint rules and its formatter's check over the repository."""
        return await self.tools().with_(run_each(LINT)).stdout()

    @function
    @check
    async def typecheck(self) -> str:
        """mypy (strict) over app, orchestration, tests and bench."""
        return await self.tools().with_(run_each(TYPECHECK)).stdout()

    @function
    @check
    async def unit_tests(self) -> str:
        """The unit tests (pytest, integration tests left out: the smoke check covers the image)."""
        return await self.tools().with_exec(list(UNIT_TESTS)).stdout()

    async def run_tests(self) -> str:
        """The checks, then the smoke test; the last pytest line and the smoke report."""
        tests = await self.checks().stdout()
        smoke = await self.smoke_check(self.build()).stdout()
        summary = tests.strip().splitlines()[-1:] or ["(no pytest output)"]
        return f"pytest: {summary[0]}\n{smoke.strip()}"

    @function
    async def test(self) -> str:
        """ruff, mypy and the unit tests, then the smoke test; returns the test summary and the smoke report."""
        return await self.run_tests()

    # The SDK's typing overloads omit ``cache`` (the decorator itself takes it): never cache a publish.
    @function(cache="never")  # type: ignore[call-overload, untyped-decorator]
    async def publish(
        self,
        username: Annotated[str, Doc("Registry user (on GitHub: the actor)")],
        password: Annotated[dagger.Secret, Doc("Registry password or token")],
        repository: Annotated[str, Doc("Image namespace, e.g. ghcr.io/owner/flight-price (user/name: Docker Hub)")],
        tag: Annotated[str, Doc("Image tag")] = "latest",
        revision: Annotated[str, Doc("Source revision for the OCI label")] = "unknown",
        version: Annotated[str, Doc("Version for the OCI label")] = "dev",
        tested: Annotated[
            bool, Doc("`test` has passed on this same source (the workflow's publish job needs its test job)")
        ] = False,
    ) -> str:
        """Publish the serving and Airflow images for linux/amd64 and linux/arm64 (after `test`, unless tested)."""
        if not tested:
            await self.run_tests()
        registry = registry_of(repository)
        images = {
            SERVING_IMAGE_NAME: [self.build(platform, revision, version) for platform in PLATFORMS],
            AIRFLOW_IMAGE_NAME: [self.airflow(platform, revision, version) for platform in PLATFORMS],
        }
        references = []
        for name, variants in images.items():
            publisher = dag.container().with_registry_auth(registry, username, password)
            references.append(await publisher.publish(f"{repository}/{name}:{tag}", platform_variants=variants))
        return "\n".join(references)

    @function
    @up
    def serve(self) -> dagger.Service:
        """The serving image with its mocks, for `dagger call serve up --ports 9000:9000`."""
        return self.stack(self.build(), self.seed())
