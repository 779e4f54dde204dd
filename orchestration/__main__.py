"""Command line of the training side: generate data, train a bundle, publish it, or run the quickstart."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.contract.bundle import BundleError
from app.contract.connection import (
    DEFAULT_ALIAS,
    DEFAULT_SERVING_PORT,
    SettingsError,
    load_connection_settings,
    redact,
)
from orchestration.config import DEFAULT_PARAMS, ConfigError, load_config
from orchestration.data import DataError, generate, write_csv
from orchestration.defaults import DEFAULT_ROWS, DEFAULT_SEED
from orchestration.evaluate import QualityGateError
from orchestration.pipeline import metrics_table, run_pipeline
from orchestration.validate import DataValidationError

if TYPE_CHECKING:
    from orchestration.tracking import TrackingTarget


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
    train.add_argument(
        "--tracking-uri",
        help="record the training run in this MLflow store: http(s)://... or sqlite:///... "
        "(default: MLFLOW_TRACKING_URI; neither: no run)",
    )
    train.add_argument("--model-name", help="the run's experiment, the model's registered name (default: MODEL_NAME)")

    publish = commands.add_parser(
        "publish",
        help="dvc push a bundle and register it in MLflow (idempotent)",
        description="Defaults come from the serving variables (DVC_REMOTE_URL, MLFLOW_TRACKING_URI, MODEL_NAME, "
        "DVC_REMOTE_ENDPOINT_URL, DVC_REMOTE_REGION); S3 credentials from the standard AWS_* variables.",
    )
    publish.add_argument("bundle", type=Path, nargs="?", default=Path("artifacts/bundle"), help="bundle directory")
    publish.add_argument("--remote", help="DVC remote: s3://bucket/prefix or a directory")
    publish.add_argument("--tracking-uri", help="MLflow tracking URI: http(s)://... or sqlite:///...")
    publish.add_argument("--model-name", help="registered model name")
    publish.add_argument("--endpoint-url", help="endpoint of an S3-compatible store")
    publish.add_argument("--region", help="S3 region")
    publish.add_argument("--alias", default=DEFAULT_ALIAS, help="alias to point at the version (default: %(default)s)")
    publish.add_argument("--no-alias", action="store_true", help="register without moving any alias")

    quick = commands.add_parser(
        "quickstart",
        help="train and publish locally if needed, then serve through the container's entrypoint",
        description="State lives in ./.quickstart/ (a directory DVC remote and a sqlite MLflow store). With --data "
        "(and --config): train on your file every run and serve that bundle from BUNDLE_DIR (no registry).",
    )
    quick.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows to train on when nothing is published")
    quick.add_argument("--port", type=int, default=DEFAULT_SERVING_PORT, help="port (default: %(default)s)")
    quick.add_argument("--state", type=Path, default=Path(".quickstart"), help="state directory (default: %(default)s)")
    quick.add_argument(
        "--data", type=Path, help="your CSV or Parquet file: train on it (every run) and serve it from BUNDLE_DIR"
    )
    quick.add_argument("--config", type=Path, help="params file of --data (default: the flight data's)")
    return parser


def _publish(args: argparse.Namespace) -> int:
    # MLflow and DVC load only for this command: `generate` and `train` stay quick to start.
    from orchestration.publish import PublishError, PublishTarget, publish_bundle

    flags = {
        "dvc_remote_url": args.remote,
        "mlflow_tracking_uri": args.tracking_uri,
        "model_name": args.model_name,
        "dvc_remote_endpoint_url": args.endpoint_url,
        "dvc_remote_region": args.region,
    }
    settings = load_connection_settings().model_copy(update={k: v for k, v in flags.items() if v})
    if not settings.dvc_remote_url or not settings.mlflow_tracking_uri:
        missing = [
            flag
            for flag, value in (("--remote", settings.dvc_remote_url), ("--tracking-uri", settings.mlflow_tracking_uri))
            if not value
        ]
        print(f"error: set {' and '.join(missing)} (or DVC_REMOTE_URL / MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    target = PublishTarget.from_settings(settings)  # flags override the environment
    try:
        published = publish_bundle(args.bundle, target, alias=None if args.no_alias else args.alias, report=print)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = "new version" if published.created else "already registered, no new version"
    print(f"published {target.model_name} version {published.version} ({state}); bundle {published.dvc_hash}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "publish":
            return _publish(args)
        if args.command == "quickstart":
            if args.config is not None and args.data is None:
                print("error: --config names the params of --data: give --data too", file=sys.stderr)
                return 2
            from orchestration.quickstart import run_quickstart

            own = {"data": args.data, "config": args.config or DEFAULT_PARAMS} if args.data else {}
            return run_quickstart(rows=args.rows, port=args.port, state=args.state, **own)
        if args.command == "generate":
            write_csv(generate(args.rows, args.seed), args.out)
            print(f"wrote {args.rows} rows to {args.out}")
            return 0
        config = load_config(args.config)
        tracking = _tracking(args)
        data_path: Path = args.data
        if data_path is None:
            print(f"generating {args.rows} rows (seed {args.seed}) ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            data_path = write_csv(generate(args.rows, args.seed), args.out.parent / "data" / "flights.csv")
            elapsed = time.perf_counter() - started
            print(f"generated {args.rows} rows at {data_path} in {elapsed:.1f}s", file=sys.stderr, flush=True)
        result = run_pipeline(data_path, config, args.out, tracking=tracking)
    except (ConfigError, DataError, DataValidationError, QualityGateError, BundleError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(metrics_table(result.metadata))
    print(f"bundle: {result.bundle_dir} (content hash {result.metadata.content_hash})")
    if result.run_id:
        print(f"mlflow: training run {result.run_id} at {redact(tracking.tracking_uri) if tracking else ''}")
    return 0


def _tracking(args: argparse.Namespace) -> TrackingTarget | None:
    """Where ``train`` records its run: the flags, else MLFLOW_TRACKING_URI and MODEL_NAME; None without a URI."""
    from orchestration.tracking import TrackingTarget

    settings = load_connection_settings()
    uri = args.tracking_uri or settings.mlflow_tracking_uri
    if not uri:
        print("mlflow: no --tracking-uri or MLFLOW_TRACKING_URI: the training run is not recorded", file=sys.stderr)
        return None
    return TrackingTarget(uri, args.model_name or settings.model_name)


if __name__ == "__main__":
    sys.exit(main())
