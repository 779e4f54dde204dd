"""The peers ``bench.serve`` measures this server against, each started on the same bundle, on 127.0.0.1, with
one worker process serving, in each of the setups its maintainers document for the scenarios measured (the
bench takes each peer's best setup per scenario):

- BentoML (pinned): without adaptive batching (its default) and with it on the single-record endpoint;
  MLServer's scikit-learn runtime (pinned): ``parallel_workers=0``, its default inference pool, and each of the two
  with its adaptive batching. Each in its own virtual environment under
  ``bench/.venvs/``, made with uv from the package index (not from the project's lock), holding the
  scikit-learn, skops and numpy versions the project's ``uv.lock`` pins, so the bundle loads as it does here.
  The repository root is on their ``PYTHONPATH``: the bundle's transformer is ``app.contract.features``.
- The floor (``bench.floor``): a minimal FastAPI endpoint in the project's own environment.

The peers' service files import packages the project does not have, so they are kept here as text and
written into the benchmark's working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from app.contract.bundle import Bundle, Metadata
from tests.harness.services import LOOPBACK, free_port, running

ROOT: Final = Path(__file__).resolve().parents[1]
VENVS: Final = ROOT / "bench" / ".venvs"
V2_MODEL: Final = "flight-price"  # the model's name in MLServer's repository (the project's MODEL_NAME default)
# What the peers' environments must share with the project's lock for the bundle to load identically.
BUNDLE_LIBRARIES: Final = ("scikit-learn", "skops", "numpy")
# Telemetry off wherever a server has it: the machine reaches nothing but the package index.
NO_TELEMETRY: Final = {"DO_NOT_TRACK": "true", "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}

Answers = Callable[[bytes], list[float]]


@dataclass(frozen=True)
class Server:
    """A server under load: where to send which bodies, and how to read its predictions."""

    key: str  # the name ``--servers`` takes
    name: str
    url: str  # base URL
    pid: int
    log: Path
    start_s: float  # launch to its ready URL's first 2xx
    single_path: str
    batch_path: str
    single_bodies: list[bytes]
    batch_bodies: list[bytes]
    single_answers: Answers  # response body -> predictions
    batch_answers: Answers
    predicts: bool = True  # False for the floor: its constant answer is not checked
    extra: dict[str, tuple[str, list[bytes], Answers]] = field(default_factory=dict)  # scenario -> path, bodies


@dataclass(frozen=True)
class Peer:
    key: str
    name: str
    venv: str  # directory under bench/.venvs/
    requirements: tuple[str, ...]


BENTOML: Final = Peer("bentoml", "BentoML 1.4.40", "bentoml-1.4.40", ("bentoml==1.4.40",))
# MLServer 1.7.1's inference worker dies under uvloop 0.23 ("There is no current event loop").
MLSERVER: Final = Peer(
    "mlserver",
    "MLServer 1.7.1",
    "mlserver-1.7.1",
    ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0"),
)


class PeerUnavailable(Exception):
    """A peer's environment could not be made (the message says why)."""


def lock_versions(names: tuple[str, ...] = BUNDLE_LIBRARIES) -> dict[str, str]:
    """The versions ``uv.lock`` resolves for this interpreter (the entry whose resolution markers hold here)."""
    from packaging.markers import Marker

    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    found: dict[str, str] = {}
    for package in lock["package"]:
        markers = package.get("resolution-markers")
        if package["name"] in names and (not markers or any(Marker(m).evaluate() for m in markers)):
            found[package["name"]] = package["version"]
    if missing := sorted(set(names) - set(found)):
        raise PeerUnavailable(f"uv.lock pins no version of {', '.join(missing)} for this interpreter")
    return found


def _uv() -> list[str]:
    uv = shutil.which("uv")
    return [uv] if uv else [sys.executable, "-m", "uv"]


# The image's serving venv: ci/src/flight_price/main.py's SERVE_VENV_SYNC (a test checks they agree), compiled as
# there. This server and the floor run from it, as shipped: the project's own venv holds pandas (which scikit-learn
# imports when present), Airflow and MLflow.
SERVE_VENV_SYNC: Final = ("sync", "--frozen", "--no-dev", "--only-group", "serve", "--no-install-project")


