"""Reading objects from a DVC 3 remote without DVC: its content-addressed layout, ``<remote>/files/md5/<2 hex>/<30
hex>`` (``.dir`` after a directory's listing), from ``s3://bucket/prefix`` through botocore or from a directory.

Each remote streams one object's bytes in chunks and raises its client's own structured errors (botocore's
``ClientError`` and connection errors, an ``OSError`` for a directory), which ``app.delivery.failures``
classifies. botocore is imported only when an ``s3://`` remote is first read; its credentials come from its own
chain only (the ``AWS_*`` variables, ``AWS_SHARED_CREDENTIALS_FILE``, a web identity, a container role), never
from a URL: the settings refuse a URL holding any.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Generator
from pathlib import Path
from typing import Any, Final, Protocol

from app.contract.store import CONNECT_TIMEOUT_S

CHUNK_BYTES: Final = 1 << 20  # read (and checked for a stop) one MiB at a time
READ_TIMEOUT_S: Final = 15  # one socket read; the overall bound is the caller's deadline
# botocore's own tries of one request: one, so the only retries are ours (``PULL_RETRIES``, ``PULL_BACKOFF_S``),
# within the deadline; botocore's would wait out backoffs of their own inside each of our attempts.
TOTAL_MAX_ATTEMPTS: Final = 1


@functools.lru_cache(maxsize=1)
def _loader() -> Any:
    """botocore's data loader, shared by every pull's session: the S3 service model and endpoint rules are parsed
    once per process, not at each pull (a server following its alias pulls again and again)."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def _session() -> Any:
    """A botocore session of its own (credentials looked up afresh: a rotated credentials file is read again),
    with the shared data loader."""
    import botocore.session

    session = botocore.session.Session()
    session.register_component("data_loader", _loader())
    return session


def preload(url: str | None) -> None:
    """Load botocore's S3 client now when ``url`` is an ``s3://`` remote: a server that follows its alias pulls in
    its own process, and what the client takes (its modules, the S3 service model and endpoint rules: tens of MB
    of RSS) then belongs to its start, not to its first refresh; later pulls reuse it. The client made here is
    unsigned, so no credential is looked up; any failure shows again when a pull needs the client."""
    if not (url and url.startswith("s3://")):
        return
    with contextlib.suppress(Exception):
        import botocore
        import botocore.config

        unsigned = botocore.config.Config(signature_version=botocore.UNSIGNED)
        _session().create_client("s3", region_name="us-east-1", config=unsigned)


def object_key(oid: str) -> str:
    """Where DVC 3 keeps object ``oid`` below a remote's root: ``files/md5/<2 hex>/<rest>``."""
    return f"files/md5/{oid[:2]}/{oid[2:]}"


class Remote(Protocol):
    def chunks(self, oid: str) -> Generator[bytes, None, None]:
        """Object ``oid``'s bytes, in chunks; the client's own error if it cannot be read."""
        ...


class DirectoryRemote:
    """A remote that is a directory (a volume mounted into the container): plain file reads."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def chunks(self, oid: str) -> Generator[bytes, None, None]:
        with (self.root / object_key(oid)).open("rb") as source:
            while chunk := source.read(CHUNK_BYTES):
                yield chunk


class S3Remote:
    """A remote in S3 (or an S3-compatible store at ``endpoint_url``), read with botocore's ``GetObject``."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = None

    def key(self, oid: str) -> str:
        return f"{self.prefix}/{object_key(oid)}" if self.prefix else object_key(oid)

    def client(self) -> Any:
        """The S3 client, made on first use: a session of its own, so credentials are looked up afresh for each
        pull (a rotated credentials file is read again)."""
        if self._client is None:
            import botocore.config

            config = botocore.config.Config(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"total_max_attempts": TOTAL_MAX_ATTEMPTS, "mode": "standard"},
            )
            self._client = _session().create_client(
                "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
            )
        return self._client

    def chunks(self, oid: str) -> Generator[bytes, None, None]:
        answer = self.client().get_object(Bucket=self.bucket, Key=self.key(oid))
        body = answer["Body"]
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()
