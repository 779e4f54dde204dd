"""Where one DAG run keeps its files: a prefix on the S3 store (any worker reaches it) or a local directory.

The training DAG's tasks hand each other URIs under the run's area, never paths on a worker's disk, so each task
can run on any worker: CeleryExecutor or KubernetesExecutor workers that share no disk. A task downloads the
inputs it names into a scratch directory of its own, writes its outputs there, and uploads them into the area.

``TRAINING_WORK_URL`` names the root: ``s3://bucket/prefix`` (the S3 store of the DVC remote: its endpoint
``DVC_REMOTE_ENDPOINT_URL`` and region ``DVC_REMOTE_REGION``, credentials from the standard ``AWS_*``
variables, read by the S3 client itself), or a local directory. Unset, it is a directory under the system's
temporary directory: enough for ``dag.test()`` and a LocalExecutor on one machine. With a local root the
scratch directory *is* the run's directory, so nothing is copied.

A run's area is keyed by its run id, so a rerun of the same DAG run finds what the first attempt recorded:
a stage whose record (``<stage>.json``, written after its files) is there, with every URI it names present,
returns the record instead of computing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from app.contract.connection import load_connection_settings

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

WORK_URL_ENV: Final = "TRAINING_WORK_URL"
DEFAULT_WORK_ROOT: Final = Path(tempfile.gettempdir()) / "flight-price-training"
REMOTE_SCHEMES: Final = ("s3://",)

Result = dict[str, Any]


class WorkAreaError(RuntimeError):
    """The work area's root is not usable (an unknown scheme, a URI outside the area)."""


def work_root() -> str:
    """The root under which each DAG run gets its area (``TRAINING_WORK_URL``, else a local temporary one)."""
    return os.environ.get(WORK_URL_ENV) or str(DEFAULT_WORK_ROOT)


def run_key(run_id: str) -> str:
    """The run's own name under the root: the same run id always maps to the same name.

    Run ids hold characters unsafe in paths and keys (``manual__2025-01-01T00:00:00+00:00``); a short hash of
    the exact id keeps two ids that sanitise alike apart.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(run_id.encode()).hexdigest()[:10]}"


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def s3_filesystem() -> AbstractFileSystem:
    """The S3 store of the DVC remote (its endpoint and region); the client reads the credentials itself."""
    from s3fs import S3FileSystem

    settings = load_connection_settings()
    client_kwargs = {"region_name": settings.dvc_remote_region} if settings.dvc_remote_region else {}
    return S3FileSystem(
        endpoint_url=settings.dvc_remote_endpoint_url, client_kwargs=client_kwargs, skip_instance_cache=True
    )


@dataclass
class WorkArea:
    """One run's area (``url``) as one task process sees it: with a scratch directory of its own."""

    url: str
    scratch: Path
    fs: AbstractFileSystem | None = None  # the S3 store; None for a local area
    _copies: dict[str, Path] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def uri(self, name: str) -> str:
        return f"{self.url}/{name}"

    def exists(self, uri: str) -> bool:
        return self.fs.exists(uri) if self.fs is not None else Path(uri).exists()

    def local(self, uri: str) -> Path:
        """A local copy of the file or directory at ``uri`` (itself when it is local), fetched once per task.

        ``uri`` may also be outside the area (a ``data_path`` given by the user): an ``s3://`` URI on the same
        store, or a local path.
        """
        if not is_remote(uri):
            return Path(uri)
        if uri in self._copies:
            return self._copies[uri]
        fs = self.fs if self.fs is not None else s3_filesystem()
        relative = uri[len(self.url) + 1 :] if uri.startswith(self.url + "/") else f"inputs/{uri.split('://', 1)[1]}"
        target = self.scratch / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if fs.isdir(uri):
            fs.get(uri.rstrip("/") + "/", str(target), recursive=True)
        else:
            fs.get(uri, str(target))
        self._copies[uri] = target
        return target

    def put(self, path: Path) -> str:
        """Store ``path`` (a file or directory written under the scratch directory) in the area; its URI."""
        relative = path.relative_to(self.scratch).as_posix()
        if self.fs is None:
            return str(path)  # the scratch directory is the area
        uri = self.uri(relative)
        if path.is_dir():
            if self.fs.exists(uri):
                self.fs.rm(uri, recursive=True)  # an earlier attempt's leftovers
            self.fs.put(str(path).rstrip("/") + "/", uri, recursive=True)
        else:
            self.fs.put_file(str(path), uri)
        self._copies[uri] = path
        return uri

    def write_json(self, name: str, value: Result) -> str:
        """Write ``name`` in the area in one step: a reader sees the whole record or none."""
        data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
        if self.fs is not None:
            self.fs.pipe_file(self.uri(name), data)  # one PUT
            return self.uri(name)
        partial = self.scratch / f"{name}.partial"
        partial.write_bytes(data)
        return str(partial.replace(self.scratch / name))

    def read_json(self, name: str) -> Result | None:
        uri = self.uri(name)
        if not self.exists(uri):
            return None
        data = self.fs.cat_file(uri) if self.fs is not None else Path(uri).read_bytes()
        loaded: Result = json.loads(data)
        return loaded

    def checkpoint(self, stage: str, compute: Callable[[], Result]) -> Result:
        """The stage's recorded result if this run already produced it (and every URI it names is there), else
        computed and recorded. The record is written after the stage's files, so a stage that died half-way is
        redone."""
        record = self.read_json(f"{stage}.json")
        if record is not None and all(self.exists(uri) for uri in _uris(record)):
            log.info("%s: reusing this run's earlier result (%s)", stage, self.uri(f"{stage}.json"))
            return record
        result = compute()
        self.write_json(f"{stage}.json", result)
        return result


def _uris(result: Result) -> list[str]:
    """The URIs a stage's result names (its keys ending in ``_uri``)."""
    found: list[str] = []
    for key, value in result.items():
        if isinstance(value, dict):
            found += _uris(value)
        elif isinstance(value, str) and key.endswith("_uri"):
            found.append(value)
    return found


@contextmanager
def open_area(run_id: str, root: str | None = None) -> Iterator[WorkArea]:
    """The run's area for one task; a remote area's scratch directory is removed when the task ends."""
    root = (root or work_root()).rstrip("/")
    name = run_key(run_id)
    if is_remote(root):
        scratch = Path(tempfile.mkdtemp(prefix=f"flight-price-{name[:40]}-"))
        try:
            yield WorkArea(f"{root}/{name}", scratch, s3_filesystem())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    elif "://" in root:
        raise WorkAreaError(f"{WORK_URL_ENV}={root!r}: use s3://bucket/prefix or a local directory")
    else:
        directory = Path(root) / name
        directory.mkdir(parents=True, exist_ok=True)
        yield WorkArea(str(directory), directory)