def _run_uv(args: list[str], env: dict[str, str] | None = None) -> None:
    """Run a uv command (from the repository root); ``PeerUnavailable`` with its last lines if it fails."""
    try:
        completed = subprocess.run(args, capture_output=True, text=True, timeout=1200, check=False, cwd=ROOT, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{' '.join(args[:3])}: {exc}") from None
    if completed.returncode != 0:
        tail = " | ".join((completed.stderr or completed.stdout).strip().splitlines()[-6:])
        raise PeerUnavailable(f"uv exited {completed.returncode}: {tail}")


def compiled_walk(log: Callable[[str], None]) -> Path:
    """This machine's compiled walk of the serving form, built as the serving image's build makes it
    (``app.contract.walk_build``), so this server is measured as the image serves."""
    from app.contract.walk_build import build_here

    library = build_here()
    log(f"built the serving form's compiled walk, {library}")
    return library


def serving_venv(log: Callable[[str], None]) -> Path:
    """The ``bin`` directory of ``bench/.venvs/serve``: the image's serving venv, synced from the lock."""
    venv = VENVS / "serve"
    started = time.perf_counter()
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    _run_uv([*_uv(), *SERVE_VENV_SYNC, "--compile-bytecode", "--quiet"], env)
    seconds = time.perf_counter() - started
    log(f"this server and the floor: {venv.relative_to(ROOT)} synced as the image's ({seconds:.1f}s)")
    return venv / "bin"


def site_packages(python: Path) -> Path:
    """The site-packages directory of ``python``'s environment."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def compile_bytecode(python: Path, log: Callable[[str], None]) -> None:
    """Compile the site-packages of ``python``'s environment, as every venv here is: a server's start then reads
    bytecode instead of compiling its imports (``PYTHONDONTWRITEBYTECODE`` may be set, so nothing is cached)."""
    started = time.perf_counter()
    site = site_packages(python)
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", str(site)], capture_output=True, check=False)
    log(f"{site}: bytecode compiled ({time.perf_counter() - started:.1f}s)")


def install(peer: Peer, log: Callable[[str], None]) -> Path:
    """The peer's venv (made if missing) with its pinned requirements and the lock's bundle libraries; returns
    its ``bin`` directory. Raises ``PeerUnavailable`` with uv's last lines when it cannot be made."""
    venv = VENVS / peer.venv
    python = venv / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in lock_versions().items()]
    interpreter = f"{sys.version_info.major}.{sys.version_info.minor}"
    started = time.perf_counter()
    steps = [] if python.exists() else [[*_uv(), "venv", str(venv), "--python", interpreter, "--quiet"]]
    install_args = ["pip", "install", "--quiet", "--compile-bytecode", "--python", str(python)]
    steps.append([*_uv(), *install_args, *peer.requirements, *pins])
    for args in steps:
        _run_uv(args)
    log(f"{peer.name}: {venv.relative_to(ROOT)} ready with {', '.join([*peer.requirements, *pins])} "
        f"({time.perf_counter() - started:.1f}s)")  # fmt: skip
    return venv / "bin"


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every server gets: the repository on PYTHONPATH (the bundle's transformer), telemetry off."""
    return {"PYTHONPATH": str(ROOT), **NO_TELEMETRY, **(extra or {})}


@contextmanager
def started(
    args: list[str], ready_url: str, env: dict[str, str], log: Path, timeout: float = 180
) -> Iterator[tuple[int, float]]:
    """``tests.harness.services.running``, yielding the process id and the seconds from launch to the ready
    URL's 2xx."""
    begun = time.perf_counter()
    with running(args, ready_url, env=env, timeout=timeout, log=log) as process:
        yield process.pid, time.perf_counter() - begun


def _json(body: bytes) -> Any:
    return json.loads(body)


# --- the floor ------------------------------------------------------------------------------------------------


@contextmanager
def floor_server(
    serve_bin: Path, bundle_dir: Path, workdir: Path, singles: list[bytes], batches: list[bytes]
) -> Iterator[Server]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [
        str(serve_bin / "uvicorn"), "bench.floor:app", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
        "--no-access-log",
    ]  # fmt: skip
    log = workdir / "floor.log"
    with started(args, f"{url}/health/ready", peer_env({"BUNDLE_DIR": str(bundle_dir)}), log) as (pid, start_s):
        yield Server(
            "floor", "floor (FastAPI, validate only)", url, pid, log, start_s,
            "/predict", "/predict/batch", singles, batches, lambda b: [], lambda b: [], predicts=False,
        )  # fmt: skip


# --- BentoML --------------------------------------------------------------------------------------------------

# Two setups, one worker process each (``@bentoml.service(workers=1)``), both launched with ``bentoml serve``
# (production mode, its default since 1.0.20; ``--development`` is not given) and BentoML's default logging (one
# access-log line per request, as this server writes its own request line; turning it off,
# ``logging={"access": {"enabled": False}}``, changed nothing beyond the spread: c1 106-124 req/s against 91-134):
# - ``bentoml-nobatch``: ``@bentoml.api`` as it comes, each request predicted on its own. BentoML's docs (Get started >
#   Adaptive batching): "By default, adaptive batching is disabled"; it is the setup for one record's latency.
# - ``bentoml-batch``: the same docs' ``@bentoml.api(batchable=True, max_batch_size=..., max_latency_ms=...)`` on
#   the single-record endpoint, the list of records being the batch dimension.
# Both have the same unbatched ``predict_batch`` endpoint for 1,000-record batches (a batchable endpoint would cut
# them into max_batch_size pieces).
# Why the adaptive-batching setup was measured at 19 req/s for single records at c1: its dispatcher holds a
# request while ``n * (wait of the newest + 1 ms + per-record cost) <= 0.95 x the mean wait of its last 50
# batches``, and refreshes that mean at most every 5 s. After the warm-up at concurrency 8 (or after c32) the mean
# wait is that of queued requests, tens of ms, and a lone request at c1 is then held for most of it: it decays by
# about 5% per refresh (measured here alone: c1 98-142 req/s after 5 s at c8, 29.5 req/s after 4 s at c32, p50 35
# ms). The setup without batching does not carry the load before it; it is bounded by Bundle.predict on one
# record (3.6-5.3 ms in process here) plus BentoML's own HTTP path (about 3.5 ms: h11 and asyncio's loop, as
# ``pip install bentoml`` brings neither httptools nor uvloop), about 113 req/s at c1 in a full run.
# Batching parameters: BentoML's defaults (max_batch_size 100, max_latency_ms 60,000). Tried alone on a 20k-row
# bundle, max_latency_ms 1,000, 100 and 20 changed nothing beyond the run-to-run spread (c1 81-95 req/s, c8
# 387-437, c32 447-529), and 20 made it refuse requests (503) at c32.
BENTOML_MAX_BATCH_SIZE: Final = 100
BENTOML_MAX_LATENCY_MS: Final = 60_000
# The service file, written into the benchmark's working directory (it imports bentoml, which the project lacks).
BENTOML_SERVICE: Final = '''"""BentoML service for bench.serve: the bundle (BENCH_BUNDLE_DIR) loaded with the
project's own load_bundle, records validated with the project's pydantic record model, predictions from
Bundle.predict."""
import os
from pathlib import Path

import bentoml

from app.contract.bundle import load_bundle, read_metadata
from app.model.schema import RecordSchema

BUNDLE_DIR = Path(os.environ["BENCH_BUNDLE_DIR"])
SCHEMA = RecordSchema.from_metadata(read_metadata(BUNDLE_DIR), max_records=10_000)
Record = SCHEMA.record_model
BATCHING = os.environ["BENCH_BENTOML_BATCHING"] == "1"
MAX_BATCH_SIZE = int(os.environ["BENCH_BENTOML_MAX_BATCH_SIZE"])
MAX_LATENCY_MS = int(os.environ["BENCH_BENTOML_MAX_LATENCY_MS"])


@bentoml.service(workers=1)
class FlightPrice:
    def __init__(self) -> None:
        self.bundle = load_bundle(BUNDLE_DIR)

    def _predict(self, records):
        return self.bundle.predict(SCHEMA.columns([tuple(r.__dict__.values()) for r in records])).tolist()

    if BATCHING:
        # adaptive batching: one record per request, batched by BentoML's dispatcher
        @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
        def predict(self, records: list[Record]) -> list[float]:
            return self._predict(records)
    else:
        # BentoML's default API: each request predicted as it comes
        @bentoml.api
        def predict(self, records: list[Record]) -> list[float]:
            return self._predict(records)

    @bentoml.api
    def predict_batch(self, records: list[Record]) -> list[float]:
        return self._predict(records)
'''


@contextmanager
def bentoml_server(
    bin_dir: Path,
    bundle_dir: Path,
    workdir: Path,
    records: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]],
    batching: bool,
) -> Iterator[Server]:
    """BentoML serving the bundle, with ``batching`` its adaptive batching on the single-record endpoint."""
    key = "bentoml-batch" if batching else "bentoml-nobatch"
    service_dir = workdir / key
    service_dir.mkdir(exist_ok=True)
    (service_dir / "bench_bentoml_service.py").write_text(BENTOML_SERVICE)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [
        str(bin_dir / "bentoml"), "serve", "bench_bentoml_service:FlightPrice", "--working-dir", str(service_dir),
        "--host", LOOPBACK, "--port", str(port),
    ]  # fmt: skip
    env = peer_env(
        {
            "PYTHONPATH": f"{ROOT}{os.pathsep}{service_dir}",
            "BENCH_BUNDLE_DIR": str(bundle_dir),
            "BENCH_BENTOML_BATCHING": "1" if batching else "0",
            "BENCH_BENTOML_MAX_BATCH_SIZE": str(BENTOML_MAX_BATCH_SIZE),
            "BENCH_BENTOML_MAX_LATENCY_MS": str(BENTOML_MAX_LATENCY_MS),
            "BENTOML_HOME": str(workdir / "bentoml-home"),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        }
    )
    log = workdir / f"{key}.log"
    singles, batches = records
    name = f"{BENTOML.name} (" + ("adaptive batching" if batching else "no batching") + ")"
    with started(args, f"{url}/readyz", env, log) as (pid, start_s):
        yield Server(
            key, name, url, pid, log, start_s,
            "/predict", "/predict_batch",
            [_encode({"records": [r]}) for r in singles], [_encode({"records": b}) for b in batches],
            _json, _json,
        )  # fmt: skip


