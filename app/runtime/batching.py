"""Adaptive micro-batching: concurrent single-record predictions share one vectorised model call.

One model call costs about the same for 1 row as for 64, so under concurrency the server predicts many
records per call instead of queueing calls. The policy:

- a record that arrives while the worker is idle and no other prediction request is in flight is
  dispatched at once, never held for a window;
- records that arrive while the worker is busy wait for it and go together in its next call;
- when the worker frees up and other requests are still arriving (being read and validated on the event
  loop), it waits at most ``max_wait_s`` for them to join, and never gathers more than ``max_size``.

Predictions run on one dedicated worker thread, off the event loop. A batch that ``bounded`` says is
bounded work (the serving form's walk of a few rows: no native model call that could hang, well under a
millisecond, holding the GIL nearly throughout as the thread would) is predicted on the event loop itself: the
hand-off to the thread and back cost more than such a prediction, and a thread could not have run beside the
loop anyway. Each record's prediction does not depend on the others in its batch (a tree model predicts row by
row), which a test checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from app.tracing import Tracing

Row = TypeVar("Row")
Outcome = npt.NDArray[np.float64] | Exception  # a model call's predictions, or what it raised


class MicroBatcher(Generic[Row]):
    """Gathers single rows into batches for ``predict_rows`` (rows -> one prediction per row).

    The dispatcher is a callback on the event loop, not a task: a row submitted while it is idle schedules it for
    the loop's next pass (after the requests already read in this pass have submitted theirs); a model call on the
    thread schedules it again when it returns; the window for requests still being read is a timer.
    """

    def __init__(
        self,
        predict_rows: Callable[[list[Row]], npt.NDArray[np.float64]],
        *,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        bounded: Callable[[int], bool] = lambda _: False,
        tracing: Tracing | None = None,
    ) -> None:
        self._predict_rows = predict_rows
        self._bounded = bounded  # rows -> whether their prediction is bounded work, done on the event loop
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._pending: list[tuple[Row, asyncio.Future[float]]] = []
        self._arriving = 0  # requests being read and validated that will submit a row soon
        self._scheduled: asyncio.Handle | None = None  # the next dispatch: this pass's end, or the window's
        self._window_ends: float | None = None  # while waiting for requests being read: when the wait ends
        # the batch the thread predicts, and its call
        self._on_thread: tuple[list[tuple[Row, asyncio.Future[float]]], asyncio.Future[Outcome]] | None = None
        self._tracing = tracing  # None: tracing off, and nothing below touches a span
        self._requests: dict[asyncio.Future[float], Span] = {}  # with tracing: each waiting row's request span
        self._batch_span: Span | None = None  # with tracing: the span of the batch on the thread

    # --- request side (event loop) ---

    def expect(self) -> None:
        """A single-record request started and may submit a row soon: the dispatcher may wait for it."""
        self._arriving += 1

    def arrived(self) -> None:
        """The request that called ``expect`` has its row (or failed): the dispatcher need not wait for it."""
        self._arriving -= 1

    def submit(self, row: Row) -> asyncio.Future[float]:
        """This row's prediction, to come from a batch with whatever else is waiting (cancel it to give up)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((row, future))
        if self._tracing is not None:
            self._requests[future] = self._tracing.current_span()
        if self._on_thread is None:  # else the thread's return dispatches
            if self._window_ends is not None and (self._arriving == 0 or len(self._pending) >= self.max_size):
                self._cancel_scheduled()  # nobody left to wait for, or a full batch: go at once
            if self._scheduled is None:
                self._scheduled = loop.call_soon(self._dispatch)
        return future

    # --- dispatcher (event loop callbacks) ---

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        self._scheduled = None
        # rows whose request gave up (timed out, client gone) are not predicted
        if self._requests:
            for _, future in self._pending:
                if future.done():
                    self._requests.pop(future, None)
        self._pending = [(row, future) for row, future in self._pending if not future.done()]
        if not self._pending:
            self._window_ends = None
            return
        if self.max_wait_s > 0 and self._arriving > 0 and len(self._pending) < self.max_size:
            # requests still being read: wait for them, at most max_wait_s since the wait began
            if self._window_ends is None:
                self._window_ends = loop.time() + self.max_wait_s
            if loop.time() < self._window_ends:
                self._scheduled = loop.call_at(self._window_ends, self._dispatch)
                return
        self._window_ends = None
        batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
        span = None
        if self._tracing is not None:
            popped = [self._requests.pop(future, None) for _, future in batch]
            requests = [request for request in popped if request is not None]
            span = self._tracing.start_batch(requests, len(batch))
        if self._bounded(len(batch)):
            self._deliver(batch, self._call(batch, span), span)
            if self._pending:
                self._scheduled = loop.call_soon(self._dispatch)
            return
        try:
            running = loop.run_in_executor(self._executor, self._call, batch, span)
        except RuntimeError as exc:  # the executor was shut down (the model was closed)
            self._deliver(batch, exc, span)
            return
        self._on_thread, self._batch_span = (batch, running), span
        running.add_done_callback(self._returned)

    def _call(self, batch: list[tuple[Row, asyncio.Future[float]]], span: Span | None = None) -> Outcome:
        """The model call for ``batch``: its predictions, or what it raised (in a span under the batch's
        ``span``, with tracing)."""
        rows = [row for row, _ in batch]
        try:
            if span is None or self._tracing is None:
                return self._predict_rows(rows)
            return self._tracing.model_call(self._tracing.under(span), len(rows), lambda: self._predict_rows(rows))
        except Exception as exc:
            return exc

    def _returned(self, running: asyncio.Future[Outcome]) -> None:
        """The thread's call returned: its requests get their answers, and the rows waiting meanwhile go next."""
        batch = self._on_thread[0] if self._on_thread is not None else []
        self._on_thread, span, self._batch_span = None, self._batch_span, None
        if running.cancelled():  # the executor was shut down
            outcome: npt.NDArray[np.float64] | BaseException = asyncio.CancelledError()
        else:
            outcome = running.result()
        self._deliver(batch, outcome, span)
        if self._pending and self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._dispatch)

    def _deliver(
        self,
        batch: list[tuple[Row, asyncio.Future[float]]],
        outcome: npt.NDArray[np.float64] | BaseException,
        span: Span | None = None,
    ) -> None:
        """Each waiting request gets its prediction, or every one the failure (the dispatcher carries on); the
        batch's span, with tracing, ends."""
        if span is not None and self._tracing is not None:
            self._tracing.end_batch(span, outcome if isinstance(outcome, BaseException) else None)
        if isinstance(outcome, BaseException):
            for _, future in batch:
                if not future.done():
                    future.set_exception(outcome)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future), prediction in zip(batch, outcome.tolist(), strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(prediction)

    def _cancel_scheduled(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    async def close(self) -> None:
        """Stop dispatching and the worker thread: rows still waiting, or on the thread, are cancelled."""
        self._cancel_scheduled()
        on_thread, running = self._on_thread or ([], None)
        for _, future in [*self._pending, *on_thread]:
            if not future.done():
                future.cancel()
        self._pending = []
        self._requests.clear()
        if self._batch_span is not None and self._tracing is not None:
            self._tracing.end_batch(self._batch_span, asyncio.CancelledError())
            self._batch_span = None
        if running is not None:
            running.cancel()  # the call itself runs on; its result is not delivered to a closed loop
        self._executor.shutdown(wait=False, cancel_futures=True)
