"""The serving image run as the Kubernetes Deployment runs it (deploy/kubernetes), in a real container.

The image is the module's own ``build()``; Docker stands in for the kubelet with the pod spec's settings: a
read-only root filesystem (``readOnlyRootFilesystem``), writable volumes at ``MODEL_DIR`` and ``/tmp`` only
(the emptyDirs: a fresh named volume and a tmpfs), the image's uid 10001 with every capability dropped and no
new privileges, the Deployment's own environment (its ConfigMap and env), and the S3 keys only in the file
``AWS_SHARED_CREDENTIALS_FILE`` names, bound read-only where the Secret volume goes. It is bound to the smoke
stage's mocks (moto S3 seeded by the seed step, the MLflow mock), and the module's checker checks it.

Differences from a pod: the registry and remote are the mocks' (their URLs and the smoke model name override
the Deployment's), the MLflow mock needs no credentials, and the emptyDir at ``MODEL_DIR`` is a Docker volume
initialised from the image's own ``MODEL_DIR`` (owned by 10001), not an empty directory with fsGroup 10001.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from flight_price import main as module
from flight_price.main import FlightPrice

from tests.harness.manifests import Manifests, render
from tests.harness.replay import Replay
from tests.harness.services import s3_keys_in_file

pytestmark = [pytest.mark.integration, pytest.mark.containers]

UID: Final = int(module.APP_UID)
WRITABLE: Final = (module.MODEL_DIR, "/tmp")
# Run inside the image: try to create a file in each directory given; print the outcome for each.
WRITE_PROBE: Final = """
import errno, os, sys
for path in sys.argv[1:]:
    target = os.path.join(path, ".write-probe")
    try:
        with open(target, "x"):
            pass
        os.remove(target)
        print(path, "writable")
    except OSError as exc:
        print(path, errno.errorcode[exc.errno])
"""


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return Manifests(render()[0])


@pytest.fixture(scope="module")
def pod_flags(replay: Replay, manifests: Manifests, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """``docker`` flags for the pod spec's security context and volumes; the model volume is removed after."""
    credentials_file = manifests.environment()["AWS_SHARED_CREDENTIALS_FILE"]
    assert credentials_file is not None
    secret_dir, _, file_name = credentials_file.rpartition("/")
    secret = tmp_path_factory.mktemp("secret")
    s3_keys_in_file(secret / file_name, module.SMOKE_CREDENTIALS)
    os.chown(secret / file_name, 0, UID)  # defaultMode 0440, group fsGroup, as the Secret volume has it
    (secret / file_name).chmod(0o440)
    secret.chmod(0o755)
    volume = f"replay-pod-models-{uuid.uuid4().hex[:8]}"
    replay.docker("volume", "create", volume)
    try:
        yield [
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            f"--mount=type=volume,src={volume},dst={module.MODEL_DIR}",
            "--tmpfs=/tmp:rw,mode=1777",
            f"--volume={secret}:{secret_dir}:ro",
        ]
    finally:
        replay.docker("volume", "rm", "--force", volume, check=False)


@pytest.mark.parametrize("uid", [UID, 0], ids=["uid 10001", "uid 0 without capabilities"])
def test_only_model_dir_and_tmp_can_be_written(
    replay: Replay, flight_price: FlightPrice, pod_flags: list[str], uid: int
) -> None:
    """The layout: uid 10001 creates files in /models and /tmp and nowhere else; everywhere else the read-only
    root refuses (EROFS), whatever the permissions, even to uid 0 (the owner of most of it)."""
    image = replay.image(flight_price.build())
    directories = ["/", module.APP_ROOT, f"{module.APP_ROOT}/app", module.VENV, "/etc", "/usr", "/var",
                   f"/home/{module.APP_USER}", *WRITABLE]  # fmt: skip
    script = f"exec python -I -c '{WRITE_PROBE}' {' '.join(directories)}"
    probe = replay.run_in(image, script, user=f"{uid}:{uid}", flags=pod_flags)
    assert probe.returncode == 0, probe.stderr
    outcome = dict(line.rsplit(" ", 1) for line in probe.stdout.splitlines())
    print(f"\nas uid {uid}: {outcome}")
    assert set(outcome) == set(directories)
    assert {path for path, result in outcome.items() if path not in WRITABLE} == set(directories) - set(WRITABLE)
    assert {result for path, result in outcome.items() if path not in WRITABLE} == {"EROFS"}
    if uid == UID:
        assert {path for path, result in outcome.items() if result == "writable"} == set(WRITABLE)


def test_the_image_serves_as_the_deployment_runs_it(
    replay: Replay, flight_price: FlightPrice, manifests: Manifests, pod_flags: list[str], tmp_path: Path
) -> None:
    deployment_env = {name: value for name, value in manifests.environment().items() if value is not None}
    assert deployment_env["MODEL_DIR"] == module.MODEL_DIR and "MODEL_REFRESH_S" in deployment_env
    env = {
        **deployment_env,
        **module.smoke_env(f"http://s3:{module.MOCK_PORT}", f"http://mlflow:{module.MOCK_PORT}"),
    }
    assert not set(module.SMOKE_CREDENTIALS) & set(env)  # the keys are in the file only
    seeded = flight_price.seed()
    serving = flight_price.with_mocks(flight_price.build(), seeded)
    for name, value in env.items():
        serving = serving.with_env_variable(name, value)
    check = (
        flight_price.tools()
        .with_directory(module.SEED_DIR, seeded)
        .with_service_binding("app", serving.as_service(use_entrypoint=True))
        .with_exec(module.checker_command(f"http://app:{module.PORT}", module.SEED_DIR))
    )
    replay.pod_flags["app"] = pod_flags
    try:
        report = replay.stdout(check, fresh=True)  # the checker runs now, never from cache
    finally:
        del replay.pod_flags["app"]
    output = replay.service_logs["app"]
    print(f"\n{report.strip()}\n--- server log (tail) ---\n{output[-3000:]}")
    assert report.strip().splitlines()[-1].endswith("checks passed")
    assert not [line for line in report.splitlines() if "FAIL" in line]
    assert replay.service_exits["app"] == 0  # SIGTERM drained and exited 0, read-only root and all
    assert "Read-only file system" not in output and "Permission denied" not in output
    assert module.SMOKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output
    # what the server wrote in the model volume is its own user's
    volume = next(flag.split("src=")[1].split(",")[0] for flag in pod_flags if flag.startswith("--mount="))
    image = replay.image(flight_price.build())
    owners = replay.run_in(
        image,
        f"test -f {module.MODEL_DIR}/bundle/metadata.json && find {module.MODEL_DIR} -mindepth 1 -printf '%u\\n' | "
        "sort -u",
        flags=[f"--mount=type=volume,src={volume},dst={module.MODEL_DIR}"],
    )
    assert owners.returncode == 0, owners.stderr
    assert owners.stdout.split() == [str(UID)] or owners.stdout.split() == [module.APP_USER]
