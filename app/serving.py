"""What the running server holds: the settings, the metrics, the model being served (once it is) and
the readiness status with its reason, the admission of prediction work, and the registry view for ``GET /model``.

Only the loader (``app.loader``) and the alias refresh (``app.refresh``) change the model, the status and the
candidate; the routes read them.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from app.admission import Admission
from app.observability import ServerMetrics
from app.registry_view import RegistryView
from app.served_model import ServedModel
from app.settings import Settings

if TYPE_CHECKING:
    from app.refresh import Candidate

Status = Literal["loading", "ready", "failed"]


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

    @classmethod
    def for_settings(cls, settings: Settings) -> ServingState:
        view = RegistryView(
            settings.mlflow_tracking_uri, settings.model_name, settings.registry_timeout_s, settings.registry_access
        )
        metrics = ServerMetrics()
        admission = Admission(settings.max_queued_rows, settings.predict_timeout_s, metrics.queued_rows.set)
        return cls(settings, view, admission, metrics)

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