# --- MLServer -------------------------------------------------------------------------------------------------


def v2_request(metadata: Metadata, rows: list[dict[str, Any]], content_types: bool = True) -> bytes:
    """An Open Inference Protocol (V2) request: one input tensor per feature, ``rows`` long. Numbers as FP64,
    categories and dates as BYTES; with ``content_types``, MLServer's hints (the request as a pandas frame,
    BYTES as str) that its scikit-learn runtime needs to see the columns as the transformer does."""
    inputs: list[dict[str, Any]] = []
    for feature in metadata.features:
        values = [row[feature.name] for row in rows]
        if feature.kind == "numeric":
            inputs.append({"name": feature.name, "shape": [len(rows)], "datatype": "FP64", "data": values})
        else:
            tensor = {"name": feature.name, "shape": [len(rows)], "datatype": "BYTES", "data": [str(v) for v in values]}
            inputs.append({**tensor, "parameters": {"content_type": "str"}} if content_types else tensor)
    return _encode({"parameters": {"content_type": "pd"}, "inputs": inputs} if content_types else {"inputs": inputs})


def v2_answers(body: bytes) -> list[float]:
    """The first output tensor's data, flattened (MLServer answers shape [n, 1])."""
    data = json.loads(body)["outputs"][0]["data"]
    return [float(x[0]) if isinstance(x, list) else float(x) for x in data]


