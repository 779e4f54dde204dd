"""Offline scoring of a large CSV: ``python -m app.score`` against ``mlflow models predict`` on the same model.

Generates ``--rows`` flight records with the training data's generator (``orchestration.data.generate``, the
``price`` column dropped), trains a bundle (``--train-rows``, as ``bench.serve`` does) or takes ``--bundle``,
saves it as the pyfunc model publish registers (``orchestration.publish``: the same code file, code paths,
signature and requirements), then scores the file with each command in a fresh child process:

- ``python -m app.score flights.csv out.parquet --bundle <bundle> --keep id --no-progress``;
- ``mlflow models predict -m <pyfunc model> -i flights.csv -t csv -o out.json --env-manager local``
  (MLflow's documented local batch path: it reads the whole CSV into pandas and writes JSON).

For each: the wall time from launch to exit (interpreter start and model load included), rows/s over it, and the
peak RSS (GNU time's "Maximum resident set size": the largest of the process and the children it waited for). Then both
outputs are compared row by row, bit for bit. Usage:
``nice uv run --frozen python -m bench.score [--rows 1000000] [--out bench/results/score.json]``; with
``--steps-only``, only the seconds of each step of ``app.score`` on one 50,000-row chunk, in process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"  # GNU time (Debian's ``time`` package)


def flights_csv(rows: int, path: Path) -> Path:
    """``rows`` generated flights (seed 3: not the training data), with an ``id`` column and no ``price``."""
    from orchestration.data import generate, write_csv

    frame = generate(rows, seed=3).drop(columns=["price"])
    frame.insert(0, "id", np.arange(rows))
    return write_csv(frame, path)


def save_pyfunc(bundle_dir: Path, into: Path) -> Path:
    """The bundle as the pyfunc model ``orchestration.publish`` registers, saved to a directory."""
    import mlflow
    import pandas as pd

    from app.contract.bundle import read_metadata
    from orchestration import bundle_model
    from orchestration.publish import model_code, model_requirements, signature

    metadata = read_metadata(bundle_dir)
    model_dir = into / "model"
    mlflow.pyfunc.save_model(
        model_dir,
        python_model=bundle_model.__file__,
        artifacts={bundle_model.BUNDLE_ARTIFACT: os.fspath(bundle_dir)},
        code_paths=model_code(into / "code"),
        uv_project_path=into / "code",  # as publish does: not this checkout's uv.lock
        signature=signature(metadata),
        input_example=pd.DataFrame([metadata.example]),
        pip_requirements=model_requirements(metadata.library_versions),
    )
    return model_dir


def run(args: list[str], workdir: Path, rows: int, logs: Path) -> dict[str, Any]:
    """``args`` to completion in ``workdir`` under GNU time (``/usr/bin/time -v``), its output in ``logs``: wall
    time, rows/s, peak RSS (its output's last lines on failure).

    The peak RSS is GNU time's "Maximum resident set size" of the command: ``wait4``'s ``ru_maxrss`` read from this
    process would count this process's own memory (the generated data set), which a forked child carries until it
    execs."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONPATH", None)
    log = logs / f"{Path(args[0]).name}-{len(list(logs.glob('*.log')))}.log"
    timing = log.with_suffix(".time")
    started = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run([TIME, "-v", "-o", str(timing), *args], cwd=workdir, env=env, stdout=out, stderr=out)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{log.read_text()[-3000:]}")
    peak_kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
    assert peak_kib is not None, timing.read_text()
    return {
        "command": " ".join(Path(a).name if a.startswith("/") else a for a in args),
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall),
        "peak_rss_mb": round(int(peak_kib[1]) / 1024, 1),
        "log_tail": log.read_text().strip().splitlines()[-1:],
    }


