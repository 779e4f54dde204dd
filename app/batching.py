"""Adaptive micro-batching: concurrent single-record predictions share one vectorised model call.

One model call costs about the same for 1 row as for 64, so under concurrency the server predicts many
records per call instead of queueing calls. The policy:

- a record that arrives while the worker is idle and no other prediction request is in flight is
  dispatched at once, never held for a window;
- records that arrive while the worker is busy wait for it and go together in its next call;
- when the worker frees up and other requests are still arriving (being read and validated on the event
  loop), it waits at most ``max_wait_s`` for them to join, and never gathers more than ``max_size``.

Predictions run on one dedicated worker thread, off the event loop; the thread limits OpenMP/BLAS to
``threads`` so the event loop and the model do not oversubscribe the cores. A batch that ``bounded`` says is
bounded work (the predictor's all-trees numpy walk of a few rows: no native model call that could hang, well
under a millisecond, holding the GIL throughout as the thread would) is predicted on the event loop itself: the
hand-off to the thread and back cost more than such a prediction, and a thread could not have run beside the
loop anyway. Each record's prediction does not depend on the others in its batch (a tree model predicts row by
row), which a test checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

Row = TypeVar("Row")


def limit_threads(threads: int) -> None:
    """Limit OpenMP/BLAS pools for the calling thread (OpenMP's thread count is a per-thread setting)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads)


class MicroBatcher(Generic[Row]):
    """Gathers single rows into batches for ``predict_rows`` (rows -> one prediction per row)."""

    def __init__(
        self,
        predict_rows: Callable[[list[Row]], npt.NDArray[np.float64]],
        *,
        max_size: int,
        max_wait_s: float,
        threads: int = 1,
        on_batch: Callable[[int], None] | None = None,
        bounded: Callable[[int], bool] = lambda _: False,
    ) -> None:
        self._predict_rows = predict_rows
        self._bounded = bounded  # rows -> whether their prediction is bounded work, done on the event loop
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="predict", initializer=limit_threads, initargs=(threads,)
        )
        self._pending: list[tuple[Row, asyncio.Future[float]]] = []
        self._arriving = 0  # requests being read and validated that will submit a row soon
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

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
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._dispatch(), name="microbatcher")
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((row, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    # --- dispatcher (event loop task) ---

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            if not self._pending:
                wakeup.clear()
                await wakeup.wait()
            await self._gather(loop, wakeup)
            # rows whose request gave up (timed out, client gone) are not predicted
            self._pending = [(row, future) for row, future in self._pending if not future.done()]
            if not self._pending:
                continue
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            if self._bounded(len(batch)):
                self._predict_here(batch)
                continue
            outcome: npt.NDArray[np.float64] | Exception
            try:
                outcome = await loop.run_in_executor(self._executor, self._predict_rows, [row for row, _ in batch])
            except Exception as exc:
                outcome = exc
            self._deliver(batch, outcome)

    def _predict_here(self, batch: list[tuple[Row, asyncio.Future[float]]]) -> None:
        """Predict ``batch`` on the event loop (bounded work) and settle its requests."""
        outcome: npt.NDArray[np.float64] | Exception
        try:
            outcome = self._predict_rows([row for row, _ in batch])
        except Exception as exc:
            outcome = exc
        self._deliver(batch, outcome)

    def _deliver(
        self, batch: list[tuple[Row, asyncio.Future[float]]], outcome: npt.NDArray[np.float64] | Exception
    ) -> None:
        """Each waiting request gets its prediction, or every one the failure (the dispatcher carries on)."""
        if isinstance(outcome, Exception):
            for _, future in batch:
                if not future.done():
                    future.set_exception(outcome)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for (_, future), prediction in zip(batch, outcome.tolist(), strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(prediction)

    async def _gather(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        """Wait (bounded) for requests already in flight to submit their rows."""
        if self.max_wait_s <= 0:
            return
        deadline = loop.time() + self.max_wait_s
        while self._arriving > 0 and len(self._pending) < self.max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), remaining)

    async def close(self) -> None:
        """Stop the dispatcher and the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._pending:
            if not future.done():
                future.cancel()
        self._pending = []
        self._executor.shutdown(wait=False, cancel_futures=True)
