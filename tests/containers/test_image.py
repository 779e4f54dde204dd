"""The serving image, built by replaying the module's own ``build()`` chain on dockerd, checked in a container."""

from __future__ import annotations

import re
from typing import Any, Final

import pytest
from flight_price import main as module
from flight_price.main import FlightPrice

from tests.harness.plan import one
from tests.harness.replay import Replay, env_of

pytestmark = [pytest.mark.integration, pytest.mark.containers]

NS_PER_S: Final = 1_000_000_000
MAX_VENV_MB: Final = 250  # the serving group's venv: 138 MB with its bytecode at a8043a6 (printed by the test)


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"the module declares {duration!r}: only whole seconds are compared here"
    return int(match.group(1)) * NS_PER_S


@pytest.fixture(scope="module")
def built(replay: Replay, flight_price: FlightPrice) -> tuple[str, dict[str, Any]]:
    image = replay.image(flight_price.build(revision="abc123", version="1.2.3"))
    inspected = replay.inspect(image)
    print(f"\nserving image {image[:19]}: {inspected['Size'] / 1e6:.0f} MB on disk (stand-in base included)")
    return image, inspected


def test_the_user_and_its_group_are_10001(replay: Replay, built: tuple[str, dict[str, Any]]) -> None:
    image, inspected = built
    assert inspected["Config"]["User"] == f"{module.APP_UID}:{module.APP_UID}"
    ran = replay.run_in(image, "id; grep '^[^:]*:[^:]*:10001:' /etc/group")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"uid={module.APP_UID}({module.APP_USER}) gid={module.APP_UID}({module.APP_USER}) "
        f"groups={module.APP_UID}({module.APP_USER})",
        f"{module.APP_USER}:x:{module.APP_UID}:",
    ]


def test_only_the_venv_and_app_enter_no_build_tools(replay: Replay, built: tuple[str, dict[str, Any]]) -> None:
    image, _ = built
    ran = replay.run_in(
        image,
        "ls -A /srv; echo --; ls -A /srv/app | grep -c .; echo --; "
        "find / -xdev \\( -name uv -o -name 'gcc*' -o -name cc -o -name 'clang*' -o -name 'zig*' \\) -type f "
        "-perm -u+x -print; "
        "find / -xdev \\( -name .git -o -iname 'ziglang*' -o -name zig \\) -print; "
        "find /srv \\( -name orchestration -o -name tests -o -name __pycache__ -o -name '.*' \\) -print",
    )
    assert ran.returncode == 0, ran.stderr
    top, app_entries, found = ran.stdout.split("--\n")
    assert top.split() == ["app"]
    assert int(app_entries) > 5
    # no uv, compiler or zig executable, no ziglang package (the walk builder's) and no .git anywhere; under /srv
    # no orchestration/, tests/, bytecode or dotfiles
    assert found.split() == []


# Run in the image as its user with its venv: both libraries, each for its architecture (ELF e_machine), and this
# machine's one loaded by walk_kernel as the server loads it.
WALK_PROBE: Final = """
import platform
from pathlib import Path
from app.contract import walk_kernel
for path in sorted(Path(walk_kernel.SOURCE).parent.glob("walk-*.so")):
    print(path.name, int.from_bytes(path.read_bytes()[18:20], "little"))
walk = walk_kernel.compiled_walk()
print("--")
print(platform.machine(), type(walk).__name__, getattr(walk, "path", walk))
"""
ELF_MACHINES: Final = {"walk-x86_64.so": 62, "walk-aarch64.so": 183}  # EM_X86_64, EM_AARCH64


def test_the_compiled_walk_is_in_the_image_and_loads(replay: Replay, built: tuple[str, dict[str, Any]]) -> None:
    image, _ = built
    ran = replay.run_in(image, f"ls -l {module.WALK_CONTRACT_DIR}/walk-*; echo --; python -c '{WALK_PROBE}'")
    assert ran.returncode == 0, ran.stderr
    listing, libraries, loaded = ran.stdout.split("--\n")
    print(f"\ncompiled walk in the image:\n{listing.rstrip()}")
    assert set(ELF_MACHINES) == set(module.WALK_LIBRARIES)
    assert dict((name, int(machine)) for name, machine in map(str.split, libraries.splitlines())) == ELF_MACHINES
    machine, kind, path = loaded.strip().split(maxsplit=2)
    # a CompiledWalk, not the reason string of the numpy fallback, from this machine's library beside walk.c
    assert kind == "CompiledWalk", loaded
    assert path == f"{module.WALK_CONTRACT_DIR}/walk-{machine}.so"
    assert "numpy walk" not in ran.stderr.lower()


