"""Command line: ``python -m orchestration {generate,train} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.bundle import BundleError
from orchestration.config import DEFAULT_PARAMS, ConfigError, load_config
from orchestration.data import DEFAULT_ROWS, DEFAULT_SEED, DataError, generate, write_csv
from orchestration.evaluate import QualityGateError
from orchestration.pipeline import metrics_table, run_pipeline
from orchestration.validate import DataValidationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestration", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write the synthetic flight-price data set as CSV")
    gen.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED)
    gen.add_argument("--out", type=Path, default=Path("data/flights.csv"))

    train = commands.add_parser("train", help="run the training pipeline and write a bundle")
    train.add_argument("--data", type=Path, help="CSV or Parquet file (default: generate the flight data set)")
    train.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows to generate when --data is not given")
    train.add_argument("--seed", type=int, default=DEFAULT_SEED)
    train.add_argument("--config", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    train.add_argument("--out", type=Path, default=Path("artifacts/bundle"), help="bundle directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            write_csv(generate(args.rows, args.seed), args.out)
            print(f"wrote {args.rows} rows to {args.out}")
            return 0
        config = load_config(args.config)
        data_path: Path = args.data
        if data_path is None:
            data_path = write_csv(generate(args.rows, args.seed), args.out.parent / "data" / "flights.csv")
            print(f"generated {args.rows} rows (seed {args.seed}) at {data_path}", file=sys.stderr)
        result = run_pipeline(data_path, config, args.out)
    except (ConfigError, DataError, DataValidationError, QualityGateError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(metrics_table(result.metadata))
    print(f"bundle: {result.bundle_dir} (content hash {result.metadata.content_hash})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
