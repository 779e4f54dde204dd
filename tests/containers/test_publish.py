"""``publish()`` replayed into a real registry, for both of the module's platforms.

The module's own ``publish`` coroutine runs with the replay answering its queries (``Replay.as_engine``): it
builds ``build()`` and ``airflow()`` for linux/amd64 and linux/arm64 (arm64 under qemu-user, on arm64 stand-in
bases) and pushes each image as one OCI index to Debian's ``docker-registry`` on 127.0.0.1, authenticated by
htpasswd with the password as a Dagger secret. The tests read back what the registry holds, pull each
platform's serving image by its digest into dockerd and run the module's smoke checker against it.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator

import pytest
from dagger import Platform, dag
from flight_price.main import AIRFLOW_IMAGE_NAME, AIRFLOW_VERSION, PLATFORMS, SERVING_IMAGE_NAME, FlightPrice, uv_tool

from tests.harness.engine import DOCKER, Engine
from tests.harness.registry import OCI_INDEX, OCI_MANIFEST, ImageRegistry, RegistryClient, image_registry
from tests.harness.replay import Replay, ReplayError, State
from tests.harness.standins import python_standin, standin_variants, uv_standin
from tests.harness.warm import module_on_standins, wait_for_warm_up

# Cold, the module fixture builds both images for arm64 under emulation (about 10 minutes here); .ci/run's warm-up
# builds them ahead, and the fixture waits for it.
pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(1800)]

TAG = "v1.2.3"
REVISION = "0123abcd"
ELF_MACHINE = {"linux/amd64": 62, "linux/arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64


def elf_machine(head: bytes) -> int | None:
    """The target machine of an ELF file from its first 20 bytes (little-endian); None if it is not ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return int.from_bytes(head[18:20], "little")


@pytest.fixture(scope="module")
def registry() -> Iterator[ImageRegistry]:
    with image_registry() as running:
        yield running


@pytest.fixture(scope="module")
def multi_platform(engine: Engine) -> Iterator[Replay]:
    """A replay that resolves each stand-in base for both platforms (the arm64 ones made under emulation)."""
    wait_for_warm_up("emulated")
    variants = standin_variants(engine, airflow_version=AIRFLOW_VERSION)
    with Replay(engine, variants=variants, prune=False) as replayed:  # the session replay prunes at its end
        yield replayed


@pytest.fixture(scope="module")
def module_with_airflow(engine: Engine) -> FlightPrice:
    return module_on_standins(engine, airflow=True)


def publish(replay: Replay, module: FlightPrice, registry: ImageRegistry, password: str, namespace: str) -> str:
    """The module's ``publish`` as ``dagger call publish --tested=true`` runs it, on the replay."""
    with replay.as_engine():
        return str(
            asyncio.run(
                module.publish(
                    username=registry.username,
                    password=dag.set_secret("registry-password", password),
                    repository=f"{registry.host}/{namespace}",
                    tag=TAG,
                    revision=REVISION,
                    version=TAG,
                    tested=True,
                )
            )
        )


@pytest.fixture(scope="module")
def published(
    multi_platform: Replay, module_with_airflow: FlightPrice, registry: ImageRegistry
) -> dict[str, tuple[str, str]]:
    """image name -> (its reference as publish returned it, the index digest)."""
    output = publish(multi_platform, module_with_airflow, registry, registry.password, "flight-price")
    print(f"\n{output}")
    references: dict[str, tuple[str, str]] = {}
    for line in output.splitlines():
        reference, _, digest = line.partition("@")
        references[reference.rsplit("/", 1)[1].split(":")[0]] = (reference, digest)
    return references


def platforms_of(client: RegistryClient, repository: str, reference: str) -> dict[str, str]:
    """platform -> manifest digest in the index under ``reference``; the index's own media type is checked."""
    media_type, index = client.manifest(repository, reference)
    assert media_type == OCI_INDEX
    assert index["mediaType"] == OCI_INDEX
    return {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}


def test_each_image_is_one_index_holding_both_platforms(
    published: dict[str, tuple[str, str]], registry: ImageRegistry
) -> None:
    client = registry.client()
    assert set(published) == {SERVING_IMAGE_NAME, AIRFLOW_IMAGE_NAME}
    for name, (reference, digest) in published.items():
        repository = f"flight-price/{name}"
        assert reference == f"{registry.host}/{repository}:{TAG}"
        assert client.tags(repository) == [TAG]
        by_platform = platforms_of(client, repository, TAG)
        assert sorted(by_platform) == sorted(PLATFORMS), (name, by_platform)
        assert platforms_of(client, repository, digest) == by_platform  # the returned digest is the index's
        for platform, manifest_digest in by_platform.items():
            media_type, manifest = client.manifest(repository, manifest_digest)
            assert media_type == OCI_MANIFEST
            config = json.loads(client.blob(repository, manifest["config"]["digest"]))
            assert f"{config['os']}/{config['architecture']}" == platform
            labels = config["config"]["Labels"]
            assert labels["org.opencontainers.image.revision"] == REVISION
            assert labels["org.opencontainers.image.title"] == name