def test_the_venv_holds_the_serving_group_only(replay: Replay, built: tuple[str, dict[str, Any]]) -> None:
    image, _ = built
    ran = replay.run_in(
        image,
        f"du -sm {module.VENV} | cut -f1; echo --; ls {module.VENV}/lib/python3*/site-packages | grep 'dist-info$'; "
        f"echo --; find {module.VENV}/lib -path '*/site-packages/*/tests' -type d | head -3; echo --; "
        f"ls {module.VENV}/lib/python3*/site-packages/numpy/__pycache__ | grep -c 'pyc$'",
    )
    assert ran.returncode == 0, ran.stderr
    size, listing, tests, compiled = ran.stdout.split("--\n")
    print(f"\nruntime venv in the image: {size.strip()} MB")
    assert int(size) < MAX_VENV_MB
    installed = {line.split("-")[0].lower() for line in listing.split()}
    assert {"fastapi", "uvicorn", "numpy", "botocore"} <= installed
    assert not {"apache_airflow", "mlflow", "pandas", "pytest", "mypy", "ruff", "moto", "uv", "dagger_io"} & installed
    # the server predicts from the bundle's serving form with numpy alone, and pulls it with botocore alone
    assert not {"scikit_learn", "scipy", "skops", "threadpoolctl", "joblib"} & installed
    assert not {"dvc", "dvc_s3", "dvc_data", "dvc_objects", "s3fs", "aiobotocore", "fsspec", "boto3"} & installed
    assert tests.split() == []
    # compiled at build time, so a read-only root does not recompile on every start
    assert int(compiled) > 10


def test_the_venv_is_read_only_and_models_writable_for_the_app_user(
    replay: Replay, built: tuple[str, dict[str, Any]]
) -> None:
    image, _ = built
    ran = replay.run_in(
        image,
        f"find {module.VENV} -writable | head -3; echo --; touch {module.MODEL_DIR}/probe && stat -c '%u:%g' "
        f"{module.MODEL_DIR}; touch {module.VENV}/probe 2>&1",
    )
    writable, models = ran.stdout.split("--\n")
    assert writable == ""
    assert models.splitlines()[0] == f"{module.APP_UID}:{module.APP_UID}"
    assert "Permission denied" in models
    imports = replay.run_in(image, "python -c 'import app.entrypoint, app.main, botocore; print(\"ok\")'")
    assert imports.stdout.strip() == "ok", imports.stderr


def test_entrypoint_port_labels_env_and_healthcheck_are_what_the_module_declares(
    replay: Replay, flight_price: FlightPrice, built: tuple[str, dict[str, Any]]
) -> None:
    _, inspected = built
    config = inspected["Config"]
    assert config["Entrypoint"] == list(module.ENTRYPOINT)
    assert not config["Cmd"]
    assert set(config["ExposedPorts"]) == {f"{module.PORT}/tcp"}
    assert config["WorkingDir"] == module.APP_ROOT
    env = env_of(inspected)
    assert {k: env[k] for k in module.RUNTIME_ENV} == module.RUNTIME_ENV
    assert env["PATH"].startswith(f"{module.VENV}/bin:")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "UV_CACHE_DIR"} & set(env)
    assert config["Labels"] == {
        "org.opencontainers.image.title": module.SERVING_IMAGE_NAME,
        "org.opencontainers.image.source": module.SOURCE_URL,
        "org.opencontainers.image.revision": "abc123",
        "org.opencontainers.image.version": "1.2.3",
    }
    declared = one(flight_price.build(), "withDockerHealthcheck")
    check = config["Healthcheck"]
    assert check["Test"] == ["CMD", *declared["args"]] == ["CMD", *module.READY_PROBE]
    assert check["Interval"] == seconds(declared["interval"])
    assert check["Timeout"] == seconds(declared["timeout"])
    assert check["StartPeriod"] == seconds(declared["startPeriod"])
    assert check["Retries"] == declared["retries"]
    # dockerd 20.10 has no start interval (API 1.44); the replay says so instead of dropping it silently
    assert replay.differences == {
        f"HEALTHCHECK start_interval={declared['startInterval']} left out: dockerd 20.10 has no --start-interval"
    }
