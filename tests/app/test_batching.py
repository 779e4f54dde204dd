"""The micro-batcher: never changes a prediction, dispatches a lone record at once, gathers concurrent ones."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from app.contract.bundle import load_bundle, load_serving_bundle
from app.contract.serving_form import probe_columns
from app.model.schema import RecordSchema
from app.runtime.batching import MicroBatcher


def test_batched_predictions_equal_unbatched(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    schema = RecordSchema.from_metadata(bundle.metadata, 1000)
    form = load_serving_bundle(bundle_dir).form
    columns = probe_columns(bundle.metadata, 300, seed=4)
    rows = list(zip(*columns.values(), strict=True))
    sizes: list[int] = []

    async def scenario() -> list[float]:
        batcher: MicroBatcher[tuple[Any, ...]] = MicroBatcher(
            lambda batch: form.predict(schema.columns(batch)),
            max_size=64,
            max_wait_s=0.002,
            on_batch=sizes.append,
        )
        try:
            return await asyncio.gather(*(batcher.submit(row) for row in rows))
        finally:
            await batcher.close()

    batched = asyncio.run(scenario())
    assert max(sizes) > 1 and sum(sizes) == len(rows)  # the records really were predicted together
    one_by_one = [bundle.predict(schema.columns([row]))[0] for row in rows]
    assert batched == one_by_one == bundle.predict(columns).tolist()  # exact, not approximate


def slow_sum(delay: float, calls: list[int]) -> Any:
    def predict(rows: list[float]) -> npt.NDArray[np.float64]:
        calls.append(len(rows))
        time.sleep(delay)
        return np.asarray(rows, dtype=np.float64) * 2

    return predict


def test_a_lone_record_is_not_held_for_the_window() -> None:
    calls: list[int] = []

    async def scenario() -> float:
        batcher = MicroBatcher(slow_sum(0, calls), max_size=64, max_wait_s=1.0)
        try:
            await batcher.submit(1.0)  # warm the worker thread
            started = time.perf_counter()
            assert await batcher.submit(2.0) == 4.0
            return time.perf_counter() - started
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) < 0.2  # far below the 1 s window
    assert calls == [1, 1]


def test_records_arriving_while_busy_share_the_next_call_up_to_max_size() -> None:
    calls: list[int] = []

    async def scenario() -> list[float]:
        batcher = MicroBatcher(slow_sum(0.05, calls), max_size=8, max_wait_s=0.001)
        try:
            first = asyncio.ensure_future(batcher.submit(0.0))
            await asyncio.sleep(0.01)  # the first is being predicted alone; the rest arrive meanwhile
            rest = await asyncio.gather(*(batcher.submit(float(i)) for i in range(1, 30)))
            return [await first, *rest]
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [2.0 * i for i in range(30)]
    assert calls == [1, 8, 8, 8, 5]


def test_waits_for_expected_records_within_the_window() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(slow_sum(0, calls), max_size=64, max_wait_s=0.5)
        try:
            batcher.expect()  # a second request is being read

            async def late() -> float:
                await asyncio.sleep(0.05)
                batcher.arrived()
                return await batcher.submit(2.0)

            assert list(await asyncio.gather(batcher.submit(1.0), late())) == [2.0, 4.0]
        finally:
            await batcher.close()

    asyncio.run(scenario())
    assert calls == [2]


def test_a_failing_call_fails_its_batch_and_the_next_succeeds() -> None:
    failing = threading.Event()
    failing.set()

    def predict(rows: list[float]) -> npt.NDArray[np.float64]:
        if failing.is_set():
            raise ValueError("model failed")
        return np.asarray(rows)

    async def scenario() -> None:
        batcher = MicroBatcher(predict, max_size=4, max_wait_s=0)
        try:
            with pytest.raises(ValueError, match="model failed"):
                await batcher.submit(1.0)
            failing.clear()
            assert await batcher.submit(3.0) == 3.0
        finally:
            await batcher.close()

    asyncio.run(scenario())


def test_bounded_batches_are_predicted_on_the_event_loop_and_others_on_the_thread() -> None:
    """What the served model calls bounded (the serving form's walk of a few rows) skips the hand-off to the
    predict thread; anything else runs there, and a failure reaches every waiting request either way."""
    threads: list[tuple[int, int]] = []  # (rows, thread id) per model call

    def predict(rows: list[float]) -> npt.NDArray[np.float64]:
        threads.append((len(rows), threading.get_ident()))
        if any(row < 0 for row in rows):
            raise ValueError("a negative row")
        return np.asarray(rows, dtype=np.float64) * 2

    async def scenario() -> tuple[list[float], list[float], float | BaseException]:
        batcher: MicroBatcher[float] = MicroBatcher(predict, max_size=8, max_wait_s=0.0, bounded=lambda n: n <= 2)
        try:
            alone = [await batcher.submit(1.0)]  # a lone row: bounded
            for _ in range(5):  # five requests being read: their rows wait to be gathered, then are not bounded
                batcher.expect()
            futures = []
            for r in range(5):
                batcher.arrived()
                futures.append(batcher.submit(float(r)))
            assert not any(future.done() for future in futures)
            together = await asyncio.gather(*futures)
            batcher.expect()
            pair = [batcher.submit(7.0)]  # gathered with the next one: two rows, bounded
            batcher.arrived()
            pair.append(batcher.submit(8.0))
            assert await asyncio.gather(*pair) == [14.0, 16.0]
            failed = await asyncio.gather(batcher.submit(-1.0), return_exceptions=True)
            return alone, together, failed[0]
        finally:
            await batcher.close()

    loop_thread = threading.get_ident()
    alone, together, failed = asyncio.run(scenario())
    assert alone == [2.0] and together == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert isinstance(failed, ValueError) and str(failed) == "a negative row"
    assert [rows for rows, _ in threads] == [1, 5, 2, 1]
    on_loop = [rows for rows, thread in threads if thread == loop_thread]
    assert on_loop == [1, 2, 1]  # the bounded calls, the failing one included; the 5-row call went to the thread


def test_closing_cancels_the_rows_waiting_and_on_the_thread_and_later_rows_still_get_an_answer() -> None:
    """A closed batcher leaves no request hanging: rows waiting and the batch on the thread are cancelled; a row
    submitted afterwards is predicted on the loop if bounded, else fails (the thread is gone)."""
    release = threading.Event()

    def predict(rows: list[float]) -> npt.NDArray[np.float64]:
        if len(rows) > 1 or rows[0] > 0:  # the thread's calls wait until released
            release.wait(5)
        return np.asarray(rows, dtype=np.float64) * 2

    async def scenario() -> tuple[list[bool], float, BaseException | float]:
        batcher: MicroBatcher[float] = MicroBatcher(predict, max_size=8, max_wait_s=0.0, bounded=lambda n: n == 1)
        batcher.expect()
        on_thread = [batcher.submit(1.0), batcher.submit(2.0)]  # two rows: not bounded, on the thread
        batcher.arrived()
        await asyncio.sleep(0.05)
        waiting = batcher.submit(3.0)  # waits for the thread
        await batcher.close()
        release.set()
        settled = [future.cancelled() for future in [*on_thread, waiting]]
        bounded_after = await batcher.submit(-1.0)  # bounded: on the loop
        thread_after = await asyncio.gather(batcher.submit(4.0), batcher.submit(5.0), return_exceptions=True)
        return settled, bounded_after, thread_after[0]

    settled, bounded_after, thread_after = asyncio.run(scenario())
    assert settled == [True, True, True]
    assert bounded_after == -2.0
    assert isinstance(thread_after, RuntimeError)


def test_a_bounded_row_is_predicted_in_the_loops_next_pass() -> None:
    """The dispatcher runs once the requests already read in this pass have submitted their rows: they share a
    call, and the prediction is there when a request yields once."""
    calls: list[int] = []

    def predict(rows: list[float]) -> npt.NDArray[np.float64]:
        calls.append(len(rows))
        return np.asarray(rows, dtype=np.float64) * 2

    async def scenario() -> list[float]:
        batcher: MicroBatcher[float] = MicroBatcher(predict, max_size=8, max_wait_s=0.01, bounded=lambda n: n <= 8)
        try:
            futures = [batcher.submit(float(i)) for i in range(3)]
            assert not any(future.done() for future in futures)
            await asyncio.sleep(0)
            assert all(future.done() for future in futures)
            return [future.result() for future in futures]
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [0.0, 2.0, 4.0]
    assert calls == [3]