# MLServer's setups, as its docs (User Guide > Parallel Inference, > Adaptive Batching) and its settings describe
# them: ``parallel_workers`` in settings.json (0: inference in the server process; left out: its default, an
# inference pool of one worker process fed over a queue in 1.7.1, settings.py's DEFAULT_PARALLEL_WORKERS), and
# ``max_batch_size`` / ``max_batch_time`` in model-settings.json for adaptive batching (off by default). MLServer
# loads the batching on top of the inference pool (server.py: ``load_batching`` after the pool's ``load_model``), so
# the two combine: ``mlserver-default-batch``. Its ``debug`` setting is left at its default (true: uvicorn's
# access log on).
# The adaptive batching's parameters: max_batch_time 1 ms gave the best single-record figures of 1, 2 and 5 ms here
# (c1 152, c8 545, c32 944 req/s alone on the 200k-row bundle).
MLSERVER_MAX_BATCH_SIZE: Final = 32
MLSERVER_MAX_BATCH_TIME_S: Final = 0.001


def write_mlserver_model(bundle: Bundle, repository: Path, batching: bool = False) -> None:
    """The bundle's full pipeline (transformer + model) as the joblib file MLServer's scikit-learn runtime loads:
    ``Pipeline.predict`` is ``model.predict(transformer.transform(X))``, what ``Bundle.predict`` does."""
    import joblib  # type: ignore[import-untyped]
    from sklearn.pipeline import Pipeline

    model_dir = repository / V2_MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(Pipeline([("transformer", bundle.transformer), ("model", bundle.model)]), model_dir / "model.joblib")
    settings: dict[str, Any] = {
        "name": V2_MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    if batching:
        settings |= {"max_batch_size": MLSERVER_MAX_BATCH_SIZE, "max_batch_time": MLSERVER_MAX_BATCH_TIME_S}
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


@contextmanager
def mlserver_server(
    bin_dir: Path,
    bundle: Bundle,
    workdir: Path,
    records: tuple[list[dict[str, Any]], list[list[dict[str, Any]]]],
    parallel_workers: int | None,
    batching: bool = False,
) -> Iterator[Server]:
    """MLServer with ``parallel_workers`` (None: its default, left out of settings.json), with ``batching`` its
    adaptive batching."""
    variant = ("default" if parallel_workers is None else f"p{parallel_workers}") + ("-batch" if batching else "")
    repository = workdir / f"mlserver-{variant}"
    write_mlserver_model(bundle, repository, batching)
    port = free_port()
    settings: dict[str, Any] = {
        "host": LOOPBACK, "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        # by default in the working directory
        "environments_dir": str(repository / ".envs"), "metrics_dir": str(repository / ".metrics"),
    }  # fmt: skip
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (repository / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    url = f"http://{LOOPBACK}:{port}"
    env = peer_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    log = workdir / f"mlserver-{variant}.log"
    singles, batches = records
    workers = "default parallel_workers" if parallel_workers is None else f"parallel_workers={parallel_workers}"
    if batching:
        workers += f", adaptive batching {MLSERVER_MAX_BATCH_SIZE} / {MLSERVER_MAX_BATCH_TIME_S * 1000:g} ms"
    args = [str(bin_dir / "mlserver"), "start", str(repository)]
    with started(args, f"{url}/v2/models/{V2_MODEL}/ready", env, log) as (pid, start_s):
        yield Server(
            f"mlserver-{variant}", f"MLServer 1.7.1 ({workers})", url, pid, log, start_s,
            f"/v2/models/{V2_MODEL}/infer", f"/v2/models/{V2_MODEL}/infer",
            [v2_request(bundle.metadata, [r]) for r in singles], [v2_request(bundle.metadata, b) for b in batches],
            v2_answers, v2_answers,
        )  # fmt: skip


def _encode(x: Any) -> bytes:
    return json.dumps(x, separators=(",", ":")).encode()