def chunk_steps(bundle_dir: Path, data: Path, rows: int) -> dict[str, float]:
    """Seconds of each step ``app.score`` takes on one chunk (the first ``rows`` rows of ``data``), in process:
    decoding the CSV's text, the request schema's validation, rows back to columns, the predictor."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.csv  # type: ignore[import-untyped]

    from app.contract.bundle import load_serving_bundle
    from app.model.schema import RecordSchema
    from app.score import decode

    bundle = load_serving_bundle(bundle_dir)
    names = pyarrow.csv.read_csv(data, read_options=pyarrow.csv.ReadOptions(block_size=1 << 16)).column_names
    types = pyarrow.csv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    table = pyarrow.csv.read_csv(data, convert_options=types).slice(0, rows)
    schema, predictor = RecordSchema.from_metadata(bundle.metadata, rows), bundle.form
    features = {feature.name: feature for feature in bundle.metadata.features}
    times = [time.perf_counter()]
    columns = {name: decode(table.column(name), features[name], 1) for name in features}
    times.append(time.perf_counter())
    parsed = schema.parse_columns(columns)
    times.append(time.perf_counter())
    values = schema.columns(parsed)
    times.append(time.perf_counter())
    predictor.predict(values)
    times.append(time.perf_counter())
    steps = ("decode_s", "validate_s", "to_columns_s", "predict_s")
    return {"rows": rows, **{step: round(b - a, 3) for step, a, b in zip(steps, times, times[1:], strict=False)}}


def agreement(ours: Any, theirs: Any) -> dict[str, Any]:
    """How the two outputs agree: every row bit for bit, else how many differ and by how much."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        return {"ok": False, "reason": f"{ours.size} predictions against {theirs.size}"}
    differ = ours.view(np.int64) != theirs.view(np.int64)
    return {
        "ok": not bool(differ.any()),
        "rows": int(ours.size),
        "rows_differing": int(differ.sum()),
        "max_abs_difference": float(np.max(np.abs(ours - theirs))) if ours.size else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to score")
    parser.add_argument("--train-rows", type=int, default=200_000, help="rows to train the bundle on")
    parser.add_argument("--bundle", type=Path, default=None, help="score with this bundle instead of training one")
    parser.add_argument("--chunk-rows", type=int, default=None, help="app.score's --chunk-rows (default its own)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "score.json")
    parser.add_argument(
        "--steps-only", action="store_true", help="only time app.score's steps on one 50,000-row chunk, in process"
    )
    args = parser.parse_args()
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    from bench.peers import compiled_walk

    compiled_walk(lambda line: print(line, flush=True))

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = Path(tmp)
        step = time.perf_counter()
        if args.bundle is None:
            from bench.serve import train_bundle

            (work / "train").mkdir()
            bundle_dir = train_bundle(args.train_rows, work / "train")
            print(f"trained a bundle on {args.train_rows:,} rows in {time.perf_counter() - step:.1f} s", flush=True)
        else:
            bundle_dir = args.bundle
        step = time.perf_counter()
        data = flights_csv(args.rows, work / "flights.csv")
        print(f"wrote {args.rows:,} rows ({data.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - step:.1f} s")
        steps = chunk_steps(bundle_dir, data, min(args.rows, 50_000))
        print(f"one chunk of app.score, in process: {steps}", flush=True)
        if args.steps_only:
            return
        model_dir = save_pyfunc(bundle_dir, work / "pyfunc")

        ours_out = work / "scored.parquet"
        ours_args = [sys.executable, "-m", "app.score", str(data), str(ours_out), "--bundle", str(bundle_dir)]
        ours_args += ["--keep", "id", "--no-progress"]
        if args.chunk_rows:
            ours_args += ["--chunk-rows", str(args.chunk_rows)]
        # run from the checkout (app.score is this repository's); mlflow from elsewhere (its model carries its code)
        ours = run(ours_args, ROOT, args.rows, work) | {"command": "python -m app.score flights.csv scored.parquet ..."}
        print(f"app.score: {ours}", flush=True)
        theirs_out = work / "mlflow.json"
        theirs_args = [str(BIN / "mlflow"), "models", "predict", "-m", str(model_dir), "-i", str(data), "-t", "csv"]
        theirs_args += ["-o", str(theirs_out), "--env-manager", "local"]
        theirs = run(theirs_args, work, args.rows, work)
        print(f"mlflow models predict: {theirs}", flush=True)

        table = pq.read_table(ours_out)
        assert table.column("id").to_pylist() == [str(i) for i in range(args.rows)], "app.score changed the order"
        answer = json.loads(theirs_out.read_text())
        predictions = answer["predictions"] if isinstance(answer, dict) else answer
        theirs_values = [p if isinstance(p, int | float) else next(iter(p.values())) for p in predictions]
        agree = agreement(table.column("prediction").to_numpy(), theirs_values)
        input_mb = round(data.stat().st_size / 2**20, 1)
    report = {
        "benchmark": "score",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "rows": args.rows,
        "train_rows": None if args.bundle else args.train_rows,
        "input_mb": input_mb,
        "app_score": ours,
        "mlflow_models_predict": theirs,
        "rows_per_s_ratio": round(ours["rows_per_s"] / theirs["rows_per_s"], 2),
        "peak_rss_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 2),
        "outputs_agree": agree,
        "app_score_chunk_steps": steps,
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("app_score", "mlflow_models_predict")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
