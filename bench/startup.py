"""Container start-up time: entrypoint launch -> 200 on /health/ready, with a big bundle from S3 (moto).

Split into the entrypoint's own phases (parsed from its progress lines) and the server's (from its log):
``imports`` (interpreter and settings), ``resolve`` (MLflow REST look-up), ``pull`` (from the moto
server), ``verify`` (DVC hash + content hash), ``server_start`` (the "serve:" line -> uvicorn's "Application
startup complete"), ``load`` (-> "bundle loaded") and ``ready`` (-> first 200). Each cold start runs twice: with
the S3 keys in the environment (the entrypoint execs a fresh interpreter without them) and in a credentials file
(as the Kubernetes Deployment mounts them: the server runs in the entrypoint's interpreter). For comparison it
times ``mlflow models serve --env-manager local`` on the same registered model, launch -> first 200 on /ping and
-> first successful /invocations.

The entrypoint runs from ``bench/.venvs/serve``, the image's serving venv (``bench.peers.serving_venv``), and
both it and the project's venv (mlflow's) are bytecode-compiled first, as an image's would be.

The bundle is a bigger model (1,450 trees of up to 63 leaves, with its serving form), trained once and kept in
``bench/results/startup-bundle/``. Usage::

    uv run python -m bench.startup [--runs 3] [--retrain] [--out bench/results/startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from app.contract.bundle import read_metadata
from bench.peers import compile_bytecode, compiled_walk, serving_venv
from orchestration.config import load_config
from orchestration.data import DEFAULT_ROWS, generate, write_csv
from orchestration.pipeline import run_pipeline
from orchestration.publish import PublishTarget, publish_bundle
from tests.harness.services import LOOPBACK, S3_ENV, free_port, mlflow_server, moto_server, s3_keys_in_file, stop

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
STEP = re.compile(r"^entrypoint: (?P<step>\w+) done in (?P<seconds>[0-9.]+)s")
# A bigger model: every iteration runs (no early stop), 1,450 trees.
# 63 leaves a tree: the most a serving form takes is 64 (app.contract.serving_form), and the server predicts from one
BIG_MODEL = {"max_iter": 1450, "max_leaf_nodes": 63, "min_samples_leaf": 5, "learning_rate": 0.05}


def big_bundle(path: Path, rows: int, retrain: bool) -> Path:
    """Train (or reuse) the benchmark bundle."""
    params = read_metadata(path).params if path.is_dir() else {}
    if not retrain and all(params.get(name) == value for name, value in BIG_MODEL.items()):
        return path
    config = load_config()
    model = config.model.model_copy(update={**BIG_MODEL, "n_iter_no_change": BIG_MODEL["max_iter"]})
    with tempfile.TemporaryDirectory() as tmp:
        data = write_csv(generate(rows), Path(tmp) / "flights.csv")
        run_pipeline(data, config.model_copy(update={"model": model}), path)
    return path


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir()) / 2**20


class Lines:
    """A child's output lines, each stamped with its arrival time (monotonic)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, needle: str) -> float | None:
        return next((at for at, line in list(self.lines) if needle in line), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def first_200(
    url: str, timeout: float, process: subprocess.Popen[str], output: Lines, body: bytes | None = None
) -> float:
    """Poll ``url`` until it answers 200; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            time.sleep(0.5)  # the reader thread catches the last lines
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before {url} answered:\n" + output.text()[-3000:]
            )
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=5) as r:
                if r.status == 200:
                    return time.monotonic()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def launch(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], Lines, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    return process, Lines(process.stdout), started


def time_entrypoint(target: PublishTarget, model_dir: Path, serve_bin: Path, keys: str) -> dict[str, float]:
    """One start of the entrypoint from the image's serving venv (``serve_bin``); phases in seconds.

    ``keys``: ``environment`` (the S3 keys in ``AWS_*``: the entrypoint execs a fresh interpreter without them)
    or ``file`` (in a credentials file, as the Kubernetes Deployment mounts its Secret: the server runs in the
    entrypoint's interpreter, its imports overlapping the pull)."""
    port = free_port()
    credentials = s3_keys_in_file(model_dir.parent / f"{model_dir.name}-s3-credentials") if keys == "file" else {}
    env = {
        **S3_ENV,
        **credentials,
        "MODEL_DIR": str(model_dir),
        "DVC_REMOTE_URL": target.remote_url,
        "DVC_REMOTE_ENDPOINT_URL": str(target.endpoint_url),
        "MLFLOW_TRACKING_URI": target.tracking_uri,
        "MODEL_NAME": target.model_name,
        "HOST": LOOPBACK,
        "PORT": str(port),
        "LOG_FORMAT": "text",
        "PYTHONPATH": str(ROOT),
    }
    process, lines, started = launch([str(serve_bin / "python"), "-m", "app.entrypoint"], env)
    try:
        ready = first_200(f"http://{LOOPBACK}:{port}/health/ready", 300, process, lines)
    finally:
        stop(process)  # type: ignore[arg-type]
    steps = {m["step"]: float(m["seconds"]) for _, line in lines.lines if (m := STEP.match(line))}
    settings_at, exec_at = lines.first("entrypoint: settings done"), lines.first("entrypoint: serve: ")
    app_at, loaded_at = lines.first("Application startup complete"), lines.first("bundle loaded")
    if None in (settings_at, exec_at, app_at, loaded_at):
        raise RuntimeError(f"progress lines missing from the entrypoint's output:\n{lines.text()}")
    assert settings_at and exec_at and app_at and loaded_at
    return {
        "imports": round(settings_at - started, 3),
        "resolve": steps["resolve"],
        "pull": steps.get("pull", 0.0),  # a restart on a volume holding the bundle pulls nothing
        "verify": steps["verify"],
        "server_start": round(app_at - exec_at, 3),  # from the "serve:" line (exec, or not)
        "load": round(loaded_at - app_at, 3),
        "ready_after_load": round(ready - loaded_at, 3),
        "total": round(ready - started, 3),
    }


def time_mlflow_serve(target: PublishTarget, example: dict[str, Any]) -> dict[str, float]:
    """``mlflow models serve --env-manager local`` on the registered model: launch -> first 200s."""
    port = free_port()
    args = [
        str(Path(sys.executable).parent / "mlflow"), "models", "serve",
        "-m", f"models:/{target.model_name}@champion", "--env-manager", "local",
        "-h", LOOPBACK, "-p", str(port), "--workers", "1",
    ]  # fmt: skip
    bin_dir = str(Path(sys.executable).parent)  # mlflow execs `uvicorn` through the shell: it must be on PATH
    env = {
        **S3_ENV,
        "MLFLOW_TRACKING_URI": target.tracking_uri,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process, output, started = launch(args, env)
    body = json.dumps({"dataframe_records": [example]}).encode()
    try:
        ping = first_200(f"http://{LOOPBACK}:{port}/ping", 300, process, output)
        invocation = first_200(f"http://{LOOPBACK}:{port}/invocations", 120, process, output, body)
    finally:
        stop(process)  # type: ignore[arg-type]
    return {"ping": round(ping - started, 3), "first_invocation": round(invocation - started, 3)}


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="cold starts (fresh MODEL_DIR) and mlflow serves")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--retrain", action="store_true", help="train the benchmark bundle again")
    parser.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the servers it started

    bundle = big_bundle(RESULTS / "startup-bundle", args.rows, args.retrain)
    metadata = read_metadata(bundle)
    print(f"bundle: {bundle} ({size_mb(bundle):.1f} MB, {metadata.params.get('n_iter')} trees)", flush=True)
    serve_bin = serving_venv(lambda line: print(line, flush=True))
    compiled_walk(lambda line: print(line, flush=True))
    compile_bytecode(Path(sys.executable), lambda line: print(line, flush=True))  # mlflow's start reads bytecode too
    os.environ.update(S3_ENV)  # publishing in this process pushes with the same fake credentials
    with tempfile.TemporaryDirectory() as tmp, moto_server() as s3:
        s3.create_bucket("bench")
        with mlflow_server(Path(tmp) / "mlflow", s3, log=Path(tmp) / "mlflow.log") as mlflow_uri:
            target = PublishTarget("s3://bench/dvc", mlflow_uri, "bench-startup", endpoint_url=s3.endpoint_url)
            published = publish_bundle(bundle, target)
            print(f"published version {published.version}, bundle {published.dvc_hash}", flush=True)
            cold: list[dict[str, float]] = []
            cold_file: list[dict[str, float]] = []
            for n in range(args.runs):  # the two ways of giving the keys alternate
                cold.append(time_entrypoint(target, Path(tmp) / f"models-{n}", serve_bin, "environment"))
                print(f"entrypoint cold start {n + 1}, S3 keys in the environment: {cold[-1]}", flush=True)
                cold_file.append(time_entrypoint(target, Path(tmp) / f"models-file-{n}", serve_bin, "file"))
                print(f"entrypoint cold start {n + 1}, S3 keys in a file: {cold_file[-1]}", flush=True)
            # restart on a volume that has the bundle
            warm = time_entrypoint(target, Path(tmp) / "models-0", serve_bin, "environment")
            print(f"entrypoint warm restart: {warm}", flush=True)
            served = []
            for n in range(args.runs):
                served.append(time_mlflow_serve(target, metadata.example))
                print(f"mlflow models serve {n + 1}: {served[-1]}", flush=True)

    report: dict[str, Any] = {
        "benchmark": "startup",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "bundle_mb": round(size_mb(bundle), 1),
        "trees": metadata.params.get("n_iter"),
        "entrypoint_cold_median_s": summary(cold),
        "entrypoint_cold_runs_s": cold,
        "entrypoint_cold_keys_in_file_median_s": summary(cold_file),
        "entrypoint_cold_keys_in_file_runs_s": cold_file,
        "entrypoint_warm_restart_s": warm,
        "mlflow_models_serve_median_s": summary(served),
        "mlflow_models_serve_runs_s": served,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    mlflow_median = summary(served)
    lines = []
    for how, runs in (("S3 keys in the environment", cold), ("S3 keys in a file", cold_file)):
        median = summary(runs)
        lines.append(
            f"entrypoint -> /health/ready (median of cold starts, {how}): "
            + ", ".join(f"{k} {v:.2f}s" for k, v in median.items())
            + f"; {median['total'] / mlflow_median['first_invocation']:.2f}x mlflow's first answer"
        )
    print(
        "\n" + "\n".join(lines) + f"\nmlflow models serve (median): /ping {mlflow_median['ping']:.2f}s, "
        f"first /invocations {mlflow_median['first_invocation']:.2f}s\nwrote {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
