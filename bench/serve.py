"""This prediction server against ``mlflow models serve`` on the same bundle, with the in-process floor.

Starts, on 127.0.0.1 and one worker each: ``uvicorn app.main:app`` serving the bundle, and the same
transformer + model as one scikit-learn Pipeline logged with ``mlflow.sklearn.log_model`` (in a temporary
tracking store) and served by ``mlflow models serve --env-manager local``. Then drives both with the same
bounded load (single record at concurrency 1, 8 and 32; 1,000-record batches at concurrency 4), alternating
which server goes first, and prints requests/s, p50, p99, errors, server RSS and the ratios to MLflow.
The floor is ``Bundle.predict`` called in-process.

Usage: ``uv run python -m bench.serve [--bundle DIR | --rows 200000] [--duration 8] [--generator auto]``
Writes ``bench/results/serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from app.contract.bundle import TRUSTED_TYPES, Bundle, load_bundle
from app.predictor import Predictor, probe_columns
from bench.load import LoadResult, available_generator, run_load
from tests.services import BIN, LOOPBACK, free_port, running

ROOT = Path(__file__).resolve().parents[1]

BATCH_ROWS: Final = 1000
DISTINCT_RECORDS: Final = 256


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    batch: bool
    max_requests: int


SCENARIOS: Final = (
    Scenario("single c1", 1, batch=False, max_requests=20_000),
    Scenario("single c8", 8, batch=False, max_requests=60_000),
    Scenario("single c32", 32, batch=False, max_requests=60_000),
    Scenario("batch1000 c4", 4, batch=True, max_requests=3_000),
)


@dataclass(frozen=True)
class Server:
    name: str
    url: str  # base URL
    pid: int
    single_path: str
    batch_path: str
    single_bodies: list[bytes]
    batch_bodies: list[bytes]


def records(bundle: Bundle, n: int, seed: int) -> list[dict[str, Any]]:
    columns = probe_columns(bundle.metadata, n, seed=seed)
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def train_bundle(rows: int, workdir: Path) -> Path:
    from orchestration.config import load_config
    from orchestration.data import generate, write_csv
    from orchestration.pipeline import Progress, run_pipeline

    data = write_csv(generate(rows), workdir / "flights.csv")
    return run_pipeline(data, load_config(), workdir / "bundle", Progress(stream=None)).bundle_dir


def floor(bundle: Bundle, repeats: int = 2000) -> dict[str, float]:
    """In-process medians: Bundle.predict on one record and on 1,000, and the server's direct predictor."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    predictor = Predictor(bundle)
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
            "server_predictor_1_ms": median_ms(lambda: predictor.predict_columns(one), repeats),
            "server_predictor_1000_ms": median_ms(lambda: predictor.predict_columns(batch), repeats // 20),
            "server_predictor_direct": float(predictor.direct),
        }


