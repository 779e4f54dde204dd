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

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path
from typing import Final

from tests.containers.engine import DOCKER, Engine, EngineError
from tests.services import BIN

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
RECIPE_VERSION: Final = "1"


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


def import_tree(engine: Engine, root: Path, tag: str, env: dict[str, str], cmd: list[str] | None) -> None:
    """``docker import`` the tree under ``root`` as ``tag``, with its environment and command."""
    changes = [f'ENV {name}="{value}"' for name, value in env.items()]
    if cmd is not None:
        changes.append("CMD " + "[" + ", ".join(f'"{arg}"' for arg in cmd) + "]")
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    result = subprocess.run(
        [DOCKER, "import", *(f"--change={change}" for change in changes), "-", tag],
        env=engine.env(),
        stdin=tar.stdout,
        capture_output=True,
        check=False,
    )
    tar.stdout.close()
    if tar.wait() != 0 or result.returncode != 0:
        raise EngineError(f"docker import {tag} failed: {result.stderr.decode(errors='replace')[-2000:]}")


def python_standin(engine: Engine) -> str:
    """The stand-in for ``python:3.12-slim`` (built once per recipe); its tag."""
    mirror, ca_bundle = debian_mirror(), host_ca_bundle()
    recipe = hashlib.sha256(
        "\n".join([RECIPE_VERSION, SUITE, mirror, *PACKAGES, *(f"{k}={v}" for k, v in STANDIN_ENV.items())]).encode()
        + ca_bundle.read_bytes()
    ).hexdigest()[:12]
    tag = f"{PYTHON_STANDIN}:{recipe}"
    if engine.image(tag) is not None:
        return tag
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap is missing: `python -m tests.containers.engine start` installs it")
    print(f"standins: debootstrap {SUITE} minbase from {mirror} (about a minute)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="standin-python-") as work:
        root = Path(work) / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror]
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
        import_tree(engine, root, tag, STANDIN_ENV, ["python3"])
    print(f"standins: {tag} built", file=sys.stderr)
    return tag


def locked_uv_version() -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(str(p["version"]) for p in lock["package"] if p["name"] == "uv")


def uv_standin(engine: Engine) -> str:
    """The stand-in for the uv image: ``/uv`` only, the locked version; its tag."""
    binary = BIN / "uv"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    if version != locked_uv_version():
        raise EngineError(f"{binary} is uv {version}, the lock has {locked_uv_version()}: run `uv sync --frozen`")
    data = binary.read_bytes()
    tag = f"{UV_STANDIN}:{version}-{hashlib.sha256(data).hexdigest()[:12]}"
    if engine.image(tag) is not None:
        return tag
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        entry = tarfile.TarInfo("uv")
        entry.size, entry.mode = len(data), 0o755
        tar.addfile(entry, io.BytesIO(data))
    docker(engine, "import", "-", tag, stdin=archive.getvalue())
    return tag
