"""One prediction's lifecycle, whichever protocol asked for it (MLServer's ``DataPlane``).

A protocol (``app.api.routes.predict``, ``app.api.routes.v2``) picks the served model, hands over how to read its
body and how to decode it into rows, and encodes the predictions it gets back. Everything between is here: the
model's in-flight count (a model swapped out meanwhile is closed only after its last request), admission (shed
before the body is read, then the rows counted as queued), the deadline of the prediction, the failures counted by
route and reason, and the rows predicted. The request's access line and latency are the middleware's
(``app.api.middleware``); its refusals are rendered by ``app.api.errors``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
from starlette.requests import ClientDisconnect

from app.model.schema import RequestError
from app.runtime.admission import OverloadedError
from app.runtime.served_model import Row, ServedModel
from app.runtime.state import ServingState

T = TypeVar("T")
# How a failed prediction request is counted (``prediction_errors``' reason): a refused body, a shed request, a client
# gone mid-body (the ASGI server's ``ClientDisconnect``); anything else is ``model``.
FAILURES: Final = ((RequestError, "invalid"), (OverloadedError, "overloaded"), (ClientDisconnect, "disconnected"))
Read = Callable[[], Awaitable[bytes]]  # the request body, read within its limit (the protocol's transport)


class DataPlane:
    """Predictions on the server's state: ``route`` names the request in the metrics."""

    def __init__(self, state: ServingState) -> None:
        self.state = state

    @contextmanager
    def _predicting(self, served: ServedModel, route: str) -> Iterator[None]:
        """The request uses ``served`` while the block runs; a failure is counted by route and reason."""
        served.usage.active += 1  # a model swapped out meanwhile is closed only after this request
        try:
            yield
        except Exception as exc:
            reason = next((label for kind, label in FAILURES if isinstance(exc, kind)), "model")
            self.state.metrics.prediction_errors.labels(route, reason).inc()
            raise
        finally:
            served.usage.active -= 1

    async def predict_record(
        self, served: ServedModel, route: str, read: Read, decode: Callable[[bytes], Row]
    ) -> float:
        """One record, micro-batched with the records predicted at the same time."""
        batcher, admission = served.batcher, self.state.admission
        with self._predicting(served, route):
            admission.check_room()  # shed before the body is read
            batcher.expect()  # lets the micro-batcher wait (bounded) for this record while it is read
            try:
                row = decode(await read())
            finally:
                batcher.arrived()
            served.check_open()
            with admission.admitted(1):
                prediction = await admission.answer(batcher.submit(row))
        self.state.metrics.predicted_rows.labels(route).inc()
        return prediction

    async def predict_rows(
        self,
        served: ServedModel,
        route: str,
        read: Read,
        decode: Callable[[bytes], tuple[T, list[Row]]],
        refusal: RequestError | None = None,
    ) -> tuple[T, npt.NDArray[np.float64]]:
        """The decoded request's rows in one vectorised call, on a batch thread. ``refusal``: a refusal the
        protocol knew from the request's head alone, counted as a refused body before anything is admitted."""
        admission = self.state.admission
        with self._predicting(served, route):
            if refusal is not None:
                raise refusal
            admission.check_room()  # shed before the body is read
            decoded, rows = decode(await read())
            with admission.admitted(len(rows)):
                predictions = await admission.answer(served.run_batch(rows))
        self.state.metrics.predicted_rows.labels(route).inc(len(rows))
        return decoded, predictions