@contextmanager
def our_server(bundle_dir: Path, workdir: Path, bodies: tuple[list[bytes], list[bytes]]) -> Iterator[Server]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    args = [str(BIN / "uvicorn"), "app.main:app", "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    env = {"BUNDLE_DIR": str(bundle_dir), "PYTHONPATH": str(ROOT)}
    with running(args, f"{url}/health/ready", env=env, timeout=120, log=workdir / "server.log") as process:
        yield Server("this server", url, process.pid, "/predict", "/predict/batch", *bodies)


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
    env = {"MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with running(args, f"{url}/ping", env=env, timeout=180, log=workdir / "mlflow-serve.log") as process:
        yield Server("mlflow models serve", url, process.pid, "/invocations", "/invocations", *bodies)


def rss_mb(pid: int) -> dict[str, float]:
    """The worker's RSS and peak RSS (the largest process in the tree rooted at ``pid``), and the tree's total."""
    tree = [pid, *_descendants(pid)]
    sizes = {p: _status_kb(p) for p in tree}
    worker = max(sizes, key=lambda p: sizes[p][0])
    return {
        "worker_rss_mb": round(sizes[worker][0] / 1024, 1),
        "worker_peak_rss_mb": round(sizes[worker][1] / 1024, 1),
        "tree_rss_mb": round(sum(s[0] for s in sizes.values()) / 1024, 1),
    }


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with (task / "children").open() as fh:
            children += [int(c) for c in fh.read().split()]
    return [c for child in children for c in (child, *_descendants(child))]


def _status_kb(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def drive(server: Server, scenario: Scenario, duration_s: float, generator: Any) -> LoadResult:
    path, bodies = (
        (server.batch_path, server.batch_bodies) if scenario.batch else (server.single_path, server.single_bodies)
    )
    url = server.url + path
    run_load(url, bodies, concurrency=scenario.concurrency, max_requests=200, duration_s=2, generator=generator)
    return run_load(
        url,
        bodies,
        concurrency=scenario.concurrency,
        max_requests=scenario.max_requests,
        duration_s=duration_s,
        generator=generator,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one on --rows rows)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows to train the bench bundle on")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (upper bound)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    parser.add_argument("--workdir", type=Path, help="keep bundles, stores and server logs here (default: temporary)")
    args = parser.parse_args()
    generator = available_generator(args.generator)
    print(f"load generator: {generator}", flush=True)

    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-serve-")))
        workdir.mkdir(parents=True, exist_ok=True)
        bundle_dir = args.bundle
        if bundle_dir is None:
            print(f"training the bench bundle on {args.rows:,} rows ...", flush=True)
            bundle_dir = train_bundle(args.rows, workdir)
        bundle = load_bundle(bundle_dir)
        singles = records(bundle, DISTINCT_RECORDS, seed=1)
        batches = [records(bundle, BATCH_ROWS, seed=s) for s in (2, 3, 4)]

        def encode(x: Any) -> bytes:
            return json.dumps(x, separators=(",", ":")).encode()

        floor_figures = floor(bundle)
        print("in-process floor: " + ", ".join(f"{k} {v:.3f}" for k, v in floor_figures.items()), flush=True)
        ours = stack.enter_context(
            our_server(
                bundle_dir,
                workdir,
                ([encode(r) for r in singles], [encode({"records": b}) for b in batches]),
            )
        )
        theirs = stack.enter_context(
            mlflow_server(
                bundle,
                workdir,
                (
                    [encode({"dataframe_records": [r]}) for r in singles],
                    [encode({"dataframe_records": b}) for b in batches],
                ),
            )
        )
        servers = (ours, theirs)
        results: dict[str, dict[str, LoadResult]] = {}
        for i, scenario in enumerate(SCENARIOS):
            results[scenario.name] = {}
            for server in servers if i % 2 == 0 else servers[::-1]:  # alternate which goes first
                result = drive(server, scenario, args.duration, generator)
                results[scenario.name][server.name] = result
                rows = BATCH_ROWS if scenario.batch else 1
                print(
                    f"{scenario.name:<13} {server.name:<20} {result.rps:9.1f} req/s {result.rps * rows:10.0f} rows/s"
                    f"  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  errors {result.errors}"
                    f"  ({result.requests} requests in {result.seconds:.1f}s)",
                    flush=True,
                )
        memory = {server.name: rss_mb(server.pid) for server in servers}
    report = summarise(results, memory, floor_figures, generator, args, bundle)
    for line in report["summary"]:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def summarise(
    results: dict[str, dict[str, LoadResult]],
    memory: dict[str, dict[str, float]],
    floor_figures: dict[str, float],
    generator: str,
    args: argparse.Namespace,
    bundle: Bundle,
) -> dict[str, Any]:
    ours, theirs = "this server", "mlflow models serve"

    def ratio(scenario: str, key: str) -> float:
        a, b = results[scenario][ours], results[scenario][theirs]
        value = {"rps": (a.rps, b.rps), "p50": (a.p50_ms, b.p50_ms), "p99": (a.p99_ms, b.p99_ms)}[key]
        return round(value[0] / value[1], 2) if value[1] else float("inf")

    c1 = results["single c1"][ours]
    targets = {
        "c32 throughput >= 10x mlflow": ratio("single c32", "rps") >= 10,
        "c32 p99 <= 1/5 mlflow": ratio("single c32", "p99") <= 0.2,
        "c1 throughput >= 3x mlflow": ratio("single c1", "rps") >= 3,
        "c1 p50 <= 1.5x in-process Bundle.predict": c1.p50_ms <= 1.5 * floor_figures["bundle_predict_1_ms"],
        "batch1000 c4 rows/s >= 2x mlflow": ratio("batch1000 c4", "rps") >= 2,
        "worker RSS below mlflow's": memory[ours]["worker_rss_mb"] < memory[theirs]["worker_rss_mb"],
    }
    ratios = {s: {k: ratio(s, k) for k in ("rps", "p50", "p99")} for s in results}
    summary = [
        f"ratios to mlflow (this server / mlflow): {json.dumps(ratios)}",
        f"c1 p50 {c1.p50_ms:.2f} ms vs in-process Bundle.predict {floor_figures['bundle_predict_1_ms']:.2f} ms "
        f"({c1.p50_ms / floor_figures['bundle_predict_1_ms']:.2f}x)",
        f"RSS: {json.dumps(memory)}",
        *(f"target {'MET ' if ok else 'MISS'} {name}" for name, ok in targets.items()),
    ]
    return {
        "benchmark": "serve",
        "generator": generator,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "duration_s": args.duration,
        "bundle_rows": bundle.metadata.rows,
        "bundle_hash": bundle.content_hash,
        "wrk": shutil.which("wrk"),
        "floor": floor_figures,
        "results": {s: {name: r.as_dict() for name, r in by.items()} for s, by in results.items()},
        "ratios_to_mlflow": ratios,
        "memory": memory,
        "targets": targets,
        "summary": summary,
    }


if __name__ == "__main__":
    main()
