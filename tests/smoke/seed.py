"""Seed a DVC remote with a small, freshly trained bundle: ``python -m tests.smoke.seed --out DIR --remote-url URL``.

Trains a small bundle into ``DIR/bundle`` (once: an existing bundle is reused, so every remote gets the same
bytes), pushes it with DVC to ``--remote-url`` (a directory, or ``s3://bucket/prefix`` on ``--endpoint-url``),
writes its DVC hash to ``DIR/dvc-hash`` and prints it on stdout (progress goes to stderr).

``--serve HOST:PORT`` makes this process the S3 store: a moto server is seeded on a private loopback port
first, and only then does the store listen on HOST:PORT, so whoever connects finds the bundle already there
(the Dagger smoke stage's S3 service). It serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Final

from orchestration.config import load_config
from orchestration.data import generate, write_csv
from orchestration.pipeline import Progress, run_pipeline
from orchestration.publish import PublishTarget, push_bundle
from tests.harness.services import LOOPBACK, S3_ENV, S3Server, free_port

SMALL_ROWS: Final = 8_000
HASH_FILE: Final = "dvc-hash"


def train_small_bundle(out: Path, rows: int, seed: int) -> Path:
    """``out/bundle``, trained on ``rows`` generated flights unless it is already there."""
    bundle = out / "bundle"
    if not (bundle / "metadata.json").is_file():
        data = write_csv(generate(rows, seed=seed), out / "data" / "flights.csv")
        run_pipeline(data, load_config(), bundle, Progress(stream=sys.stderr))
    return bundle


def push(bundle: Path, remote_url: str, endpoint_url: str | None, region: str | None) -> str:
    """Push ``bundle`` with DVC (creating the S3 bucket if needed); its DVC hash."""
    if remote_url.startswith("s3://"):
        if endpoint_url is None:
            raise SystemExit("error: --endpoint-url is required for an s3:// remote")
        S3Server(endpoint_url).create_bucket(remote_url.removeprefix("s3://").split("/", 1)[0])
    else:
        endpoint_url = region = None  # a directory remote has neither
    # push_bundle only talks to the DVC remote; the smoke registry is the mock, which needs no registration
    target = PublishTarget(remote_url=remote_url, tracking_uri="", endpoint_url=endpoint_url, region=region)
    dvc_hash, uploaded = push_bundle(bundle, target)
    print(f"seed: pushed {bundle} to {remote_url} as {dvc_hash} ({uploaded} new files)", file=sys.stderr, flush=True)
    return dvc_hash


def record_hash(out: Path, dvc_hash: str) -> None:
    """Write ``out/dvc-hash``; a different hash already there means two remotes got different bundles."""
    path = out / HASH_FILE
    if path.is_file() and path.read_text().strip() != dvc_hash:
        raise SystemExit(f"error: {path} says {path.read_text().strip()}, but this push gave {dvc_hash}")
    path.write_text(dvc_hash + "\n")


def serve_store(bind: str) -> tuple[str, Any]:
    """Start moto's S3 server on ``bind`` (host:port) in this process; its URL and the server."""
    from moto.server import ThreadedMotoServer

    host, _, port = bind.rpartition(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    return f"http://{LOOPBACK if host in ('0.0.0.0', '') else host}:{port}", server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.smoke.seed", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for bundle/, data/ and dvc-hash")
    parser.add_argument("--remote-url", required=True, help="DVC remote: a directory or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", help="S3 endpoint (not with --serve, which is its own endpoint)")
    parser.add_argument("--region", default=S3_ENV["AWS_DEFAULT_REGION"])
    parser.add_argument("--rows", type=int, default=SMALL_ROWS)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--serve", metavar="HOST:PORT", help="host the S3 store here after seeding it")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    bundle = train_small_bundle(args.out, args.rows, args.seed)
    if args.serve is None:
        dvc_hash = push(bundle, args.remote_url, args.endpoint_url, args.region)
        record_hash(args.out, dvc_hash)
        print(dvc_hash, flush=True)
        return 0

    # moto accepts any credentials; DVC needs some to sign its requests.
    for name, value in S3_ENV.items():
        os.environ.setdefault(name, value)
    private_url, private = serve_store(f"{LOOPBACK}:{free_port()}")
    dvc_hash = push(bundle, args.remote_url, private_url, args.region)
    record_hash(args.out, dvc_hash)
    _, public = serve_store(args.serve)  # same process, same moto backend: the bundle is already there
    print(dvc_hash, flush=True)
    print(f"seed: S3 store seeded and listening on {args.serve}", file=sys.stderr, flush=True)

    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopped.wait()
    for server in (public, private):
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
