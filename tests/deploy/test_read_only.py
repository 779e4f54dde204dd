"""The serving image serves with a read-only root filesystem and only MODEL_DIR and /tmp writable, as the
Kubernetes Deployment runs it (deploy/kubernetes: readOnlyRootFilesystem, emptyDirs at /models and /tmp).

No container engine runs on the machines this is checked on, so the image's file tree is built on the host by
the recipe test's own fixtures (``tests/ci/test_recipe.py``: the builder stage's uv command, the final stage's
copies) and run the way a container runtime runs the image under that pod spec: in a private mount namespace
(``unshare``), with the tree itself as the root (``chroot``) and read-only, the host's /usr and /etc and the
interpreter the venv was built from bound in read-only (with /etc/passwd and /etc/group holding the image's
user, as ``useradd`` made them in the image), /dev, /proc and /sys as in a container (so /dev/shm stays writable,
as in any pod), a read-only credentials file where the Secret volume goes, and writable bind mounts at /models
and /tmp only; as uid and
gid 10001 with no capabilities and no new privileges (``setpriv``); with the Deployment's own environment (its
ConfigMap and env, the S3 keys only in the file AWS_SHARED_CREDENTIALS_FILE names) and no HOME directory at all.
It runs against the smoke stage's mocks, and the smoke checker checks its predictions.

Differences from a pod, forced by the host: PORT and HOST are the test's (the server shares the host's network
with the mocks instead of a network namespace of its own), the registry and remote are the mocks', the MLflow
mock needs no credentials, and the interpreter is the host's Python 3.11 at its host path, not the image's 3.12.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from flight_price import main as module

from tests.ci.test_recipe import ImageTree, host
from tests.deploy.manifests import REPO, Manifests, render
from tests.services import LOOPBACK, free_port, running

pytestmark = pytest.mark.integration  # builds the runtime venv and runs the entrypoint against the mocks

UID: Final = int(module.APP_UID)
WRITABLE: Final = (module.MODEL_DIR, "/tmp")
HOME: Final = f"/home/{module.APP_USER}"  # the image's user's home: not even created here
# The host paths bound into the new root read-only (the image's own /usr and /etc stand in their place).
HOST_DIRECTORIES: Final = ("/usr", "/etc")
CONTAINER_DIRECTORIES: Final = ("/dev", "/proc", "/sys")  # as any container runtime gives them
# Inside the mount namespace, as root: assemble the root, make it read-only, then become uid 10001 in it.
ASSEMBLE: Final = r"""
set -euo pipefail
root=$1 credentials=$2 secret_dir=$3 base=$4 model_dir=$5 uid=$6 users=$7; shift 7
mount --bind "$root" "$root"
for dir in /usr /etc "$base"; do mount --rbind "$dir" "$root$dir"; mount -o remount,bind,ro "$root$dir"; done
for file in "$users"/*; do
    mount --bind "$file" "$root/etc/${file##*/}"; mount -o remount,bind,ro "$root/etc/${file##*/}"
done
for dir in /dev /proc; do mount --rbind "$dir" "$root$dir"; done
mount --rbind /sys "$root/sys"; mount -o remount,bind,ro "$root/sys"
mount --bind "$credentials" "$root$secret_dir"; mount -o remount,bind,ro "$root$secret_dir"
for dir in "$model_dir" /tmp; do mount --bind "$root$dir" "$root$dir"; done
mount -o remount,bind,ro "$root"
exec chroot "$root" setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --bounding-set=-all \
    --no-new-privs -- "$@"
"""


# Run inside the new root: try to create a file in each directory given; print the outcome for each.
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


def mount_namespaces_work() -> str | None:
    """Why this cannot run here (not root, or no mount namespaces), or None."""
    if os.geteuid() != 0:
        return "needs root to make a mount namespace and chroot (CI and the sessions here run as root)"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind / / && mount -o remount,bind,ro /",
        ],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"mount namespaces refused here: {probe.stderr.strip()}"


def listing(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` but ``skip`` with its mode, size and modification time."""
    found = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if Path(directory, name) not in skip]
        for name in [*subdirectories, *files]:
            info = Path(directory, name).lstat()
            found[os.path.relpath(Path(directory, name), root)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def image_users(directory: Path) -> Path:
    """/etc/passwd and /etc/group with the user and group the image adds (``module.CREATE_APP_USER``): DVC asks
    for the user's name (``getpass.getuser``), which a uid without an entry has not.
    """
    directory.mkdir()
    user = module.APP_USER
    (directory / "passwd").write_text(Path("/etc/passwd").read_text() + f"{user}:x:{UID}:{UID}::{HOME}:/bin/sh\n")
    (directory / "group").write_text(Path("/etc/group").read_text() + f"{user}:x:{UID}:\n")
    return directory


@dataclass(frozen=True)
class ImageRoot:
    """The image's tree laid out as a root filesystem, and what the pod mounts into it."""

    tree: ImageTree
    base: str  # the interpreter the venv links to, bound in at its own path
    users: Path  # passwd and group as the image has them
    secret: Path  # the host directory standing for the Secret volume
    secret_dir: str  # where the Deployment mounts it
    credentials_file: str  # AWS_SHARED_CREDENTIALS_FILE, inside it

    @property
    def writable(self) -> set[Path]:
        return {self.tree.root / directory.lstrip("/") for directory in WRITABLE}

    def command(self, uid: int, *args: str) -> list[str]:
        """``args`` run in a private mount namespace, chrooted into the read-only tree, as ``uid`` with no
        capabilities."""
        return [
            "unshare", "--mount", "--propagation", "private", "bash", "-c", ASSEMBLE, "assemble",
            str(self.tree.root), str(self.secret), self.secret_dir, self.base, module.MODEL_DIR, str(uid),
            str(self.users), *args,
        ]  # fmt: skip


@pytest.fixture(scope="module")
def image_root(image_tree: ImageTree, tmp_path_factory: pytest.TempPathFactory) -> ImageRoot:
    """The tree as the image's root: mode 755 as any /, mount points, the usual symlinks, the two writable paths
    as emptyDirs are (mode 777, group 10001), and the credentials file the Deployment names."""
    if reason := mount_namespaces_work():
        pytest.fail(reason)
    credentials_file = Manifests(render()[0]).environment()["AWS_SHARED_CREDENTIALS_FILE"]
    assert credentials_file is not None
    secret_dir, _, file_name = credentials_file.rpartition("/")
    work = tmp_path_factory.mktemp("image-root")
    secret = work / "secret"
    secret.mkdir()
    keys = module.SMOKE_CREDENTIALS
    (secret / file_name).write_text(
        f"[default]\naws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}\n"
    )
    os.chown(secret / file_name, 0, UID)  # defaultMode 0440, group fsGroup, as the Secret volume has it
    (secret / file_name).chmod(0o440)
    root = ImageRoot(
        image_tree, os.path.realpath(sys.base_prefix), image_users(work / "users"), secret, secret_dir, credentials_file
    )
    image_tree.root.chmod(0o755)  # a fresh temporary directory is 700: uid 10001 could not even reach /usr
    for directory in (*HOST_DIRECTORIES, *CONTAINER_DIRECTORIES, root.base, secret_dir, *WRITABLE):
        (image_tree.root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path("/", name).is_symlink():  # a merged-/usr Debian, like the image's base
            (image_tree.root / name).symlink_to(os.readlink(Path("/", name)))
    for path in root.writable:  # emptyDirs: world-writable, group fsGroup
        os.chown(path, 0, UID)
        path.chmod(0o777)
    assert not (image_tree.root / HOME.lstrip("/")).exists()
    return root


@pytest.mark.parametrize("uid", [UID, 0], ids=["uid 10001", "uid 0 without capabilities"])
def test_only_model_dir_and_tmp_are_writable(image_root: ImageRoot, uid: int) -> None:
    """The layout itself: a file can be created in /models and /tmp and nowhere else, even by uid 0 (the owner of
    everything else) once it has no capabilities; read-only mounts refuse it (EROFS), not only permissions."""
    directories = ["/", module.APP_ROOT, f"{module.APP_ROOT}/app", module.VENV, "/etc", "/usr", image_root.base,
                   image_root.secret_dir, HOME, *WRITABLE]  # fmt: skip
    probe = subprocess.run(
        image_root.command(uid, f"{module.VENV}/bin/python", "-I", "-c", WRITE_PROBE, *directories),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    outcome = dict(line.rsplit(" ", 1) for line in probe.stdout.splitlines())
    print(f"\nas uid {uid}: {outcome}")
    assert {path for path, result in outcome.items() if result == "writable"} == set(WRITABLE)
    assert outcome[HOME] == "ENOENT"  # no home directory at all
    refused = {result for path, result in outcome.items() if path not in {*WRITABLE, HOME}}
    assert refused == {"EROFS"}  # the mounts refuse, whatever the permissions
    assert all(not list(path.iterdir()) for path in image_root.writable)  # the probe left nothing behind


def test_the_image_serves_with_a_read_only_root_and_two_writable_paths(
    image_root: ImageRoot, seeded: Path, mocks: tuple[str, str], tmp_path: Path
) -> None:
    manifests = Manifests(render()[0])
    s3_url, mlflow_url = mocks
    port = free_port()
    tree = image_root.tree
    before = listing(tree.root, image_root.writable)

    # The Deployment's environment (literal values: ConfigMap and env), the image's, and the test's overrides.
    deployment_env = {name: value for name, value in manifests.environment().items() if value is not None}
    assert deployment_env["MODEL_DIR"] == module.MODEL_DIR and "MODEL_REFRESH_S" in deployment_env
    assert deployment_env["AWS_SHARED_CREDENTIALS_FILE"] == image_root.credentials_file
    env = {
        **deployment_env,
        **module.RUNTIME_ENV,  # VIRTUAL_ENV, MODEL_DIR, PYTHONDONTWRITEBYTECODE, ... as the image sets them
        "PATH": f"{module.VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": HOME,
        **module.smoke_env(s3_url, mlflow_url),
        "HOST": LOOPBACK,
        "PORT": str(port),
    }
    assert not set(module.SMOKE_CREDENTIALS) & set(env)  # the keys are in the file only
    server = [
        "env", "-i", "-C", module.APP_ROOT, *(f"{k}={v}" for k, v in env.items()),
        f"{module.VENV}/bin/python", *module.ENTRYPOINT[1:],
    ]  # fmt: skip
    log = tmp_path / "entrypoint.log"
    url = f"http://{LOOPBACK}:{port}"
    with running(image_root.command(UID, *server), f"{url}/health/live", timeout=180, log=log) as process:
        checker = subprocess.run(
            host(module.checker_command(url, str(seeded))), cwd=REPO, capture_output=True, text=True, timeout=300
        )
    output = log.read_text()
    print(f"{checker.stdout}\n--- entrypoint log ---\n{output}")
    assert checker.returncode == 0, f"{checker.stdout}\n{checker.stderr}\n--- entrypoint log ---\n{output}"
    assert "checks passed" in checker.stdout
    assert process.returncode == 0  # SIGTERM drained and exited 0, read-only root and all

    # Nothing outside the two writable paths changed, and nothing tried and failed to write there.
    assert listing(tree.root, image_root.writable) == before
    assert "Read-only file system" not in output and "Permission denied" not in output
    assert not (tree.root / HOME.lstrip("/")).exists()
    model_dir = tree.root / module.MODEL_DIR.lstrip("/")
    assert (model_dir / "bundle" / "metadata.json").is_file()
    owners = {path.stat().st_uid for path in model_dir.rglob("*")}
    assert owners == {UID}, owners  # written by the server's user, nobody else
    tmp = sorted(str(path.relative_to(tree.root)) for path in (tree.root / "tmp").rglob("*"))
    print(f"written to /tmp: {tmp or 'nothing'}; to {module.MODEL_DIR}: {sum(1 for _ in model_dir.rglob('*'))} paths")
    assert module.SMOKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output
    assert stat.S_IMODE((image_root.secret / image_root.credentials_file.rpartition("/")[2]).stat().st_mode) == 0o440
