"""A tiny MLflow registry stand-in: ``python -m tests.smoke.mock_mlflow --bundle DIR --dvc-hash-file FILE``.

It answers the REST calls ``app.registry.RestRegistry`` makes, for one registered version (version 1 of
``--model-name``, alias ``champion``) tagged with the bundle's DVC hash, content hash and data hash, the way
``python -m orchestration publish`` tags it. Standard library only; ``GET /health`` answers ``OK``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Final

from app.contract.bundle import read_metadata
from app.contract.connection import DEFAULT_MODEL_NAME
from app.contract.registry import TAG_CONTENT_HASH, TAG_DATA_HASH, TAG_DVC_HASH

API: Final = "/api/2.0/mlflow/"
RUN_ID: Final = "smoke0000000000000000000000000001"
# The one filter form RestRegistry.versions_tagged sends: tags.<key> = '<value>'
TAG_FILTER: Final = re.compile(r"^tags\.(?P<key>[\w.-]+)\s*=\s*'(?P<value>[^']*)'$")


@dataclass(frozen=True)
class RegisteredVersion:
    """The one model version the mock knows."""

    name: str
    version: int
    alias: str
    tags: dict[str, str]

    def as_rest(self) -> dict[str, Any]:
        """The version as MLflow's REST API renders it."""
        return {
            "name": self.name,
            "version": str(self.version),
            "run_id": RUN_ID,
            "current_stage": "None",
            "status": "READY",
            "aliases": [self.alias],
            "tags": [{"key": key, "value": value} for key, value in self.tags.items()],
        }


def registered_version(bundle: Path, dvc_hash: str, model_name: str, alias: str = "champion") -> RegisteredVersion:
    """Version 1 of ``model_name`` for the bundle at ``bundle``, pushed to DVC as ``dvc_hash``."""
    metadata = read_metadata(bundle)
    tags = {TAG_DVC_HASH: dvc_hash, TAG_CONTENT_HASH: metadata.content_hash, TAG_DATA_HASH: metadata.data_hash}
    return RegisteredVersion(name=model_name, version=1, alias=alias, tags=tags)


def answer(path: str, query: dict[str, str], registered: RegisteredVersion) -> tuple[int, dict[str, Any]]:
    """Status and JSON body for one GET: the registry calls, or MLflow's RESOURCE_DOES_NOT_EXIST."""
    endpoint = path.removeprefix(API)
    name_matches = query.get("name") == registered.name
    if endpoint == "registered-models/alias" and name_matches and query.get("alias") == registered.alias:
        return 200, {"model_version": registered.as_rest()}
    if endpoint == "model-versions/get" and name_matches and query.get("version") == str(registered.version):
        return 200, {"model_version": registered.as_rest()}
    if endpoint == "model-versions/search":
        match = TAG_FILTER.match(query.get("filter", "").strip())
        if match is None:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"unsupported filter {query}"}
        found = registered.tags.get(match["key"]) == match["value"]
        return 200, {"model_versions": [registered.as_rest()] if found else []}
    return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{endpoint} {query} not found"}


def make_server(host: str, port: int, registered: RegisteredVersion) -> ThreadingHTTPServer:
    """An HTTP server answering the registry calls for ``registered``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/health":
                status, body = 200, b"OK"
            else:
                query = dict(urllib.parse.parse_qsl(url.query))
                code, payload = answer(url.path, query, registered)
                status, body = code, json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if url.path != "/health" else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            print(f"mock-mlflow: {format % args}", file=sys.stderr, flush=True)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.smoke.mock_mlflow", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--bundle", type=Path, required=True, help="the registered bundle directory")
    parser.add_argument("--dvc-hash-file", type=Path, required=True, help="file holding the bundle's DVC hash")
    args = parser.parse_args(argv)

    registered = registered_version(args.bundle, args.dvc_hash_file.read_text().strip(), args.model_name)
    server = make_server(args.host, args.port, registered)

    def shutdown(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    print(
        f"mock-mlflow: {registered.name}@{registered.alias} -> version {registered.version}, "
        f"{TAG_DVC_HASH}={registered.tags[TAG_DVC_HASH]} on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
