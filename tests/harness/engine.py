"""A Docker engine for the container tests: Debian's dockerd, its data under a directory of ours.

No Dagger engine can run on our machines (it needs ``--privileged``), but dockerd can, so the container
tests replay the Dagger module's pipelines on it (``tests/harness/replay.py``).

    python -m tests.harness.engine start   # install (Debian's docker.io) and start, or reuse a running one
    python -m tests.harness.engine stop    # stop the dockerd this script started, and nothing else
    python -m tests.harness.engine status

``start`` installs what the container tests need from Debian (the engine, debootstrap, qemu-user, a registry),
registers arm64 emulation with ``binfmt_misc``, and prints ``started`` or ``reused`` as its last line, so a caller
stops only what it started.
An engine already answering on ``DOCKER_HOST`` (or on our socket) is reused. Ours keeps its data root, exec
root, socket, pid file and log under ``ENGINE_DIR`` (default ``~/.cache/flight-price/engine``), so the
stand-in base images and the uv cache volume survive between runs on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# Debian's client, the same release as its dockerd (a newer client elsewhere on PATH would want BuildKit).
DOCKER: Final = "/usr/bin/docker"
DOCKERD: Final = "/usr/sbin/dockerd"
# What the container tests need from Debian, each with a file it installs: the engine, debootstrap for the
# stand-in base images, qemu-user for the arm64 ones, and a registry (with htpasswd for its account) to publish to.
DEBIAN_PACKAGES: Final = {
    "docker.io": DOCKERD,
    "debootstrap": "/usr/sbin/debootstrap",
    "qemu-user-static": "/usr/bin/qemu-aarch64-static",
    "docker-registry": "/usr/bin/docker-registry",
    "apache2-utils": "/usr/bin/htpasswd",
}
BINFMT: Final = Path("/proc/sys/fs/binfmt_misc")
# Debian's qemu-user-static ships this rule (fix-binary flag ``F``: the kernel keeps the interpreter open, so it
# works inside containers too); without systemd nothing loads it.
QEMU_AARCH64_RULE: Final = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0


class EngineError(RuntimeError):
    """The engine cannot be installed, started or reached; the message says what to do."""


def engine_dir() -> Path:
    configured = os.environ.get("ENGINE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "flight-price" / "engine"


@dataclass(frozen=True)
class Engine:
    """A reachable dockerd: its address, and whether this process started it (then only it stops it)."""

    host: str
    started: bool

    def env(self) -> dict[str, str]:
        """The environment for ``docker`` commands against this engine."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def image(self, reference: str) -> dict[str, Any] | None:
        """``docker image inspect`` of ``reference``, or None when the engine has no such image."""
        found = subprocess.run(
            [DOCKER, "image", "inspect", reference], env=self.env(), capture_output=True, check=False
        )
        if found.returncode != 0:
            return None
        inspected: dict[str, Any] = json.loads(found.stdout)[0]
        return inspected


def own_socket() -> str:
    return f"unix://{engine_dir() / 'docker.sock'}"


def answers(host: str) -> bool:
    """True when a dockerd answers on ``host``."""
    if not Path(DOCKER).exists():
        return False
    try:
        result = subprocess.run(
            [DOCKER, "--host", host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def install() -> None:
    """Install the Debian packages the container tests need when missing (needs root and the package archive)."""
    missing = [package for package, path in DEBIAN_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"{', '.join(missing)} missing and not root: install them with apt-get as root")
    print(f"engine: installing {' '.join(missing)} from Debian's packages", file=sys.stderr)
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
    ):
        result = subprocess.run(command, env=apt, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EngineError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )


def register_emulation() -> None:
    """Let arm64 binaries run here: binfmt_misc mounted and qemu-user's aarch64 rule registered (as root)."""
    if (BINFMT / "qemu-aarch64").exists():
        if (BINFMT / "qemu-aarch64").read_text().startswith("enabled"):
            return
        raise EngineError(f"{BINFMT / 'qemu-aarch64'} is registered but disabled: enable it (echo 1 > it) as root")
    if os.geteuid() != 0:
        raise EngineError(
            "arm64 emulation is not registered and not root: run `python -m tests.harness.engine start` as root"
        )
    if not (BINFMT / "register").exists():
        mounted = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True, check=False
        )
        if mounted.returncode != 0:
            raise EngineError(f"mount -t binfmt_misc failed: {mounted.stderr.strip()}")
    rule = QEMU_AARCH64_RULE.read_text().strip()
    try:
        (BINFMT / "register").write_text(rule)
    except OSError as error:
        raise EngineError(f"registering {QEMU_AARCH64_RULE} with binfmt_misc failed: {error}") from None
    print("engine: arm64 binaries run through qemu-user (binfmt_misc)", file=sys.stderr)


def start() -> Engine:
    """Reuse a dockerd that answers, else install and start ours; wait until it answers. Either way, the Debian
    packages the tests use are installed and arm64 emulation registered."""
    install()
    register_emulation()
    for host in (os.environ.get("DOCKER_HOST", ""), own_socket()):
        if host and answers(host):
            return Engine(host, started=False)
    if os.geteuid() != 0:
        raise EngineError("dockerd must be started as root")
    root = engine_dir()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "dockerd.log").open("ab")
    command = [
        DOCKERD,
        "--host", own_socket(),
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "docker.pid"),
        "--storage-driver", "overlay2",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineError(f"dockerd exited with {process.returncode}: see {root / 'dockerd.log'}")
        if answers(own_socket()):
            print(f"engine: dockerd started (pid {process.pid}), data under {root}", file=sys.stderr)
            return Engine(own_socket(), started=True)
        time.sleep(0.5)
    process.terminate()
    raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S:.0f}s: see {root / 'dockerd.log'}")


def stop() -> bool:
    """Stop the dockerd started with our pid file (its containers first); False when none runs."""
    pidfile = engine_dir() / "docker.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    if answers(own_socket()):
        running = subprocess.run(
            [DOCKER, "--host", own_socket(), "ps", "--quiet"], capture_output=True, text=True, check=False
        ).stdout.split()
        if running:
            subprocess.run(
                [DOCKER, "--host", own_socket(), "rm", "--force", *running], capture_output=True, check=False
            )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"engine: dockerd (pid {pid}) stopped", file=sys.stderr)
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.engine", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            engine = start()
            print("started" if engine.started else "reused")
        elif args.action == "stop":
            print("stopped" if stop() else "not running")
        else:
            host = next((h for h in (os.environ.get("DOCKER_HOST", ""), own_socket()) if h and answers(h)), None)
            print(host or "no engine answers")
            return 0 if host else 1
    except EngineError as error:
        print(f"engine: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
