"""Content digests of files, streamed (a bundle or a data set may not fit in memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal


def file_digest(path: Path, algorithm: Literal["sha256", "md5"] = "sha256") -> str:
    """The hex digest of a file's bytes: sha256 for bundle and data hashes, md5 where DVC's layout needs it."""
    with path.open("rb") as fh:
        # md5 names blobs in DVC's store; it is not used for security here.
        digest = hashlib.file_digest(fh, lambda: hashlib.new(algorithm, usedforsecurity=algorithm != "md5"))
    return digest.hexdigest()
