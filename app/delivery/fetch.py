"""Pull and verify a bundle into a ``MODEL_DIR``, one delivery at a time per directory: what the entrypoint
does before the server starts, and what the running server does for a candidate when its alias moves.

A bundle already checked out there with the wanted DVC hash (another worker's pull, a restart on the same
volume) is reused without a pull.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.contract.bundle import Metadata, read_metadata
from app.contract.progress import Report, quiet
from app.contract.store import BUNDLE_NAME, dir_hash
from app.delivery.lock import model_dir_lock
from app.delivery.pull import pull
from app.delivery.verify import verify
from app.settings import Settings


@dataclass(frozen=True)
class Fetched:
    bundle_dir: Path
    metadata: Metadata
    fetched: int  # files downloaded (0 when the cache or a checked-out copy already had them)
    reused: bool  # an identical bundle was already checked out: no pull at all


def fetch(
    settings: Settings, dvc_hash: str, *, deadline: float, report: Report = quiet, seeds: Sequence[Path] = ()
) -> Fetched:
    """The bundle ``dvc_hash`` pulled into ``settings.model_dir`` and verified, within ``deadline``; the pull
    takes intact objects from the caches ``seeds`` before downloading them (``app.delivery.pull.pull``)."""
    work = settings.model_dir
    with model_dir_lock(work, timeout_s=deadline - time.monotonic(), report=report):
        checked_out, step = work / BUNDLE_NAME, time.monotonic()
        if checked_out.is_dir() and dir_hash(checked_out) == dvc_hash:
            metadata = read_metadata(checked_out)
            report(
                f"verify done in {time.monotonic() - step:.2f}s: {checked_out} already holds {dvc_hash} (content "
                f"hash {metadata.content_hash[:12]}): nothing to pull"
            )
            return Fetched(checked_out, metadata, 0, True)
        pulled = pull(settings, dvc_hash, report=report, deadline=deadline, seeds=seeds)
        report(
            f"pull done in {time.monotonic() - step:.2f}s: {pulled.fetched} files fetched from "
            f"{settings.dvc_remote_url} into {pulled.bundle_dir} ({pulled.attempts} attempt(s))"
        )
        step = time.monotonic()
        metadata = verify(pulled.bundle_dir, dvc_hash, work=work)
        report(
            f"verify done in {time.monotonic() - step:.2f}s: dvc hash {dvc_hash} and content hash "
            f"{metadata.content_hash[:12]} match"
        )
        return Fetched(pulled.bundle_dir, metadata, pulled.fetched, False)
