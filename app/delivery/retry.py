"""The retry loop of delivery's network steps (registry look-up, pull): doubling delays within one deadline,
as ``PULL_RETRIES``, ``PULL_BACKOFF_S`` and ``PULL_DEADLINE_S`` set it. The registry look-up and the pull share
that deadline (the entrypoint sets it once), and ``within`` bounds a single blocking call by what is left of
it, so a peer that answers one byte at a time cannot outlast it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

from app.contract.progress import Report
from app.delivery.failures import DeliveryError
from app.settings import Settings

T = TypeVar("T")


def deadline_for(settings: Settings) -> float:
    """The monotonic time by which delivery must be done: ``PULL_DEADLINE_S`` from now."""
    return time.monotonic() + settings.pull_deadline_s


STOP_POLL_S: Final = 0.1  # how soon a waiting attempt notices its stop event (``stop_pulls``)


def within(
    call: Callable[[], T],
    seconds: float,
    timed_out: DeliveryError,
    *,
    stop: threading.Event | None = None,
    stopped: Callable[[], DeliveryError] | None = None,
    name: str = "delivery-call",
) -> T:
    """``call()`` in a daemon thread, given ``seconds`` at most; ``timed_out`` is raised past that. With ``stop``, the
    wait also ends once it is set (checked every ``STOP_POLL_S``), raising ``stopped()``. Either way the thread is
    abandoned: it ends with the process, or at its own next check of ``stop``."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ends = time.monotonic() + max(seconds, 0.0)
    while thread.is_alive() and not (stop is not None and stop.is_set()) and (left := ends - time.monotonic()) > 0:
        thread.join(left if stop is None else min(left, STOP_POLL_S))
    if failure:
        raise failure[0]
    if outcome:
        return outcome[0]
    if stop is not None and stop.is_set() and stopped is not None:
        raise stopped()
    raise timed_out


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
