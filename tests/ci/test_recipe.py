"""Recipe tests: the serving image's recipe, run on the host.

The runtime venv is built with the builder stage's own uv command (imported from the Dagger module), the
final stage's contents are copied into a temporary tree, and the entrypoint runs from that tree with only
the environment the image and the smoke stage set, against the smoke stage's own mocks: the seeded moto S3
store and the MLflow mock from tests/smoke/. The smoke checker then checks it, as in ``dagger call smoke``.

Differences from the image, all forced by running on the host: Python 3.11 here (the image has 3.12, so the
venv measured here is the same package set for a different interpreter); the venv and the model directory
live under a temporary directory instead of /opt/venv and /models; the server binds 127.0.0.1 on a free port
(HOST, PORT) instead of 0.0.0.0:9000 in its own network namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from flight_price import main as module

from tests.services import BIN, LOOPBACK, free_port, running

pytestmark = pytest.mark.integration  # builds the runtime venv with uv and runs the entrypoint against moto

REPO: Final = Path(__file__).resolve().parents[2]
UV: Final = BIN / "uv"
MAX_VENV_MB: Final = 450
# The interpreter the project venv was made from: the host's "system" Python, as the image's is for the builder.
BASE_PYTHON: Final = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


@dataclass(frozen=True)
class ImageTree:
    """The final stage's contents, rooted in a temporary directory."""

    root: Path

    @property
    def venv(self) -> Path:
        return self.root / module.VENV.lstrip("/")

    @property
    def app_root(self) -> Path:
        return self.root / module.APP_ROOT.lstrip("/")

    @property
    def model_dir(self) -> Path:
        return self.root / module.MODEL_DIR.lstrip("/")


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def host(command: list[str]) -> list[str]:
    """A stage command (``python -m ...``) run with this interpreter, the tools container's equivalent."""
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> ImageTree:
    """Builder stage then final stage, on the host: the venv from the lock, and app/."""
    tree = ImageTree(tmp_path_factory.mktemp("image"))
    build = tree.root / "build"
    build.mkdir()
    for name in ("pyproject.toml", "uv.lock"):  # what the builder copies in
        shutil.copy2(REPO / name, build / name)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "UV_"))}
    env |= module.BUILDER_ENV | {"UV_PROJECT_ENVIRONMENT": str(tree.venv), "UV_PYTHON": BASE_PYTHON}
    subprocess.run([str(UV), *module.SERVE_VENV_SYNC[1:]], cwd=build, env=env, check=True, capture_output=True)
    subprocess.run(module.prune_test_suites(str(tree.venv)), check=True)
    subprocess.run(module.remove_uv_lock(str(tree.venv)), check=True)
    shutil.copytree(REPO / "app", tree.app_root / "app", ignore=shutil.ignore_patterns("__pycache__", "*.env"))
    tree.model_dir.mkdir()
    return tree


def test_runtime_venv_holds_the_serving_group_only_and_stays_small(image_tree: ImageTree) -> None:
    megabytes = size_mb(image_tree.venv)
    print(f"\nruntime venv (the image's payload, built on Python {sys.version_info[0]}.{sys.version_info[1]}): "
          f"{megabytes:.0f} MB; app/: {size_mb(image_tree.app_root):.2f} MB")  # fmt: skip
    assert megabytes < MAX_VENV_MB
    installed = {p.name.split("-")[0].lower() for p in image_tree.venv.glob("lib/python*/site-packages/*.dist-info")}
    assert {"fastapi", "uvicorn", "scikit_learn", "skops", "dvc", "dvc_s3"} <= installed
    assert not {"apache_airflow", "mlflow", "pandas", "pytest", "mypy", "ruff", "moto", "uv", "dagger_io"} & installed
    assert not list(image_tree.venv.glob("lib/python*/site-packages/*/tests"))
    # compiled at build time, so a read-only image does not recompile on every start
    assert list(image_tree.venv.glob("lib/python*/site-packages/sklearn/__pycache__/*.pyc"))
    assert sorted(p.name for p in image_tree.app_root.iterdir()) == ["app"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed step: a small bundle trained by tests/smoke/seed and its DVC hash."""
    out = tmp_path_factory.mktemp("seed")
    subprocess.run(host(module.seed_command(str(out))), cwd=REPO, check=True, stdout=subprocess.PIPE)
    return out


@pytest.fixture(scope="module")
def mocks(seeded: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The smoke stage's S3 store (seeded by tests/smoke/seed --serve) and MLflow mock, on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("mock-logs")
    s3_port, mlflow_port = free_port(), free_port()
    s3_url, mlflow_url = f"http://{LOOPBACK}:{s3_port}", f"http://{LOOPBACK}:{mlflow_port}"
    s3 = host(module.seed_command(str(seeded), serve=f"{LOOPBACK}:{s3_port}"))
    mlflow = host(module.mock_mlflow_command(str(seeded), LOOPBACK, mlflow_port))
    with (
        running(s3, f"{s3_url}/moto-api/", timeout=120, log=logs / "s3.log"),
        running(mlflow, f"{mlflow_url}/health", timeout=30, log=logs / "mlflow.log"),
    ):
        yield s3_url, mlflow_url


def test_entrypoint_serves_from_the_image_tree_with_only_the_smoke_env(
    image_tree: ImageTree, seeded: Path, mocks: tuple[str, str], tmp_path: Path
) -> None:
    s3_url, mlflow_url = mocks
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    image_env = module.RUNTIME_ENV | {"VIRTUAL_ENV": str(image_tree.venv), "MODEL_DIR": str(image_tree.model_dir)}
    env = {
        "PATH": f"{image_tree.venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        **image_env,
        **module.smoke_env(s3_url, mlflow_url),
        **module.SMOKE_CREDENTIALS,
        "HOST": LOOPBACK,
        "PORT": str(port),
    }
    # `env -i` so the server sees this environment and nothing of the test runner's; -C: the image's workdir
    entrypoint = [
        "env", "-i", "-C", str(image_tree.app_root), *(f"{k}={v}" for k, v in env.items()),
        str(image_tree.venv / "bin" / "python"), *module.ENTRYPOINT[1:],
    ]  # fmt: skip
    log = tmp_path / "entrypoint.log"
    url = f"http://{LOOPBACK}:{port}"
    with running(entrypoint, f"{url}/health/live", timeout=120, log=log):
        checker = subprocess.run(
            host(module.checker_command(url, str(seeded))), cwd=REPO, capture_output=True, text=True, timeout=300
        )
        # the checker fails on a mismatch: here the registry view names another model than the one expected
        mismatch = subprocess.run(
            [*host(module.checker_command(url, str(seeded))), "--model-name", "another-model"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    print(checker.stdout)
    assert checker.returncode == 0, f"{checker.stdout}\n{checker.stderr}\n--- entrypoint log ---\n{log.read_text()}"
    assert "checks passed" in checker.stdout
    assert mismatch.returncode == 1 and "FAIL /model registry view another-model@champion" in mismatch.stdout
    assert (image_tree.model_dir / "bundle" / "metadata.json").is_file()  # pulled into MODEL_DIR by DVC
    assert module.SMOKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log.read_text()
