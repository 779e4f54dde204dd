"""This prediction server against its peers on the same bundle, with the floor an HTTP endpoint sets.

Starts, on 127.0.0.1 with one worker process each, on the same fitted bundle:

- ``this``: ``uvicorn app.main:app`` serving the bundle;
- ``floor``: ``bench.floor``, a minimal FastAPI endpoint validating the same record with the same pydantic
  models and answering a constant (batches: parse and validate only);
- ``bentoml-nobatch`` and ``bentoml-batch``: BentoML 1.4.40 without adaptive batching (its default) and with it on
  the single-record endpoint (``bench.peers``);
- ``mlserver-p0``, ``mlserver-default``, ``mlserver-p0-batch`` and ``mlserver-default-batch``: MLServer 1.7.1's
  scikit-learn runtime with ``parallel_workers=0``, with its default (an inference pool of one worker process),
  and each of the two with its adaptive batching (32 requests / 1 ms), fed V2 (Open Inference Protocol) requests,
  one input tensor per column;
- ``mlflow``: the same transformer + model as one scikit-learn Pipeline logged with ``mlflow.sklearn.log_model``
  (in a temporary tracking store) and served by ``mlflow models serve --env-manager local``.

BentoML and MLServer run from their own virtual environments under ``bench/.venvs/``, made with uv on the first
run (a peer that cannot be installed or started is reported as such). Every server's answers are checked against
``Bundle.predict`` before it is measured. Then the same bounded load (wrk): single records at concurrency 1, 8
and 32; 1,000-record batches at concurrency 4 (and V2 columnar 1,000-record batches for this server, when it
answers ``GET /v2/models/{name}``), the server order rotated and reversed between scenarios; a run during
which other processes on the machine took more than 10% of a core is measured again (at most 4 times). Prints
requests/s, p50, p99, errors, worker RSS, what differs between the servers, each peer's setup taken per scenario
(its best: the highest throughput, and apart the lowest p99, among its setups that answered every request), the
ratios to the best peer's best setup and to MLflow, and the targets as MET/MISS. The in-process figures are
``Bundle.predict`` and the server's predictor.

Usage: ``uv run python -m bench.serve [--bundle DIR | --rows 200000] [--duration 8] [--servers this,floor,...]``
Writes ``bench/results/serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from app.contract.bundle import TRUSTED_TYPES, Bundle, load_bundle, load_serving_bundle
from app.contract.connection import DEFAULT_MODEL_NAME
from app.contract.serving_form import probe_columns
from bench.load import LoadResult, available_generator, run_load
from bench.peers import (
    BENTOML,
    MLSERVER,
    ROOT,
    Answers,
    Peer,
    PeerUnavailable,
    Server,
    bentoml_server,
    compile_bytecode,
    compiled_walk,
    floor_server,
    install,
    lock_versions,
    mlserver_server,
    peer_env,
    serving_venv,
    started,
    v2_answers,
    v2_request,
)
from tests.harness.services import BIN, LOOPBACK, free_port

BATCH_ROWS: Final = 1000
DISTINCT_RECORDS: Final = 256
CHECKED_RECORDS: Final = 32  # single records sent one by one to check each server's answers
# A measured run during which other processes took more than this (% of one core) is measured again, at most
# ATTEMPTS times in all: the machine may be shared.
OTHER_CPU_LIMIT: Final = 10.0
ATTEMPTS: Final = 4
RETRY_AFTER_S: Final = 30.0
# Answers must equal Bundle.predict's: bit-identical is reported; beyond this relative difference a server fails.
TOLERANCE: Final = 1e-12

THIS, FLOOR, MLFLOW = "this", "floor", "mlflow"
BENTOMLS: Final = ("bentoml-nobatch", "bentoml-batch")
MLSERVERS: Final = ("mlserver-p0", "mlserver-default", "mlserver-p0-batch", "mlserver-default-batch")
# Each peer and its setups: a peer's figure in a scenario is its best setup's in that run.
PEERS: Final[dict[str, tuple[str, ...]]] = {"bentoml": BENTOMLS, "mlserver": MLSERVERS, MLFLOW: (MLFLOW,)}
SERVER_KEYS: Final = (THIS, FLOOR, *BENTOMLS, *MLSERVERS, MLFLOW)
PEER_KEYS: Final = tuple(key for setups in PEERS.values() for key in setups)
ALIASES: Final = {"bentoml": BENTOMLS, "mlserver": MLSERVERS, "peers": PEER_KEYS, "all": SERVER_KEYS}
V2_SCENARIO: Final = "v2batch1000 c4"

# What a reader needs to judge the comparison; processes, threads and log lines are measured on top of it.
DIFFERENCES: Final[dict[str, tuple[str, str, str]]] = {
    THIS: (
        "record as JSON body; batch {records: [...]}",
        "pydantic record model from the bundle schema: types, limits, categories, real dates, no extra fields",
        "uvicorn; the serving form's compiled walk, on the event loop up to 4,096 rows; adaptive micro-batching, "
        "load shedding, metrics; app's own request log line",
    ),
    FLOOR: (
        "same bodies as this server",
        "same pydantic models as this server; answers a constant, predicts nothing",
        "uvicorn --no-access-log",
    ),
    "bentoml-nobatch": (
        "{records: [record]}; batch {records: [...]}",
        "same pydantic record model (app.model.schema) through BentoML's IO",
        "each request predicted on its own (BentoML's default API, one thread); access log on",
    ),
    "bentoml-batch": (
        "{records: [record]}; batch {records: [...]}",
        "same pydantic record model (app.model.schema) through BentoML's IO",
        "adaptive batching on single records (max_batch_size 100, max_latency_ms 60,000: its defaults; its learned "
        "wait carries over from the load before); batch endpoint unbatched; access log on",
    ),
    "mlserver-p0": (
        "V2: one input tensor per column, shape [1] / [1000]",
        "V2 structure and datatypes only (no limits or categories)",
        "inference in the server process; uvicorn access log on (debug default)",
    ),
    "mlserver-default": (
        "V2: one input tensor per column, shape [1] / [1000]",
        "V2 structure and datatypes only (no limits or categories)",
        "inference in a worker process fed over a queue; uvicorn access log on",
    ),
    "mlserver-p0-batch": (
        "V2: one input tensor per column, shape [1] / [1000]",
        "V2 structure and datatypes only (no limits or categories)",
        "as mlserver-p0, requests merged by MLServer's adaptive batching (32 / 1 ms); uvicorn access log on",
    ),
    "mlserver-default-batch": (
        "V2: one input tensor per column, shape [1] / [1000]",
        "V2 structure and datatypes only (no limits or categories)",
        "as mlserver-default, requests merged by its adaptive batching (32 / 1 ms) before the worker's queue; "
        "uvicorn access log on",
    ),
    MLFLOW: (
        "{dataframe_records: [record]}; batch the same with 1,000",
        "MLflow signature from the input example: columns and types",
        "pandas DataFrame per request; uvicorn (mlflow's default)",
    ),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    batch: bool
    max_requests: int


SCENARIOS: Final = (
    # bounds well above the floor's rate for 8 s (about 6k, 12k and 12k req/s, 400 batches/s here)
    Scenario("single c1", 1, batch=False, max_requests=100_000),
    Scenario("single c8", 8, batch=False, max_requests=200_000),
    Scenario("single c32", 32, batch=False, max_requests=200_000),
    Scenario("batch1000 c4", 4, batch=True, max_requests=10_000),
    Scenario(V2_SCENARIO, 4, batch=True, max_requests=10_000),  # only servers with ``extra[V2_SCENARIO]``
)


def records(bundle: Bundle, n: int, seed: int) -> list[dict[str, Any]]:
    columns = probe_columns(bundle.metadata, n, seed=seed)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def as_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def encode(x: Any) -> bytes:
    return json.dumps(x, separators=(",", ":")).encode()


def train_bundle(rows: int, workdir: Path) -> Path:
    from orchestration.config import load_config
    from orchestration.data import generate, write_csv
    from orchestration.pipeline import Progress, run_pipeline

    data = write_csv(generate(rows), workdir / "flights.csv")
    return run_pipeline(data, load_config(), workdir / "bundle", Progress(stream=None)).bundle_dir


def in_process(bundle: Bundle, repeats: int = 2000) -> dict[str, float]:
    """In-process medians: Bundle.predict on one record and on 1,000, and the server's predictor (the bundle's
    serving form)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    form = load_serving_bundle(bundle.path).form
    one = {k: [v] for k, v in bundle.metadata.example.items()}
    batch = probe_columns(bundle.metadata, BATCH_ROWS, seed=5)

    def median_ms(fn: Any, n: int) -> float:
        fn()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1000)

    with threadpool_limits(limits=1):
        return {
            "bundle_predict_1_ms": median_ms(lambda: bundle.predict(one), repeats),
            "bundle_predict_1000_ms": median_ms(lambda: bundle.predict(batch), repeats // 20),
            "server_predictor_1_ms": median_ms(lambda: form.predict(one), repeats),
            "server_predictor_1000_ms": median_ms(lambda: form.predict(batch), repeats // 20),
        }


@contextmanager
def our_server(
    serve_bin: Path, bundle_dir: Path, workdir: Path, bodies: tuple[list[bytes], list[bytes]]
) -> Iterator[Server]:
    """``python -m app.entrypoint`` serving ``bundle_dir`` as is (verified, then uvicorn), as the image starts."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [str(serve_bin / "python"), "-m", "app.entrypoint"]
    env = peer_env({"BUNDLE_DIR": str(bundle_dir), "HOST": LOOPBACK, "PORT": str(port), "WORKERS": "1"})
    log = workdir / "server.log"
    with started(args, f"{url}/health/ready", env, log, 120) as (pid, start_s):
        with urllib.request.urlopen(f"{url}/model", timeout=10) as response:
            walk = json.loads(response.read())["walk"]
        if walk != "compiled":  # the image always has it; a run of the numpy fallback would misstate this server
            raise SystemExit(f"this server predicts with the {walk} walk, not the compiled one: see {log}")
        yield Server(
            THIS, "this server", url, pid, log, start_s, "/predict", "/predict/batch", *bodies,
            lambda b: [float(json.loads(b)["prediction"])], lambda b: [float(x) for x in json.loads(b)["predictions"]],
        )  # fmt: skip


@contextmanager
def mlflow_server(bundle: Bundle, workdir: Path, bodies: tuple[list[bytes], list[bytes]]) -> Iterator[Server]:
    import mlflow
    import pandas as pd
    from sklearn.pipeline import Pipeline

    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.create_experiment("bench-serve", artifact_location=str(workdir / "artifacts"))
    pipeline = Pipeline([("transformer", bundle.transformer), ("model", bundle.model)])
    example = pd.DataFrame([bundle.metadata.example])
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(
            pipeline, name="model", input_example=example, skops_trusted_types=sorted(TRUSTED_TYPES)
        )
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"runs:/{run.info.run_id}/model", "--env-manager", "local",
        "-h", LOOPBACK, "-p", str(port), "-w", "1",
    ]  # fmt: skip
    # mlflow execs `uvicorn` by name: the venv must come first on PATH
    env = peer_env({"MLFLOW_TRACKING_URI": tracking, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    log = workdir / "mlflow-serve.log"
    with started(args, f"{url}/ping", env, log) as (pid, start_s):
        yield Server(
            MLFLOW, "mlflow models serve", url, pid, log, start_s, "/invocations", "/invocations", *bodies,
            lambda b: [float(x) for x in json.loads(b)["predictions"]],
            lambda b: [float(x) for x in json.loads(b)["predictions"]],
        )  # fmt: skip


# --- checks ---------------------------------------------------------------------------------------------------


def post(url: str, body: bytes, timeout: float = 60) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def compare(got: list[float], expected: np.ndarray[Any, Any]) -> dict[str, Any]:
    got_array = np.asarray(got, dtype=np.float64)
    if got_array.shape != expected.shape:
        return {"ok": False, "reason": f"{got_array.size} predictions for {expected.size} records"}
    diff = np.abs(got_array - expected)
    relative = float(np.max(diff / np.maximum(np.abs(expected), 1e-300)))
    return {
        "ok": relative <= TOLERANCE,
        "bit_identical": bool(np.array_equal(got_array, expected)),
        "max_abs_diff": float(np.max(diff)),
        "max_rel_diff": relative,
    }


def check_answers(
    server: Server,
    bundle: Bundle,
    singles: list[dict[str, Any]],
    batch: list[dict[str, Any]],
    extra: tuple[str, list[bytes], Answers] | None = None,
) -> dict[str, Any]:
    """The server's answers to ``CHECKED_RECORDS`` single records and one batch against ``Bundle.predict``
    (with ``extra``: the batch as that scenario's path and body answers instead)."""
    singles = singles[:CHECKED_RECORDS]
    try:
        if extra is not None:
            path, bodies, answers = extra
            got = answers(post(server.url + path, bodies[0]))
            return {**compare(got, bundle.predict(as_columns(batch))), "records": len(batch)}
        got = [x for body in server.single_bodies[:CHECKED_RECORDS] for x in server.single_answers(
            post(server.url + server.single_path, body))]  # fmt: skip
        got += server.batch_answers(post(server.url + server.batch_path, server.batch_bodies[0]))
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        detail = exc.read().decode(errors="replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc} {detail}".strip()}
    expected = np.concatenate([bundle.predict(as_columns(singles)), bundle.predict(as_columns(batch))])
    return {**compare(got, expected), "records": len(singles) + len(batch)}


def v2_scenario(server: Server, bundle: Bundle, batches: list[list[dict[str, Any]]], name: str) -> dict[str, Any]:
    """This server's V2 columnar batches, if it answers ``GET /v2/models/{name}``: MLServer's exact body first,
    then the plain V2 body (no MLServer content-type hints); the first whose answers check is measured."""
    try:
        with urllib.request.urlopen(f"{server.url}/v2/models/{name}", timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return {"available": False, "reason": f"GET /v2/models/{name}: {exc}"}
    if status != 200:
        return {"available": False, "reason": f"GET /v2/models/{name} answered {status}"}
    path = f"/v2/models/{name}/infer"
    tried = []
    for hints in (True, False):
        bodies = [v2_request(bundle.metadata, b, content_types=hints) for b in batches]
        check = check_answers(server, bundle, [], batches[0], (path, bodies, v2_answers))
        tried.append({"content_type_hints": hints, **check})
        if check["ok"]:
            server.extra[V2_SCENARIO] = (path, bodies, v2_answers)
            return {"available": True, "path": path, "content_type_hints": hints, "check": check}
    return {"available": False, "reason": "answers did not check", "tried": tried}


# --- measuring ------------------------------------------------------------------------------------------------


def processes(pid: int) -> dict[str, Any]:
    """The worker (the largest process in the tree rooted at ``pid``): RSS, peak RSS, threads; the tree's total."""
    tree = [pid, *_descendants(pid)]
    status = {p: _status(p) for p in tree}
    worker = max(status, key=lambda p: status[p]["VmRSS"])
    return {
        "worker_rss_mb": round(status[worker]["VmRSS"] / 1024, 1),
        "worker_peak_rss_mb": round(status[worker]["VmHWM"] / 1024, 1),
        "worker_threads": status[worker]["Threads"],
        "tree_rss_mb": round(sum(s["VmRSS"] for s in status.values()) / 1024, 1),
        "processes": len(tree),
    }


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with (task / "children").open() as fh:
            children += [int(c) for c in fh.read().split()]
    return [c for child in children for c in (child, *_descendants(child))]


def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM", "Threads")}


def request_log_lines(server: Server) -> int:
    """Lines of the server's log that name one of the paths it is measured on: its request log, if it keeps one."""
    paths = [p.encode() for p in {server.single_path, server.batch_path, *(e[0] for e in server.extra.values())}]
    try:
        with server.log.open("rb") as fh:
            return sum(1 for line in fh if any(p in line for p in paths))
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree rooted at ``pid``."""
    ticks = 0
    for p in (pid, *_descendants(pid)):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cpu(servers: list[Server], seconds: float = 5.0) -> dict[str, float]:
    """Each server's CPU use (% of one core) while nothing is sent to any: what it takes from the others."""
    before = {s.key: cpu_seconds(s.pid) for s in servers}
    time.sleep(seconds)
    return {s.key: round(100 * (cpu_seconds(s.pid) - before[s.key]) / seconds, 1) for s in servers}


class ForeignCpu:
    """CPU the machine spent during a measurement on anything but the servers, the load generator and this
    script: another job on the same 2 cores, which would skew the figures. In % of one core."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # all but idle and iowait
        ours = sum(cpu_seconds(s.pid) for s in self.servers)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # this script; wrk once it has exited
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return time.perf_counter(), busy, ours

    def percent(self) -> float:
        (t0, busy0, ours0), (t1, busy1, ours1) = self.start, self._sample()
        return round(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0) * 100, 1)


def drive(server: Server, scenario: Scenario, duration_s: float, generator: Any) -> tuple[LoadResult, int]:
    """A 2 s warm-up, then the measured run; returns the run and every request sent (for the log count)."""
    if scenario.name in server.extra:
        path, bodies, _ = server.extra[scenario.name]
    elif scenario.batch:
        path, bodies = server.batch_path, server.batch_bodies
    else:
        path, bodies = server.single_path, server.single_bodies
    url = server.url + path
    warm = run_load(url, bodies, concurrency=scenario.concurrency, max_requests=200, duration_s=2, generator=generator)
    result = run_load(
        url,
        bodies,
        concurrency=scenario.concurrency,
        max_requests=scenario.max_requests,
        duration_s=duration_s,
        generator=generator,
    )
    return result, warm.requests + result.requests


def warm_up(server: Server, generator: Any) -> str:
    """Single records at concurrency 8 for 5 s, then batches at 4 for 2 s, unmeasured: every server gets the same.
    BentoML's adaptive batching needs it most: its dispatcher times its first batches (of 1, 2 and 3 records)
    before it batches freely, and holds a lone request for seconds while it learns (what it learns at
    concurrency 8 then holds lone requests at c1 longer: see ``bench.peers``)."""
    single = run_load(
        server.url + server.single_path, server.single_bodies, concurrency=8, max_requests=5_000, duration_s=5,
        generator=generator,
    )  # fmt: skip
    batch = run_load(
        server.url + server.batch_path, server.batch_bodies, concurrency=4, max_requests=100, duration_s=2,
        generator=generator,
    )  # fmt: skip
    return f"{single.requests} single records, {batch.requests} batches"


def runs(server: Server, scenario: Scenario) -> bool:
    return scenario.name in server.extra if scenario.name == V2_SCENARIO else True


def order(servers: list[Server], i: int) -> list[Server]:
    """Rotated by the scenario's index, and reversed every other scenario."""
    k = i % len(servers) if servers else 0
    rotated = servers[k:] + servers[:k]
    return rotated if i % 2 == 0 else rotated[::-1]


def selection(text: str) -> list[str]:
    keys: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        for key in ALIASES.get(part, (part,)):
            if key not in SERVER_KEYS:
                raise argparse.ArgumentTypeError(f"unknown server {key!r}: choose from {', '.join(SERVER_KEYS)}")
            if key not in keys:
                keys.append(key)
    return [k for k in SERVER_KEYS if k in keys]


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one on --rows rows)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to train the bench bundle on")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (upper bound)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--servers",
        type=selection,
        default=list(SERVER_KEYS),
        help=f"comma-separated subset of {', '.join(SERVER_KEYS)} (or bentoml, mlserver, peers, all); default all",
    )
    parser.add_argument("--v2-model", default=DEFAULT_MODEL_NAME, help="this server's model name on /v2/models/")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--workdir", type=Path, help="keep bundles, stores and server logs here (default: temporary)")
    args = parser.parse_args()
    generator = available_generator(args.generator)
    print(f"load generator: {generator}; servers: {', '.join(args.servers)}; load average {load_now()}", flush=True)

    status: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-")))
        workdir.mkdir(parents=True, exist_ok=True)
        bundle_dir = args.bundle
        if bundle_dir is None:
            print(f"training the bench bundle on {args.rows:,} rows ...", flush=True)
            bundle_dir = train_bundle(args.rows, workdir)
        bundle = load_bundle(bundle_dir.resolve())
        singles = records(bundle, DISTINCT_RECORDS, seed=1)
        batches = [records(bundle, BATCH_ROWS, seed=s) for s in (2, 3, 4)]
        ours = ([encode(r) for r in singles], [encode({"records": b}) for b in batches])

        serve_bin = serving_venv(lambda line: print(line, flush=True))
        compiled_walk(lambda line: print(line, flush=True))
        if MLFLOW in args.servers:
            compile_bytecode(BIN / "python", lambda line: print(line, flush=True))
        figures = in_process(bundle)
        print("in-process: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)

        with ExitStack() as running_servers:
            installed: dict[str, Path | PeerUnavailable] = {}

            def venv(peer: Peer) -> Path:
                if peer.key not in installed:
                    print(f"{peer.name}: preparing its venv ...", flush=True)
                    try:
                        installed[peer.key] = install(peer, lambda line: print(line, flush=True))
                    except PeerUnavailable as exc:
                        installed[peer.key] = exc
                found = installed[peer.key]
                if isinstance(found, PeerUnavailable):
                    raise found
                return found

            starters: dict[str, Callable[[], AbstractContextManager[Server]]] = {
                THIS: lambda: our_server(serve_bin, bundle.path, workdir, ours),
                FLOOR: lambda: floor_server(serve_bin, bundle.path, workdir, *ours),
                "bentoml-nobatch": lambda: bentoml_server(
                    venv(BENTOML), bundle.path, workdir, (singles, batches), batching=False
                ),
                "bentoml-batch": lambda: bentoml_server(venv(BENTOML), bundle.path, workdir, (singles, batches), True),
                "mlserver-p0": lambda: mlserver_server(venv(MLSERVER), bundle, workdir, (singles, batches), 0),
                "mlserver-default": lambda: mlserver_server(venv(MLSERVER), bundle, workdir, (singles, batches), None),
                "mlserver-p0-batch": lambda: mlserver_server(
                    venv(MLSERVER), bundle, workdir, (singles, batches), 0, True
                ),
                "mlserver-default-batch": lambda: mlserver_server(
                    venv(MLSERVER), bundle, workdir, (singles, batches), None, True
                ),
                MLFLOW: lambda: mlflow_server(
                    bundle,
                    workdir,
                    (
                        [encode({"dataframe_records": [r]}) for r in singles],
                        [encode({"dataframe_records": b}) for b in batches],
                    ),
                ),
            }
            servers: list[Server] = []
            for key in args.servers:
                try:
                    server = running_servers.enter_context(starters[key]())
                except PeerUnavailable as exc:
                    status[key] = {"status": "not installed", "reason": str(exc)}
                    print(f"{key}: NOT INSTALLED: {exc}", flush=True)
                    continue
                except (RuntimeError, TimeoutError, OSError) as exc:
                    status[key] = {"status": "did not start", "reason": str(exc)}
                    print(f"{key}: DID NOT START: {exc}", flush=True)
                    continue
                entry: dict[str, Any] = {"name": server.name, "start_s": round(server.start_s, 2)}
                if server.predicts:
                    entry["check"] = check_answers(server, bundle, singles, batches[0])
                if key == THIS:
                    entry["v2"] = v2_scenario(server, bundle, batches, args.v2_model)
                checked = entry.get("check", {"ok": True})
                entry["status"] = "measured" if checked["ok"] else "answers differ"
                status[key] = entry
                print(
                    f"{server.name}: up in {server.start_s:.1f}s; answers {describe_check(entry.get('check'))}",
                    flush=True,
                )
                if key == THIS:
                    v2 = entry["v2"]
                    print(f"{server.name}: {V2_SCENARIO} " + (
                        f"measured ({v2['path']}, {describe_check(v2['check'])})" if v2["available"]
                        else f"not available ({v2['reason']})"), flush=True)  # fmt: skip
                if checked["ok"]:
                    servers.append(server)

            idle = idle_cpu(servers)
            print(f"idle CPU (% of a core, {5.0:.0f} s with no load): {json.dumps(idle)}", flush=True)
            for server in servers:
                print(f"{server.key}: warmed up with {warm_up(server, generator)}", flush=True)
            lines_before = {s.key: request_log_lines(s) for s in servers}
            sent = {s.key: 0 for s in servers}
            load = {"before": load_now()}
            foreign_cpu: dict[str, dict[str, float]] = {}
            results: dict[str, dict[str, LoadResult]] = {}
            for i, scenario in enumerate(SCENARIOS):
                taking_part = [s for s in order(servers, i) if runs(s, scenario)]
                if not taking_part:
                    continue
                results[scenario.name] = {}
                print(f"-- {scenario.name}: {', '.join(s.key for s in taking_part)} (load {load_now()})", flush=True)
                for server in taking_part:
                    for attempt in range(1, ATTEMPTS + 1):
                        foreign = ForeignCpu(servers)
                        result, requests = drive(server, scenario, args.duration, generator)
                        other = foreign.percent()
                        sent[server.key] += requests
                        if other <= OTHER_CPU_LIMIT or attempt == ATTEMPTS:
                            break
                        print(
                            f"{scenario.name:<14} {server.key:<22} other processes took {other:.0f}% of a core: "
                            f"measuring again in {RETRY_AFTER_S:.0f}s",
                            flush=True,
                        )
                        time.sleep(RETRY_AFTER_S)
                    foreign_cpu.setdefault(scenario.name, {})[server.key] = other
                    results[scenario.name][server.key] = result
                    rows = BATCH_ROWS if scenario.batch else 1
                    print(
                        f"{scenario.name:<14} {server.key:<22} {result.rps:9.1f} req/s {result.rps * rows:9.0f} rows/s"
                        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                        f"  ({result.requests} in {result.seconds:.1f}s; other CPU {other:.0f}%)"
                        + ("  CAPPED at max_requests: rate understated" if result.capped else ""),
                        flush=True,
                    )
            load["after"] = load_now()
            memory = {server.key: processes(server.pid) for server in servers}
        # the servers are stopped (their logs flushed), the working directory is still there
        for server in servers:
            lines = request_log_lines(server) - lines_before[server.key]
            memory[server.key]["request_log_lines_per_request"] = (
                round(lines / sent[server.key], 2) if sent[server.key] else 0.0
            )
            memory[server.key]["idle_cpu_pct"] = idle[server.key]
    report = summarise(results, memory, status, figures, generator, args, bundle, load, foreign_cpu)
    for line in report["summary"]:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def describe_check(check: dict[str, Any] | None) -> str:
    if check is None:
        return "not checked (a constant)"
    if "reason" in check:
        return f"FAILED: {check['reason']}"
    verdict = "bit-identical to" if check["bit_identical"] else ("within" if check["ok"] else "DIFFER from")
    tolerance = "" if check["bit_identical"] else f" rel. {TOLERANCE:g} (max rel. diff {check['max_rel_diff']:.3g})"
    return f"{verdict} Bundle.predict{tolerance} on {check['records']} records"


def summarise(
    results: dict[str, dict[str, LoadResult]],
    memory: dict[str, dict[str, Any]],
    status: dict[str, dict[str, Any]],
    figures: dict[str, float],
    generator: str,
    args: argparse.Namespace,
    bundle: Bundle,
    load: dict[str, list[float]],
    foreign_cpu: dict[str, dict[str, float]],
) -> dict[str, Any]:
    peers = [k for k in PEER_KEYS if k in memory]

    def rows_per_s(scenario: str, result: LoadResult) -> float:
        return result.rps * (BATCH_ROWS if "batch" in scenario else 1)

    # each peer's best setup per scenario, then the best peer's best setup (V2 batches: against the peers' batches)
    taken = {scenario: peer_bests(by) for scenario, by in results.items() if scenario != V2_SCENARIO}
    to_best: dict[str, dict[str, Any]] = {}
    for scenario, by in results.items():
        mine = by.get(THIS)
        against = "batch1000 c4" if scenario == V2_SCENARIO else scenario
        fastest, steadiest = best_peer(taken.get(against, {}), results.get(against, {}))
        if mine is None or fastest is None or steadiest is None:
            continue
        to_best[scenario] = {
            "best_peer_rps": fastest[0],
            "rps": _ratio(mine.rps, fastest[1].rps),
            "lowest_p99_peer": steadiest[0],
            "p99": _ratio(mine.p99_ms, steadiest[1].p99_ms),
            **({"rps_of_floor": _ratio(mine.rps, by[FLOOR].rps)} if FLOOR in by else {}),
        }
    lightest = min(peers, key=lambda k: memory[k]["worker_rss_mb"]) if peers else None

    targets: dict[str, bool | None] = {}
    for scenario in ("single c1", "single c8", "single c32"):
        targets[f"{scenario} throughput >= 2x best peer"] = _holds(
            to_best.get(scenario, {}).get("rps"), lambda x: x >= 2
        )
    c32 = to_best.get("single c32", {})
    c32_runs = results.get("single c32", {})
    of_floor = _ratio(c32_runs[THIS].rps, c32_runs[FLOOR].rps) if THIS in c32_runs and FLOOR in c32_runs else None
    targets["single c32 throughput >= 1/2 floor"] = _holds(of_floor, lambda x: x >= 0.5)
    targets["single c32 p99 <= 1/3 best peer's (lowest peer p99)"] = _holds(c32.get("p99"), lambda x: x <= 1 / 3)
    c1 = results.get("single c1", {})
    c1_bound = figures["server_predictor_1_ms"] + 2 * c1[FLOOR].p50_ms if FLOOR in c1 else None
    targets["single c1 p50 <= in-process predictor + 2x floor p50"] = (
        None if THIS not in c1 or c1_bound is None else c1[THIS].p50_ms <= c1_bound
    )
    batch = to_best.get("batch1000 c4", {}).get("rps")
    targets["batch1000 c4 rows/s >= 1.5x best peer"] = _holds(batch, lambda x: x >= 1.5)
    if V2_SCENARIO in to_best:
        v2 = to_best[V2_SCENARIO]["rps"]
        targets[f"{V2_SCENARIO} rows/s >= 1.5x best peer's batches"] = _holds(v2, lambda x: x >= 1.5)
    targets["worker RSS <= best (lowest) peer's"] = (
        None
        if THIS not in memory or lightest is None
        else memory[THIS]["worker_rss_mb"] <= memory[lightest]["worker_rss_mb"]
    )
    # issue 28: against each peer's best setup in the same run; V2 batches against the peers' and the floor's batches
    floor_batches = results.get("batch1000 c4", {}).get(FLOOR)
    v2_runs = results.get(V2_SCENARIO, {})
    v2_of_floor = _ratio(v2_runs[THIS].rps, floor_batches.rps) if THIS in v2_runs and floor_batches else None
    targets_28: dict[str, bool | None] = {
        **{
            f"{scenario} throughput >= 0.6 of the floor": _holds(
                to_best.get(scenario, {}).get("rps_of_floor"), lambda x: x >= 0.6
            )
            for scenario in ("single c1", "single c8", "single c32")
        },
        "batch1000 c4 rows/s >= 2x best peer's best setup": _holds(batch, lambda x: x >= 2),
        "batch1000 c4 rows/s >= 0.35 of the floor": _holds(
            to_best.get("batch1000 c4", {}).get("rps_of_floor"), lambda x: x >= 0.35
        ),
        f"{V2_SCENARIO} rows/s >= 2x best peer's best setup (batches)": _holds(
            to_best.get(V2_SCENARIO, {}).get("rps"), lambda x: x >= 2
        ),
        f"{V2_SCENARIO} rows/s >= 0.35 of the floor's batches": _holds(v2_of_floor, lambda x: x >= 0.35),
        "single c32 p99 <= 1/5 lowest peer p99 (any setup)": _holds(c32.get("p99"), lambda x: x <= 0.2),
        "worker RSS <= 0.8x lowest peer's (any setup)": None
        if THIS not in memory or lightest is None
        else memory[THIS]["worker_rss_mb"] <= 0.8 * memory[lightest]["worker_rss_mb"],
    }

    # the MLflow comparison and its targets, as before
    to_mlflow: dict[str, dict[str, float | None]] = {}
    mlflow_targets: dict[str, bool | None] = {}
    if THIS in memory and MLFLOW in memory:
        for scenario, by in results.items():
            theirs = by.get(MLFLOW) or results.get("batch1000 c4", {}).get(MLFLOW)
            if THIS in by and theirs is not None:
                mine = by[THIS]
                to_mlflow[scenario] = {
                    "rps": _ratio(mine.rps, theirs.rps),
                    "p50": _ratio(mine.p50_ms, theirs.p50_ms),
                    "p99": _ratio(mine.p99_ms, theirs.p99_ms),
                }
        mlflow_targets = {
            "c32 throughput >= 10x mlflow": _holds(to_mlflow["single c32"]["rps"], lambda x: x >= 10),
            "c32 p99 <= 1/5 mlflow": _holds(to_mlflow["single c32"]["p99"], lambda x: x <= 0.2),
            "c1 throughput >= 3x mlflow": _holds(to_mlflow["single c1"]["rps"], lambda x: x >= 3),
            "c1 p50 <= 1.5x in-process Bundle.predict": results["single c1"][THIS].p50_ms
            <= 1.5 * figures["bundle_predict_1_ms"],
            "batch1000 c4 rows/s >= 2x mlflow": _holds(to_mlflow["batch1000 c4"]["rps"], lambda x: x >= 2),
            "worker RSS below mlflow's": memory[THIS]["worker_rss_mb"] < memory[MLFLOW]["worker_rss_mb"],
        }

    worst = max((x for by in foreign_cpu.values() for x in by.values()), default=0.0)
    stalled = [f"{k} in {scenario}" for scenario, by in results.items() for k, r in by.items() if not r.requests]
    summary = ["", "== figures (req/s; rows/s for batches; p50 / p99 ms) =="]
    keys = [k for k in SERVER_KEYS if k in memory]
    summary.append(f"{'scenario':<15}" + "".join(f"{k:>24}" for k in keys))
    for scenario, by in results.items():
        cells = []
        for k in keys:
            r = by.get(k)
            cells.append(
                f"{'-':>24}" if r is None else f"  {rows_per_s(scenario, r):>9,.0f} {r.p50_ms:>5.2f}/{r.p99_ms:<6.1f}"
            )
        summary.append(f"{scenario:<15}" + "".join(cells))
    summary.append(f"{'worker RSS MB':<15}" + "".join(f"{memory[k]['worker_rss_mb']:>24}" for k in keys))
    summary.append(f"{'launch->ready s':<15}" + "".join(f"{status[k]['start_s']:>24}" for k in keys))
    summary += ["", "== what differs between the servers (processes, threads, log lines measured) =="]
    for k in keys:
        shape, validation, notes = DIFFERENCES[k]
        m = memory[k]
        summary.append(
            f"{k:<22} request: {shape} | validation: {validation} | {notes} | processes {m['processes']}, "
            f"worker threads {m['worker_threads']}, request log lines/request {m['request_log_lines_per_request']}, "
            f"idle CPU {m['idle_cpu_pct']}% of a core"
        )
    summary += [
        "",
        "== each peer's setup taken (its best in this run, among its setups that answered every request) ==",
    ]
    summary += describe_taken(taken, results)
    summary += ["", "== servers =="]
    for k in SERVER_KEYS:
        entry = status.get(k, {"status": "not selected"})
        detail = entry.get("reason") or describe_check(entry.get("check")) if entry["status"] != "not selected" else ""
        summary.append(f"{k:<22} {entry['status']}{': ' + detail if detail else ''}")
    if THIS in status and "v2" in status[THIS]:
        v2 = status[THIS]["v2"]
        summary.append(
            f"{'':<22} {V2_SCENARIO}: " + ("measured" if v2["available"] else f"not available ({v2['reason']})")
        )
    summary += [
        "",
        f"in-process: server predictor {figures['server_predictor_1_ms']:.3f} ms for 1 record "
        f"(Bundle.predict {figures['bundle_predict_1_ms']:.3f} ms), 1,000 records "
        f"{figures['server_predictor_1000_ms']:.2f} ms",
        f"ratios to the best peer (throughput: highest peer; p99: lowest peer p99): {json.dumps(to_best)}",
        f"ratios to mlflow (this server / mlflow): {json.dumps(to_mlflow)}" if to_mlflow else "ratios to mlflow: n/a",
        f"c1 p50 bound: in-process predictor + 2x floor p50 = {c1_bound:.2f} ms" if c1_bound is not None else "",
        f"RSS: {json.dumps(memory)}",
        "runs without a single answer (the server stalled for the whole run; it counts as 0 in the ratios): "
        + (", ".join(stalled) or "none"),
        f"machine load average (1/5/15 min) before {load['before']}, after {load['after']}; CPU spent by other "
        f"processes during the measured runs: at most {worst:.0f}% of a core"
        + (
            f" (above {OTHER_CPU_LIMIT:.0f}% after {ATTEMPTS} attempts: the figures may be skewed, run it again on a "
            "quiet machine)"
            if worst > OTHER_CPU_LIMIT
            else ""
        ),
        *(f"target {_verdict(ok)} {name}" for name, ok in mlflow_targets.items()),
        *(f"target {_verdict(ok)} (issue 14) {name}" for name, ok in targets.items()),
        *(f"target {_verdict(ok)} (issue 28) {name}" for name, ok in targets_28.items()),
    ]
    return {
        "benchmark": "serve",
        "generator": generator,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duration_s": args.duration,
        "bundle_rows": bundle.metadata.rows,
        "bundle_hash": bundle.content_hash,
        "bundle_libraries": lock_versions(),
        "wrk": shutil.which("wrk"),
        "load_average": load,
        "other_cpu_pct_during_runs": foreign_cpu,
        "tolerance_rel": TOLERANCE,
        "in_process": figures,
        "servers": status,
        "differences": {k: dict(zip(("request", "validation", "notes"), DIFFERENCES[k], strict=True)) for k in keys},
        "results": {
            s: {k: {**r.as_dict(), "rows_per_s": round(rows_per_s(s, r))} for k, r in by.items()}
            for s, by in results.items()
        },
        "peer_setups": {peer: list(setups) for peer, setups in PEERS.items()},
        "setups_taken": taken,
        "ratios_to_best_peer": to_best,
        "stalled_runs": stalled,
        "ratios_to_mlflow": to_mlflow,
        "memory": memory,
        "targets": mlflow_targets,
        "targets_issue_14": targets,
        "targets_issue_28": targets_28,
        "summary": summary,
    }


def answered_all(result: LoadResult) -> bool:
    """A run that counts as a setup's figure: it answered, and answered every request without an error (a setup
    refusing requests answers them faster than it serves them, and its p99 mixes the refusals)."""
    return result.requests > 0 and result.errors == 0


def peer_bests(by: dict[str, LoadResult]) -> dict[str, dict[str, Any]]:
    """One scenario's runs -> for each peer with a setup among them: its setups measured, the one with the highest
    throughput (``rps``) and the one with the lowest p99 (``p99``), each among the setups that answered every
    request (None when none did)."""
    taken: dict[str, dict[str, Any]] = {}
    for peer, setups in PEERS.items():
        measured = [key for key in setups if key in by]
        if not measured:
            continue
        counted = [key for key in measured if answered_all(by[key])]
        taken[peer] = {
            "setups": measured,
            "rps": max(counted, key=lambda k: by[k].rps) if counted else None,
            "p99": min(counted, key=lambda k: by[k].p99_ms) if counted else None,
        }
    return taken


def best_peer(
    taken: dict[str, dict[str, Any]], by: dict[str, LoadResult]
) -> tuple[tuple[str, LoadResult] | None, tuple[str, LoadResult] | None]:
    """The best peer's best setup (key, run) for throughput (the highest) and for p99 (the lowest)."""
    fastest = [(t["rps"], by[t["rps"]]) for t in taken.values() if t["rps"] is not None]
    steadiest = [(t["p99"], by[t["p99"]]) for t in taken.values() if t["p99"] is not None]
    return (
        max(fastest, key=lambda kr: kr[1].rps) if fastest else None,
        min(steadiest, key=lambda kr: kr[1].p99_ms) if steadiest else None,
    )


def describe_taken(taken: dict[str, dict[str, dict[str, Any]]], results: dict[str, dict[str, LoadResult]]) -> list[str]:
    """Per scenario and peer: the setup taken for throughput and for p99, and the setups left out (errors, or no
    answer)."""
    lines = []
    for scenario, peers in taken.items():
        rows = 1 if scenario.startswith("single") else BATCH_ROWS
        for peer, t in peers.items():
            by = results[scenario]
            left = [f"{k} ({by[k].errors} errors in {by[k].requests})" for k in t["setups"] if not answered_all(by[k])]
            if t["rps"] is None:
                taken_text = "none: no setup answered every request"
            else:
                fast, steady = by[t["rps"]], by[t["p99"]]
                taken_text = (
                    f"throughput {t['rps']} ({fast.rps * rows:,.0f} {'req' if rows == 1 else 'rows'}/s), "
                    f"p99 {t['p99']} ({steady.p99_ms:.1f} ms)"
                )
            lines.append(
                f"{scenario:<14} {peer:<9} {taken_text} of {', '.join(t['setups'])}"
                + (f"; left out: {', '.join(left)}" if left else "")
            )
    return lines


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when b measured nothing."""
    return round(a / b, 2) if b else None


def _holds(value: float | None, test: Callable[[float], bool]) -> bool | None:
    return None if value is None else test(value)


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("MET " if ok else "MISS")


if __name__ == "__main__":
    main()
