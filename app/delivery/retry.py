"""The retry loop of delivery's network steps (registry look-up, pull): doubling delays within a deadline,
as ``PULL_RETRIES``, ``PULL_BACKOFF_S`` and ``PULL_DEADLINE_S`` set it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from app.contract.progress import Report
from app.delivery.failures import DeliveryError
from app.settings import Settings

T = TypeVar("T")


def retrying(attempt: Callable[[float], T], settings: Settings, *, report: Report, step: str) -> tuple[T, int]:
    """Call ``attempt(seconds_left)`` until it succeeds, retrying retryable ``DeliveryError``s with doubling
    delays, within the settings' retries and deadline (from now); returns the result and the attempts made."""
    retries, backoff_s = settings.pull_retries, settings.pull_backoff_s
    deadline = time.monotonic() + settings.pull_deadline_s
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(deadline - time.monotonic()), tries
        except DeliveryError as exc:
            left = deadline - time.monotonic()
            delay = backoff_s * 2 ** (tries - 1)
            if not exc.retryable or tries > retries or left <= delay:
                if exc.retryable and tries > 1:
                    raise DeliveryError(
                        exc.failure, f"{exc.what} (gave up after {tries} attempts)", exc.check
                    ) from None
                raise
            report(f"{step} attempt {tries} failed ({exc.what}); retrying in {delay:.1f}s")
            time.sleep(delay)
