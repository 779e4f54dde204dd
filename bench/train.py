"""Wall time and peak memory of the full training pipeline at 270k and 2.7M rows.

Each size runs in a fresh subprocess (``python -m orchestration train``), so its peak RSS is its own.
Usage: ``uv run python -m bench.train [--rows 271888 2718880] [--out bench/results/train.json]``
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

from orchestration.data import generate, write_csv

ROOT = Path(__file__).resolve().parents[1]

STAGE_LINE = re.compile(r"^\s+(?P<stage>[a-z ]+) done in (?P<seconds>[0-9.]+)s")


def run_once(rows: int, workdir: Path) -> dict[str, Any]:
    data = write_csv(generate(rows), workdir / f"flights-{rows}.csv")
    args = [
        sys.executable,
        "-m",
        "orchestration",
        "train",
        "--data",
        str(data),
        "--out",
        str(workdir / f"bundle-{rows}"),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {rows} rows failed:\n{err}")
    stages = {m["stage"]: float(m["seconds"]) for m in map(STAGE_LINE.match, err.splitlines()) if m}
    rmse = re.search(r"^rmse\s+([0-9.]+)\s+([0-9.]+)", out, re.MULTILINE)
    return {
        "rows": rows,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "stages_s": stages,
        "test_rmse": float(rmse[1]) if rmse else None,
        "baseline_rmse": float(rmse[2]) if rmse else None,
        "data_mb": round(data.stat().st_size / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[271_888, 2_718_880])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            result = run_once(rows, Path(tmp))
            results.append(result)
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in result["stages_s"].items())
            print(
                f"{rows:>10,} rows: {result['wall_s']:7.1f} s wall, peak RSS {result['peak_rss_mb']:7.0f} MB, "
                f"test RMSE {result['test_rmse']} (baseline {result['baseline_rmse']})\n            {stages}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "train", "cpus": os.cpu_count(), "python": sys.version.split()[0], "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
