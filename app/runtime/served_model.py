"""The model being served: a verified bundle with everything its request path needs, built in one step.

A ``ServedModel`` is immutable: the request schema, the serving form, the micro-batcher and the batch threads
all belong to one bundle, so a request that captured it at its start is answered by that bundle throughout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from app.contract.bundle import SERVING_LIBRARIES, ServingBundle, library_differences
from app.contract.serving_form import ServingForm
from app.model.schema import RecordSchema
from app.observability import ServerMetrics
from app.runtime.admission import Admission, OverloadedError
from app.runtime.batching import MicroBatcher
from app.settings import Settings

if TYPE_CHECKING:
    from app.tracing import Tracing

# Threads for the predictions not made on the event loop (``on_loop``), apart from the micro-batcher's own.
BATCH_WORKERS: Final = 2
# Up to this many rows, by the serving form's walk, a prediction is made on the event loop itself, with no hand-off
# to a thread and back. The compiled walk takes about 0.4 ms for 1,000 rows, and encoding them 1 to 1.5 ms (with the
# GIL held wherever it runs), less than validating their body took on the loop. A hand-off costs more than it frees:
# its thread must take the GIL back while the loop parses the next body, waiting up to Python's switch interval
# each time (docs/benchmarks.md has 1,000-record batches measured both ways). Above the bound, a batch goes to a
# thread, which the compiled walk leaves for the GIL-free part of its work. The numpy walk's few dozen numpy calls
# per block take 2 to 3 ms per 1,000 rows, so only micro-batches of a few rows stay on the loop with it (about
# 0.2 ms for 24 rows).
ON_LOOP_ROWS: Final[dict[str, int]] = {"compiled": 4096, "numpy": 24}
Row = tuple[Any, ...]


def predict_rows(
    schema: RecordSchema, form: ServingForm, observe: Callable[[dict[str, int]], None], rows: list[Row]
) -> npt.NDArray[np.float64]:
    """Validated rows -> predictions, with no DataFrame (on the event loop up to ``ON_LOOP_ROWS``, else on a worker
    thread); the values outside the training range are counted by ``observe``."""
    columns = schema.columns(rows)
    observe(schema.outside_training(columns))
    return form.predict(columns)


def on_loop(walk: str, rows: int) -> bool:
    """Whether a prediction of ``rows`` rows with the serving form's ``walk`` is made on the event loop
    (``ON_LOOP_ROWS``)."""
    return 0 < rows <= ON_LOOP_ROWS[walk]


@dataclass
class Usage:
    """Prediction requests using a model right now (event loop only): a retired model closes at 0, or once
    ``DRAIN_TIMEOUT_S`` has passed; ``closed`` then."""

    active: int = 0
    closed: bool = False


@dataclass(frozen=True)
class ServedModel:
    """A verified bundle, its request schema and serving form, and the threads that run its predictions."""

    bundle: ServingBundle
    schema: RecordSchema
    predict: Callable[[list[Row]], npt.NDArray[np.float64]]  # rows -> predictions, timed by the admission
    batcher: MicroBatcher[Row]
    batch_executor: ThreadPoolExecutor
    version: int | None  # the registry version, when known
    usage: Usage = field(default_factory=Usage, compare=False)
    tracing: Tracing | None = field(default=None, compare=False)  # None: tracing off

    @classmethod
    def build(
        cls,
        bundle: ServingBundle,
        settings: Settings,
        metrics: ServerMetrics,
        admission: Admission,
        tracing: Tracing | None = None,
    ) -> ServedModel:
        """Everything the request path needs for ``bundle`` (whose serving form re-predicted its probe bit for bit
        as it loaded); ``tracing``: the process's tracing, if on (spans for the micro-batches and the model calls)."""
        schema = RecordSchema.from_metadata(bundle.metadata, settings.max_batch_records, settings.max_listed_errors)
        predict = admission.timed(
            functools.partial(predict_rows, schema, bundle.form, metrics.observe_outside_training)
        )
        batcher: MicroBatcher[Row] = MicroBatcher(
            predict,
            max_size=settings.microbatch_max_size,
            max_wait_s=settings.microbatch_max_wait_ms / 1000,
            on_batch=metrics.batch_size.observe,
            bounded=functools.partial(on_loop, bundle.form.walk),
            tracing=tracing,
        )
        executor = ThreadPoolExecutor(BATCH_WORKERS, "predict-batch")
        return cls(bundle, schema, predict, batcher, executor, settings.model_version, tracing=tracing)

    @property
    def content_hash(self) -> str:
        return self.bundle.content_hash

    @functools.cached_property
    def library_mismatch(self) -> dict[str, dict[str, str]]:
        """The libraries the serving form depends on (``SERVING_LIBRARIES``) whose version differs between the bundle's
        training and this server, within one release series (another series is refused at load): reported."""
        return library_differences(self.bundle.metadata.library_versions, SERVING_LIBRARIES)

    def with_version(self, version: int) -> ServedModel:
        """The same model, now known as registry version ``version``."""
        return dataclasses.replace(self, version=version)

    def check_open(self) -> None:
        """Shed a request whose model was retired and closed while its body arrived (slower than
        ``DRAIN_TIMEOUT_S``): its client retries on the model served now."""
        if self.usage.closed:
            raise OverloadedError("the model this request began on was retired while its body arrived; retry")

    def run_batch(self, rows: list[Row]) -> asyncio.Future[npt.NDArray[np.float64]]:
        """A whole batch request's rows in one vectorised call: on the event loop up to ``ON_LOOP_ROWS`` rows (the
        future is done when returned), else on a batch worker thread (in a ``model.predict`` span under the
        request's, with tracing: the thread does not inherit the request's context)."""
        self.check_open()
        call: Callable[[], npt.NDArray[np.float64]] = functools.partial(self.predict, rows)
        if self.tracing is not None:
            call = self.tracing.bind_model_call(len(rows), call)
        loop = asyncio.get_running_loop()
        if not on_loop(self.bundle.form.walk, len(rows)):
            return loop.run_in_executor(self.batch_executor, call)
        done: asyncio.Future[npt.NDArray[np.float64]] = loop.create_future()
        try:
            done.set_result(call())
        except Exception as exc:  # as the thread's future would hold it
            done.set_exception(exc)
        return done

    async def close(self) -> None:
        """Stop the micro-batcher and the batch threads."""
        self.usage.closed = True
        await self.batcher.close()
        self.batch_executor.shutdown(wait=False, cancel_futures=True)