def test_every_binary_of_each_serving_image_is_built_for_its_platform(
    published: dict[str, tuple[str, str]], registry: ImageRegistry
) -> None:
    """Read from the registry's blobs: a venv built on the engine's own platform would hold x86-64 code in the
    arm64 image (the interpreter, numpy's and scikit-learn's extensions: every ELF file is checked)."""
    client = registry.client()
    repository = f"flight-price/{SERVING_IMAGE_NAME}"
    for platform, manifest_digest in platforms_of(client, repository, TAG).items():
        manifest = client.manifest(repository, manifest_digest)[1]
        machines: dict[int, list[str]] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(client.blob(repository, layer["digest"])))) as tar:
                for member in tar:
                    data = tar.extractfile(member) if member.isfile() else None
                    machine = elf_machine(data.read(20)) if data is not None else None
                    if machine is not None:
                        machines.setdefault(machine, []).append(member.name)
        others = {m: names[:5] for m, names in machines.items() if m != ELF_MACHINE[platform]}
        assert not others, f"{platform}: ELF files for other machines: {others}"
        assert len(machines[ELF_MACHINE[platform]]) > 50  # the interpreter and the compiled packages


def test_each_platform_pulled_back_by_digest_passes_the_smoke_checker(
    published: dict[str, tuple[str, str]],
    registry: ImageRegistry,
    multi_platform: Replay,
    module_with_airflow: FlightPrice,
    engine: Engine,
) -> None:
    repository = f"{registry.host}/flight-price/{SERVING_IMAGE_NAME}"
    by_platform = platforms_of(registry.client(), f"flight-price/{SERVING_IMAGE_NAME}", TAG)
    with tempfile.TemporaryDirectory(prefix="docker-config-") as config:
        env = {**engine.env(), "DOCKER_CONFIG": config}
        login = subprocess.run(
            [DOCKER, "login", "--username", registry.username, "--password-stdin", registry.host],
            input=registry.password, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        for platform in PLATFORMS:
            pulled = f"{repository}@{by_platform[platform]}"
            result = subprocess.run([DOCKER, "pull", pulled], env=env, capture_output=True, text=True, check=False)
            assert result.returncode == 0, result.stderr
            inspected = engine.image(pulled)
            assert inspected is not None and f"{inspected['Os']}/{inspected['Architecture']}" == platform
            image = dag.container(platform=platform).from_(pulled)
            report = multi_platform.stdout(module_with_airflow.smoke_check(image), fresh=True)
            print(f"\n{platform}: {report.strip().splitlines()[-1]}")
            last = report.strip().splitlines()[-1]
            passed, _, total = last.split()[0].partition("/")
            assert passed == total and int(total) >= 5, report
            subprocess.run([DOCKER, "rmi", pulled], env=env, capture_output=True, check=False)


def test_a_wrong_password_fails_clearly_and_pushes_nothing(
    multi_platform: Replay, module_with_airflow: FlightPrice, registry: ImageRegistry
) -> None:
    with pytest.raises(ReplayError, match=r"refused the credentials of 'publisher' \(401\).*nothing was pushed"):
        publish(multi_platform, module_with_airflow, registry, "not-the-password", "refused")
    assert not [repository for repository in registry.client().catalog() if repository.startswith("refused/")]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_uv_in_the_builder_is_the_platforms_own(multi_platform: Replay, engine: Engine, platform: Platform) -> None:
    """The builder runs uv from the uv image resolved for the target platform, not the engine's."""
    base = dag.container(platform=platform).from_(python_standin(engine))
    builder = base.with_(uv_tool(uv_standin(engine), platform))
    state = multi_platform.evaluate(builder)
    assert isinstance(state, State)
    name = f"uv-check-{os.getpid()}"
    multi_platform.docker("create", "--name", name, "--entrypoint", "", state.image, "none")
    try:
        copied = subprocess.run(
            [DOCKER, "cp", f"{name}:/usr/local/bin/uv", "-"], env=engine.env(), capture_output=True, check=True
        )
    finally:
        multi_platform.docker("rm", "--force", name, check=False)
    with tarfile.open(fileobj=io.BytesIO(copied.stdout)) as tar:
        member = tar.extractfile("uv")
        assert member is not None
        assert elf_machine(member.read(20)) == ELF_MACHINE[platform]


def test_a_variant_missing_for_a_platform_is_refused(engine: Engine) -> None:
    with Replay(engine, prune=False) as bare, pytest.raises(ReplayError, match="no linux/arm64 variant registered"):
        bare.evaluate(dag.container(platform=Platform("linux/arm64")).from_(python_standin(engine)))
