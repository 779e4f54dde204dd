"""Load shedding: how much prediction work a server process takes on, and how long a request may wait for it.

A request is admitted only while the rows already queued or being predicted stay within ``MAX_QUEUED_ROWS``;
past it, or when its prediction has not come back within ``PREDICT_TIMEOUT_S``, it is answered 503 with
``Retry-After`` at once rather than left to hang (what BentoML's and MLServer's bounded queues do). Model calls
on worker threads record when they started, so a call stuck longer than ``PREDICT_TIMEOUT_S`` turns
``/health/ready`` to 503 and the orchestrator stops sending traffic; the queue depth is a metric. (The
serving form's walk of a few rows runs on the event loop: it makes no native model call that could hang.)
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, ParamSpec, TypeVar

RETRY_AFTER_S: Final = 1  # what a shed request is told to wait before trying again

T = TypeVar("T")
P = ParamSpec("P")


class OverloadedError(Exception):
    """The request was shed: answered 503 with ``Retry-After`` and the reason."""

    status: Final = 503

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Admission:
    """Admits prediction work up to ``max_queued_rows`` and bounds each request's wait by ``timeout_s``."""

    def __init__(
        self, max_queued_rows: int, timeout_s: float, observe_depth: Callable[[int], None] = lambda _: None
    ) -> None:
        self.max_queued_rows = max_queued_rows
        self.timeout_s = timeout_s
        self.queued_rows = 0  # event loop only
        self._observe_depth = observe_depth  # the queue-depth gauge
        self._calls: dict[int, float] = {}  # model calls running on worker threads: id -> monotonic start
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def check_room(self, rows: int = 1) -> None:
        """Shed the request now if ``rows`` would not fit: called before its body is read, so a request that
        would be shed costs no reading and no validation."""
        if self.queued_rows + rows > self.max_queued_rows:
            raise OverloadedError(
                f"overloaded: {self.queued_rows} rows are queued for the model and {rows} more would pass "
                f"MAX_QUEUED_ROWS={self.max_queued_rows}"
            )

    @contextmanager
    def admitted(self, rows: int) -> Iterator[None]:
        """Count ``rows`` as queued while the block runs, or shed the request if they do not fit."""
        self.check_room(rows)
        self.queued_rows += rows
        self._observe_depth(self.queued_rows)
        try:
            yield
        finally:
            self.queued_rows -= rows
            self._observe_depth(self.queued_rows)

    async def answer(self, prediction: asyncio.Future[T]) -> T:
        """``prediction``'s result, or shed the request once it has waited ``timeout_s`` (``prediction`` is
        cancelled then). One timer per request, not an ``asyncio.timeout`` scope: this runs on every prediction.

        The request first gives the event loop one pass: the micro-batcher predicts a bounded batch on the loop in
        that pass, ahead of this request, so its prediction is usually there when it resumes, and is taken with no
        timer and no further pass to be woken for it.
        """
        if not prediction.done():
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:  # the request was cancelled: its prediction is not wanted
                prediction.cancel()
                raise
        if prediction.done():
            return prediction.result()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            prediction.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout_s, expire)
        try:
            return await prediction
        except asyncio.CancelledError:
            if not expired:  # the request itself was cancelled
                raise
            raise OverloadedError(
                f"the prediction did not finish within PREDICT_TIMEOUT_S={self.timeout_s:g}s"
            ) from None
        finally:
            timer.cancel()

    def timed(self, call: Callable[P, T]) -> Callable[P, T]:
        """``call`` recording its start while it runs (on a worker thread), for ``stuck_for``."""

        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            key = next(self._ids)
            with self._lock:
                self._calls[key] = time.monotonic()
            try:
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    del self._calls[key]

        return run

    def stuck_for(self) -> float | None:
        """How long the oldest model call has run, if longer than ``timeout_s`` (the model call is stuck)."""
        with self._lock:
            oldest = min(self._calls.values(), default=None)
        if oldest is None:
            return None
        running = time.monotonic() - oldest
        return running if running > self.timeout_s else None
