"""Stand-in base images, made locally from Debian's packages because no registry can be reached here.

The module builds on ``python:3.12-slim`` and ``ghcr.io/astral-sh/uv``; neither can be pulled on our machines,
so the container tests pass these stand-ins through the module's own base-image arguments instead:

- **python**: Debian bookworm ``minbase`` by debootstrap with ``python3``, ``python3-venv``, ``ca-certificates``
  and ``passwd`` (``useradd``/``groupadd`` as in the real image), Debian's Python 3.11 on ``PATH`` as
  ``python`` and ``python3`` (in /usr/local/bin, as the real image has them), and the host's CA bundle with
  ``SSL_CERT_FILE`` pointing at it, so uv inside reaches the package index through the machine's TLS
  interception. The Debian mirror is read from the machine's apt configuration.
- **uv**: an image holding only ``/uv``, the uv binary of the locked version, taken from the project
  environment (which installed it from the uv wheel on PyPI).

Each image's tag is a hash of its recipe (packages, mirror, CA bundle, uv binary), so a machine builds it once
and later runs reuse it; a changed recipe builds a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from tests.harness.engine import DOCKER, Engine, EngineError, engine_dir
from tests.harness.services import BIN

REPO: Final = Path(__file__).resolve().parents[2]
SUITE: Final = "bookworm"
PACKAGES: Final = ("python3", "python3-venv", "ca-certificates", "passwd")
PYTHON_STANDIN: Final = "flight-price-standin/python"
UV_STANDIN: Final = "flight-price-standin/uv"
CA_BUNDLE_IN_IMAGE: Final = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_BUNDLES: Final = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pki/tls/certs/ca-bundle.crt"))
STANDIN_ENV: Final[dict[str, str]] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SSL_CERT_FILE": CA_BUNDLE_IN_IMAGE,  # uv's own root store lacks the machine's interception CA
}
# Bump when the recipe below changes in a way the hash inputs do not show.
RECIPE_VERSION: Final = "2"
# The machine's platform, and the architectures the stand-ins are made for (the module's PLATFORMS).
ARCHITECTURES: Final = {"x86_64": "amd64", "aarch64": "arm64"}
NATIVE_PLATFORM: Final = f"linux/{ARCHITECTURES.get(os.uname().machine, os.uname().machine)}"
PLATFORMS_MADE: Final = ("linux/amd64", "linux/arm64")
WHEEL_ARCH: Final = {"amd64": "x86_64", "arm64": "aarch64"}


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first mirror the machine's apt configuration uses for Debian's main archive (deb822 or one-line)."""
    candidates: list[str] = []
    for sources in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(
                (line.split(":", 1)[0].strip(), line.split(":", 1)[1].strip())
                for line in stanza.splitlines()
                if ":" in line and not line.lstrip().startswith("#")
            )
            suites = fields.get("Suites", "").split()
            if fields.get("Types", "") == "deb" and SUITE in suites and "main" in fields.get("Components", "").split():
                candidates.extend(fields.get("URIs", "").split())
    one_line = apt_dir / "sources.list"
    if one_line.exists():
        for line in one_line.read_text().splitlines():
            match = re.match(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s+.*\bmain\b", line)
            if match:
                candidates.append(match.group(1))
    if not candidates:
        raise EngineError(f"no Debian {SUITE} main archive in {apt_dir}'s sources: debootstrap needs a mirror")
    return candidates[0]


def host_ca_bundle() -> Path:
    for path in HOST_CA_BUNDLES:
        if path.exists():
            return path
    raise EngineError(f"no CA bundle at {', '.join(map(str, HOST_CA_BUNDLES))}: containers could not reach the index")


def docker(engine: Engine, *args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run([DOCKER, *args], env=engine.env(), input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise EngineError(f"docker {' '.join(args[:3])} failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return result.stdout.decode().strip()


@contextmanager
def building(engine: Engine, tag: str) -> Iterator[bool]:
    """Whether ``tag`` is still to be made, holding this machine's lock on it meanwhile: the warm-up and a test
    may want the same stand-in at once, and the second then waits and finds it made."""
    if engine.image(tag) is not None:
        yield False
        return
    lock = engine_dir() / "standin-locks" / hashlib.sha256(tag.encode()).hexdigest()[:16]
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield engine.image(tag) is None


def arch_of(platform: str) -> str:
    """The architecture of an OCI platform (``linux/arm64`` -> ``arm64``); only Linux platforms are made here."""
    os_name, _, arch = platform.partition("/")
    if os_name != "linux" or arch not in WHEEL_ARCH:
        raise EngineError(f"platform {platform!r}: the stand-ins are made for {', '.join(PLATFORMS_MADE)} only")
    return arch


def load_tree(engine: Engine, root: Path, tag: str, env: dict[str, str], cmd: list[str] | None, platform: str) -> None:
    """``docker load`` the tree under ``root`` as ``tag``: one layer, an image configuration naming ``platform``
    (``docker import`` of dockerd 20.10 would record the engine's architecture whatever the files are)."""
    with tempfile.TemporaryDirectory(prefix="standin-load-") as work:
        layer = Path(work) / "layer.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(layer), "."], check=True)
        hasher = hashlib.sha256()
        with layer.open("rb") as data:
            while chunk := data.read(1 << 20):
                hasher.update(chunk)
        config: dict[str, object] = {
            "architecture": arch_of(platform),
            "os": "linux",
            "config": {"Env": [f"{name}={value}" for name, value in env.items()], **({"Cmd": cmd} if cmd else {})},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hasher.hexdigest()}"]},
            "history": [{"created_by": f"tests/harness/standins.py ({platform})"}],
        }
        config_json = json.dumps(config).encode()
        config_name = f"{hashlib.sha256(config_json).hexdigest()}.json"
        (Path(work) / config_name).write_bytes(config_json)
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]
        (Path(work) / "manifest.json").write_text(json.dumps(manifest))
        bundle = Path(work) / "image.tar"
        subprocess.run(["tar", "-C", work, "-cf", str(bundle), "manifest.json", config_name, "layer.tar"], check=True)
        with bundle.open("rb") as stream:
            result = subprocess.run(
                [DOCKER, "load", "--quiet"], env=engine.env(), stdin=stream, capture_output=True, check=False
            )
    if result.returncode != 0:
        raise EngineError(f"docker load {tag} failed: {result.stderr.decode(errors='replace')[-2000:]}")


def python_standin(engine: Engine, platform: str = NATIVE_PLATFORM) -> str:
    """The stand-in for ``python:3.11-slim`` on ``platform`` (built once per recipe); its tag.

    Another architecture than the machine's is made under qemu-user (``tests/harness/engine.py`` registers it):
    debootstrap runs the packages' scripts emulated, a few minutes."""
    arch = arch_of(platform)
    mirror, ca_bundle = debian_mirror(), host_ca_bundle()
    recipe = hashlib.sha256(
        "\n".join(
            [RECIPE_VERSION, SUITE, arch, mirror, *PACKAGES, *(f"{k}={v}" for k, v in STANDIN_ENV.items())]
        ).encode()
        + ca_bundle.read_bytes()
    ).hexdigest()[:12]
    tag = f"{PYTHON_STANDIN}:{arch}-{recipe}"
    with building(engine, tag) as needed:
        if not needed:
            return tag
        if shutil.which("debootstrap") is None:
            raise EngineError("debootstrap is missing: `python -m tests.harness.engine start` installs it")
        emulated = "" if platform == NATIVE_PLATFORM else ", emulated: minutes"
        print(f"standins: debootstrap {SUITE} minbase for {arch} from {mirror}{emulated}", file=sys.stderr)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="standin-python-") as work:
            root = Path(work) / "rootfs"
            command = [
                "debootstrap", f"--arch={arch}", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                SUITE, str(root), mirror,
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise EngineError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (root / cache).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            shutil.copyfile(ca_bundle, root / CA_BUNDLE_IN_IMAGE.lstrip("/"))
            for name in ("python", "python3"):
                (root / "usr/local/bin" / name).symlink_to("/usr/bin/python3")
            load_tree(engine, root, tag, STANDIN_ENV, ["python3"], platform)
        print(f"standins: {tag} built ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return tag


def locked_uv_version() -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(str(p["version"]) for p in lock["package"] if p["name"] == "uv")


def uv_binary(platform: str) -> bytes:
    """The locked uv's binary for ``platform``: the project environment's own, or the wheel's from PyPI."""
    binary = BIN / "uv"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    if version != locked_uv_version():
        raise EngineError(f"{binary} is uv {version}, the lock has {locked_uv_version()}: run `uv sync --frozen`")
    if platform == NATIVE_PLATFORM:
        return binary.read_bytes()
    with tempfile.TemporaryDirectory(prefix="standin-uv-") as target:
        command = [
            str(binary), "pip", "install", "--quiet", "--no-deps", "--target", target,
            "--python-platform", f"{WHEEL_ARCH[arch_of(platform)]}-manylinux_2_28", "--python-version", "3.11",
            f"uv=={version}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EngineError(f"the uv {version} wheel for {platform} failed to install:\n{result.stderr[-2000:]}")
        return (Path(target) / "bin" / "uv").read_bytes()


def uv_standin(engine: Engine, platform: str = NATIVE_PLATFORM) -> str:
    """The stand-in for the uv image on ``platform``: ``/uv`` only, the locked version; its tag."""
    data = uv_binary(platform)
    tag = f"{UV_STANDIN}:{locked_uv_version()}-{arch_of(platform)}-{hashlib.sha256(data).hexdigest()[:12]}"
    with building(engine, tag) as needed:
        if not needed:
            return tag
        with tempfile.TemporaryDirectory(prefix="standin-uv-") as work:
            (Path(work) / "uv").write_bytes(data)
            (Path(work) / "uv").chmod(0o755)
            load_tree(engine, Path(work), tag, {}, None, platform)
    return tag


def standin_variants(engine: Engine, *, airflow_version: str | None = None) -> dict[tuple[str, str], str]:
    """Each base the module pulls, per platform of ``platforms``: (native stand-in tag, platform) -> its variant's
    tag, for ``Replay(variants=...)`` (Dagger resolves ``from`` per platform; dockerd 20.10 keeps one image a tag).
    The non-native variants are made under emulation (minutes the first time)."""
    variants: dict[tuple[str, str], str] = {}
    for platform in PLATFORMS_MADE:
        variants[(python_standin(engine), platform)] = python_standin(engine, platform)
        variants[(uv_standin(engine), platform)] = uv_standin(engine, platform)
        if airflow_version is not None:
            variants[(airflow_standin(engine, airflow_version), platform)] = airflow_standin(
                engine, airflow_version, platform
            )
    return variants


# --- the compose stack's images ----------------------------------------------------------------------------------
# orchestration/docker-compose.yaml runs apache/airflow (extended by the module's ``airflow()``), postgres and
# MinIO. None can be pulled here, so these stand-ins are built on the python stand-in from Debian's packages and
# PyPI, each made the way its original is made where that can be done here (tests/harness/standin_files/ holds
# their scripts, written here, not copied). Their tags are hashes of their recipes, like the bases above.

STANDIN_FILES: Final = Path(__file__).resolve().parent / "standin_files"
AIRFLOW_STANDIN: Final = "flight-price-standin/airflow"
POSTGRES_STANDIN: Final = "flight-price-standin/postgres"
S3_STANDIN: Final = "flight-price-standin/s3"
AIRFLOW_UID: Final = 50000  # the official image's airflow user (group 0, as the image runs with any uid)
AIRFLOW_HOME: Final = "/opt/airflow"
AIRFLOW_VENV: Final = "/home/airflow/.local"  # the official image's virtualenv, the airflow user's own
PREINSTALL_TRAIN: Final = f"""\
COPY train.txt /tmp/train.txt
RUN uv pip install --quiet --no-cache --python {AIRFLOW_VENV}/bin/python --requirement /tmp/train.txt"""
APT_INSTALL: Final = (
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {packages}"
    " >/dev/null && rm -rf /var/lib/apt/lists/*"
)


def locked_requirements(*selection: str) -> bytes:
    """The lock's pins of ``selection`` (``uv export``'s group options), as a requirements file."""
    command = [str(BIN / "uv"), "export", "--frozen", *selection, "--no-emit-project", "--no-hashes", "--no-header"]
    return subprocess.run(command, cwd=REPO, capture_output=True, check=True).stdout


def locked_constraints() -> bytes:
    """Every package the lock pins (all groups), as a pip/uv constraints file."""
    return locked_requirements("--all-groups")


def locked_airflow_packages() -> list[str]:
    """apache-airflow and the providers the lock pins: what the stand-in installs (the rest comes as their needs)."""
    lines = locked_constraints().decode().splitlines()
    return sorted(line.split("==")[0] for line in lines if line.startswith("apache-airflow"))


def built_image(engine: Engine, repository: str, dockerfile: str, files: dict[str, bytes]) -> str:
    """``docker build`` of ``dockerfile`` with ``files`` as its context, tagged by a hash of both; its tag."""
    recipe = hashlib.sha256(dockerfile.encode())
    for name in sorted(files):
        recipe.update(name.encode() + b"\0" + files[name])
    tag = f"{repository}:{recipe.hexdigest()[:12]}"
    with building(engine, tag) as needed:
        if not needed:
            return tag
        print(f"standins: building {repository} (minutes: packages from Debian and PyPI)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="standin-build-") as context:
            for name, data in {**files, "Dockerfile": dockerfile.encode()}.items():
                (Path(context) / name).write_bytes(data)
            result = subprocess.run(
                [DOCKER, "build", "--quiet", "--tag", tag, context], env=engine.env(), capture_output=True, check=False
            )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise EngineError(f"docker build of {repository} failed:\n{output[-4000:]}")
        print(f"standins: {tag} built", file=sys.stderr)
    return tag


def airflow_standin(engine: Engine, airflow_version: str, platform: str = NATIVE_PLATFORM) -> str:
    """A stand-in for ``apache/airflow:<version>-python3.11``, made the way that image is made; its tag.

    The official image: its Python, a virtualenv owned by the ``airflow`` user (uid 50000, gid 0) at
    ``~/.local`` on ``PATH`` (``VIRTUAL_ENV``, so ``pip install`` as that user extends it), the constraints it
    was installed with in ``~/constraints.txt``, ``AIRFLOW_HOME=/opt/airflow`` as the working directory, its
    environment (``AIRFLOW_UID``, ``AIRFLOW_VERSION``, ``DUMB_INIT_SETSID=1``, examples off, a C.UTF-8 locale),
    ``/etc/passwd`` writable by group 0 (for an arbitrary uid), port 8080, curl for health checks, and dumb-init
    running an entrypoint for ``airflow`` commands. Airflow publishes its constraints on GitHub, which this
    machine cannot reach: the stand-in takes the lock's pins instead (the lock resolved the same
    ``apache-airflow`` with its providers), and installs the providers the lock has, a subset of the official
    image's.

    On another platform than the machine's (made under emulation), the stand-in also holds the lock's ``train``
    group, installed by uv: the module's ``pip install`` of it then finds every requirement satisfied, where
    installing them with pip under qemu-user took 408 s here (on a machine busy with other work).
    """
    packages = locked_airflow_packages()
    emulated = platform != NATIVE_PLATFORM
    if "apache-airflow" not in packages or f"apache-airflow=={airflow_version}" not in locked_constraints().decode():
        raise EngineError(f"the lock does not pin apache-airflow=={airflow_version}: the module and the lock disagree")
    dockerfile = f"""\
FROM {python_standin(engine, platform)}
RUN {APT_INSTALL.format(packages="curl dumb-init libpq5 procps")}
RUN useradd --uid {AIRFLOW_UID} --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \\
 && mkdir -p {AIRFLOW_HOME}/logs {AIRFLOW_HOME}/dags \\
 && chown -R {AIRFLOW_UID}:0 {AIRFLOW_HOME} /home/airflow && chmod -R g+rwX {AIRFLOW_HOME} /home/airflow \\
 && chmod g=u /etc/passwd
COPY uv /usr/local/bin/uv
COPY constraints.txt /home/airflow/constraints.txt
COPY entrypoint /entrypoint
RUN chmod 0755 /usr/local/bin/uv /entrypoint && chown {AIRFLOW_UID}:0 /home/airflow/constraints.txt
ENV LANG=C.UTF-8 LC_ALL=C.UTF-8 PIP_CACHE_DIR=/tmp/.cache/pip UV_CACHE_DIR=/tmp/.cache/uv \\
    AIRFLOW_UID={AIRFLOW_UID} AIRFLOW_HOME={AIRFLOW_HOME} AIRFLOW_USER_HOME_DIR=/home/airflow \\
    VIRTUAL_ENV={AIRFLOW_VENV} PATH={AIRFLOW_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    AIRFLOW_VERSION={airflow_version} AIRFLOW__CORE__LOAD_EXAMPLES=false DUMB_INIT_SETSID=1 \\
    PIP_CERT={CA_BUNDLE_IN_IMAGE} PIP_DISABLE_PIP_VERSION_CHECK=1
USER {AIRFLOW_UID}
RUN uv venv --quiet --seed --python /usr/bin/python3 {AIRFLOW_VENV} \\
 && uv pip install --quiet --no-cache --python {AIRFLOW_VENV}/bin/python \\
    --constraint /home/airflow/constraints.txt \\
    {" ".join(f"{name}=={airflow_version}" if name == "apache-airflow" else name for name in packages)}
{PREINSTALL_TRAIN if emulated else ""}
WORKDIR {AIRFLOW_HOME}
EXPOSE 8080
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD []
"""
    files = {
        "uv": uv_binary(platform),
        "constraints.txt": locked_constraints(),
        "entrypoint": (STANDIN_FILES / "airflow-entrypoint.sh").read_bytes(),
        **({"train.txt": locked_requirements("--only-group", "train")} if emulated else {}),
    }
    return built_image(engine, AIRFLOW_STANDIN, dockerfile, files)


def postgres_standin(engine: Engine) -> str:
    """A stand-in for the official ``postgres`` image: Debian's PostgreSQL 15 and an entrypoint that initialises
    ``PGDATA`` from ``POSTGRES_USER``/``POSTGRES_PASSWORD``/``POSTGRES_DB`` as that image's does; its tag. The
    socket directory has that image's mode, 3777 (Debian's package makes it 2775): a tmpfs over it, which takes
    the mode but belongs to root, stays writable by the postgres user."""
    dockerfile = f"""\
FROM {python_standin(engine)}
RUN mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \\
 && {APT_INSTALL.format(packages="postgresql-15 postgresql-client-15")}
COPY entrypoint /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql && chmod 3777 /var/run/postgresql
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
"""
    files = {"entrypoint": (STANDIN_FILES / "postgres-entrypoint.sh").read_bytes()}
    return built_image(engine, POSTGRES_STANDIN, dockerfile, files)


def s3_standin(engine: Engine) -> str:
    """The closest S3 server that can be built here behind MinIO's service: moto's server (the lock's version) as
    ``minio server``, and an ``mc`` for the commands the compose file runs; its tag. MinIO has no Debian or
    PyPI build: objects live in memory, and IAM policies are recorded, not enforced."""
    dockerfile = f"""\
FROM {python_standin(engine)}
COPY uv /usr/local/bin/uv
COPY constraints.txt /tmp/constraints.txt
RUN chmod 0755 /usr/local/bin/uv && uv venv --quiet --python /usr/bin/python3 /opt/s3 \\
 && uv pip install --quiet --no-cache --python /opt/s3/bin/python --constraint /tmp/constraints.txt \\
    'moto[server]' boto3 \\
 && rm /usr/local/bin/uv /tmp/constraints.txt
COPY mc.py /opt/s3/mc.py
COPY minio /usr/local/bin/minio
RUN printf '#!/bin/sh\\nexec /opt/s3/bin/python /opt/s3/mc.py "$@"\\n' >/usr/local/bin/mc \\
 && chmod 0755 /usr/local/bin/mc /usr/local/bin/minio && chmod 0644 /opt/s3/mc.py
ENV PATH=/opt/s3/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 9000
ENTRYPOINT ["minio"]
"""
    files = {
        "uv": (BIN / "uv").read_bytes(),
        "constraints.txt": locked_constraints(),
        "mc.py": (STANDIN_FILES / "mc.py").read_bytes(),
        "minio": (STANDIN_FILES / "minio").read_bytes(),
    }
    return built_image(engine, S3_STANDIN, dockerfile, files)
