"""One delivery at a time per ``MODEL_DIR``: two containers sharing a volume, or a restart racing a stop, take
turns instead of filling one cache and checkout at once. The second waits (within ``PULL_DEADLINE_S``) and then
finds the first one's verified checkout (or its objects in the cache), so it fetches nothing."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from app.contract.progress import Report, quiet
from app.delivery.failures import DeliveryError

LOCK_FILE: Final = ".delivery.lock"
POLL_S: Final = 0.2


@contextmanager
def model_dir_lock(model_dir: Path, *, timeout_s: float, report: Report = quiet) -> Iterator[None]:
    """Hold ``MODEL_DIR``'s delivery lock (an advisory ``flock``, released if the holder dies) for the block."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DeliveryError(
            "settings", f"MODEL_DIR={model_dir} is not usable: {exc}", "that MODEL_DIR is a writable directory"
        ) from None
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DeliveryError(
                        "pull",
                        f"another start held MODEL_DIR={model_dir} for longer than PULL_DEADLINE_S",
                        "for a stuck container sharing MODEL_DIR, or raise PULL_DEADLINE_S",
                    ) from None
                if not waited:
                    report(f"pull: waiting for another start that is delivering into {model_dir}")
                    waited = True
                time.sleep(POLL_S)
        yield
    finally:
        os.close(handle)  # closing releases the lock
