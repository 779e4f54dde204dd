"""The retry loop of delivery's network steps (registry look-up, pull): doubling delays within one deadline,
as ``PULL_RETRIES``, ``PULL_BACKOFF_S`` and ``PULL_DEADLINE_S`` set it. The registry look-up and the pull share
that deadline (the entrypoint sets it once), and ``within`` bounds a single blocking call by what is left of
it, so a peer that answers one byte at a time cannot outlast it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from app.contract.progress import Report
from app.delivery.failures import DeliveryError
from app.settings import Settings

T = TypeVar("T")


def deadline_for(settings: Settings) -> float:
    """The monotonic time by which delivery must be done: ``PULL_DEADLINE_S`` from now."""
    return time.monotonic() + settings.pull_deadline_s


def within(call: Callable[[], T], seconds: float, timed_out: DeliveryError) -> T:
    """``call()`` in a daemon thread, given ``seconds`` at most; ``timed_out`` is raised past that (the thread
    is abandoned: the start fails and the process ends)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="delivery-call", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if thread.is_alive():
        raise timed_out
    if failure:
        raise failure[0]
    return outcome[0]


def retrying(
    attempt: Callable[[float], T], settings: Settings, *, report: Report, step: str, deadline: float | None = None
) -> tuple[T, int]:
    """Call ``attempt(seconds_left)`` until it succeeds, retrying retryable ``DeliveryError``s with doubling
    delays, within the settings' retries and ``deadline`` (default: the settings' deadline from now); returns
    the result and the attempts made."""
    retries, backoff_s = settings.pull_retries, settings.pull_backoff_s
    deadline = deadline_for(settings) if deadline is None else deadline
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(deadline - time.monotonic()), tries
        except DeliveryError as exc:
            left = deadline - time.monotonic()
            delay = backoff_s * 2 ** (tries - 1)
            if not exc.retryable or tries > retries or left <= delay:
                if not exc.retryable:
                    raise
                # say why it stopped: out of retries, or no time left for another attempt (a slow first one)
                why = (
                    f"PULL_RETRIES={retries} used" if tries > retries else "PULL_DEADLINE_S leaves no time for another"
                )
                raise DeliveryError(
                    exc.failure, f"{exc.what} (gave up after {tries} attempt(s): {why})", exc.check
                ) from None
            report(f"{step} attempt {tries} failed ({exc.what}); retrying in {delay:.1f}s")
            time.sleep(delay)
