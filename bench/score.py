"""Offline scoring of a large CSV: ``python -m app.score`` against ``mlflow models predict`` on the same model.

Generates ``--rows`` flight records with the training data's generator (``orchestration.data.generate``, the
``price`` column dropped), trains a bundle (``--train-rows``, as ``bench.serve`` does) or takes ``--bundle``,
saves it as the pyfunc model publish registers (``orchestration.publish``: the same code file, code paths,
signature and requirements), then scores the file with each command in a fresh child process:

- ``python -m app.score flights.csv out.parquet --bundle <bundle> --keep id --no-progress``;
- ``mlflow models predict -m <pyfunc model> -i flights.csv -t csv -o out.json --env-manager local``
  (MLflow's documented local batch path: it reads the whole CSV into pandas and writes JSON).

For each: the wall time from launch to exit (interpreter start and model load included), rows/s over it, and the
peak RSS (``os.wait4``'s ``ru_maxrss``: the largest of the process and the children it waited for). Then both
outputs are compared row by row, bit for bit. Usage:
``nice uv run --frozen python -m bench.score [--rows 1000000] [--out bench/results/score.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
    """``args`` to completion in ``workdir``, its output in ``logs``: wall time, rows/s, peak RSS (its output's
    last lines on failure)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PYTHONPATH", None)
    log = logs / f"{Path(args[0]).name}-{len(list(logs.glob('*.log')))}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{log.read_text()[-3000:]}")
    return {
        "command": " ".join(Path(a).name if a.startswith("/") else a for a in args),
        "wall_s": round(wall, 2),
        "rows_per_s": round(rows / wall),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "log_tail": log.read_text().strip().splitlines()[-1:],
    }


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
    args = parser.parse_args()
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

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
    }
    print(json.dumps({k: v for k, v in report.items() if k not in ("app_score", "mlflow_models_predict")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
