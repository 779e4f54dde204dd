"""What the running server holds: the settings, the metrics, the model being served (once it is) and
the readiness status with its reason, the admission of prediction work, and the registry view for ``GET /model``.
Whether the server is ready is a property of this state (``ServingState.not_ready``), which every readiness route
answers.

Only the loader (``app.runtime.loader``) and the alias refresh (``app.runtime.refresh``) change the model, the
status and the candidate; the routes read them.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from app.delivery.resolve import Resolved
from app.observability import ServerMetrics
from app.runtime.admission import Admission
from app.runtime.registry_view import RegistryView
from app.runtime.served_model import ServedModel
from app.settings import Settings

if TYPE_CHECKING:
    from app.tracing import Tracing

Status = Literal["loading", "ready", "failed"]


class NotReadyError(Exception):
    """No model answers: the bundle is not loaded yet or failed to load, or (for readiness) a model call is stuck.
    Answered 503 with ``Retry-After``, the reason and the status (``loading``, ``failed`` or ``stuck``)."""

    status: Final = 503

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason


@dataclass(frozen=True)
class Candidate:
    """A bundle the alias points at that is not the one being served, and where it stands."""

    version: int | None
    dvc_hash: str
    status: Literal["loading", "refused"]
    reason: str = ""
    since: float = 0.0  # wall-clock time of the status
    retry_at: float = math.inf  # monotonic time a refused candidate may be tried again (never, if it cannot serve)
    attempts: int = 1

    def waiting(self, resolved: Resolved) -> bool:
        """Whether the alias still points at this refused candidate and it is not yet time to try it again."""
        same = (self.version, self.dvc_hash) == (resolved.version, resolved.dvc_hash)
        return self.status == "refused" and same and time.monotonic() < self.retry_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "dvc_hash": self.dvc_hash,
            "status": self.status,
            "reason": self.reason or None,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
        }


@dataclass
class ServingState:
    """The server's state; one per app."""

    settings: Settings
    registry_view: RegistryView
    admission: Admission
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    status: Status = "loading"
    reason: str = "bundle not loaded yet"
    model: ServedModel | None = None
    candidate: Candidate | None = None  # a bundle the alias moved to, being loaded or refused
    tracing: Tracing | None = None  # this process's tracing, once started (None: off)

    @classmethod
    def for_settings(cls, settings: Settings) -> ServingState:
        view = RegistryView(
            settings.mlflow_tracking_uri, settings.model_name, settings.registry_timeout_s, settings.registry_access
        )
        metrics = ServerMetrics()
        admission = Admission(settings.max_queued_rows, settings.predict_timeout_s, metrics.queued_rows.set)
        return cls(settings, view, admission, metrics)

    def served(self) -> ServedModel:
        """The model being served, captured once for a whole request, or ``NotReadyError`` saying why there is none."""
        if self.model is None:
            raise NotReadyError(self.status, self.reason)
        return self.model

    def not_ready(self) -> NotReadyError | None:
        """Why the server is not ready (no model, or a model call has run past ``PREDICT_TIMEOUT_S``: stuck), or
        None when it is: the one definition of ready, which ``/health/ready`` and V2's ready routes answer."""
        if self.model is None:
            return NotReadyError(self.status, self.reason)
        if (stuck := self.admission.stuck_for()) is not None:
            reason = f"a model call has run for {stuck:.1f}s, past PREDICT_TIMEOUT_S={self.admission.timeout_s:g}s"
            return NotReadyError("stuck", reason)
        return None

    def serve(self, model: ServedModel) -> None:
        """Make ``model`` the one requests get, and say so in the metrics.

        Then the objects alive now (the modules, the model, the previous model's leftovers collected first) are
        moved out of the garbage collector's view (``gc.freeze``): its full collections otherwise walk them all
        while requests wait, tens of milliseconds at the tail of the latency (bench.serve's c32 p99). A later
        swap unfreezes them first, so a retired model's cycles are still collected.
        """
        self.model, self.status, self.reason = model, "ready", "bundle loaded and verified"
        self.metrics.set_model(None if model.version is None else str(model.version), model.content_hash)
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        """Shut down: stop the served model's threads; this worker leaves the metrics' live totals."""
        if self.model is not None:
            await self.model.close()
        self.metrics.close()
