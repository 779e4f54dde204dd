"""What the running server holds: the bundle once it is loaded and verified, its request schema, the
micro-batcher, the metrics, and the cached registry view.

The bundle loads in a thread after start-up, so ``/health/live`` answers at once and ``/health/ready`` says
why it is not ready yet (or why loading failed). A bundle directory that is missing or incomplete is
retried with backoff, so a bundle that appears later is picked up; every failure's reason is kept for
``/health/ready``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from app.batching import MicroBatcher, limit_threads
from app.bundle import Bundle, BundleError, load_bundle
from app.observability import LOGGER_NAME, ServerMetrics
from app.predictor import Predictor
from app.registry import TAG_CONTENT_HASH, ModelVersion, RegistryError, registry_for
from app.schema import RecordSchema
from app.settings import Settings

log = logging.getLogger(LOGGER_NAME)

RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 15.0
REGISTRY_CACHE_S: Final = 30.0  # a registry answer is reused this long
REGISTRY_RETRY_S: Final = 5.0  # a failed look-up is reused this long, so an outage does not stall every /model
# Threads for /predict/batch calls, apart from the micro-batcher's own: the trees are evaluated outside the
# GIL, so two large batches proceed in parallel on two cores (each thread stays at PREDICT_THREADS OpenMP
# threads; more OpenMP threads per call oversubscribe a small machine badly).
BATCH_WORKERS: Final = 2
Row = tuple[Any, ...]


@dataclass
class LoadedModel:
    """A verified bundle with everything the prediction path needs."""

    bundle: Bundle
    schema: RecordSchema
    predictor: Predictor
    batcher: MicroBatcher[Row]
    batch_executor: ThreadPoolExecutor

    async def predict_batch(self, rows: list[Row]) -> npt.NDArray[np.float64]:
        """A whole batch request's rows in one vectorised call, on a batch worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.batch_executor, self.predict_rows, rows)

    def predict_rows(self, rows: list[Row]) -> npt.NDArray[np.float64]:
        """Validated rows -> predictions, with no DataFrame (runs on the worker thread)."""
        return self.predictor.predict(self.schema.columns(rows))


@dataclass
class ServingState:
    """The server's mutable state; one per app."""

    settings: Settings
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    status: Literal["loading", "ready", "failed"] = "loading"
    reason: str = "bundle not loaded yet"
    model: LoadedModel | None = None
    model_version: int | None = None
    _registry_view: tuple[float, dict[str, Any]] | None = None
    _registry_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.model_version = self.settings.model_version

    # --- loading ---

    async def load(self) -> None:
        """Load the bundle (in a thread), retrying with backoff until it loads; then look up its version."""
        path = self.settings.bundle_path
        delay = RETRY_FIRST_S
        while True:
            try:
                model = await asyncio.to_thread(self._load_model)
            except BundleError as exc:
                self.status, self.reason = "failed", str(exc)
                log.error("bundle not loaded; retrying in %.1fs: %s", delay, exc, extra={"bundle_path": str(path)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            break
        self.model, self.status, self.reason = model, "ready", "bundle loaded and verified"
        self.metrics.set_model(self._version_label(), model.bundle.content_hash)
        log.info(
            "bundle loaded",
            extra={
                "bundle_path": str(path),
                "bundle_hash": model.bundle.content_hash,
                "features": model.schema.features,
            },
        )
        if self.settings.mlflow_tracking_uri:
            view = await self.registry_view()  # learns the registry version for responses and the info gauge
            log.info("registry view", extra={"registry": view.get("registry"), "reason": view.get("reason")})

    def _load_model(self) -> LoadedModel:
        bundle = load_bundle(self.settings.bundle_path)
        schema = RecordSchema.from_metadata(bundle.metadata, self.settings.max_batch_records)
        predictor = Predictor(bundle, self.settings.predict_threads)
        threads = self.settings.predict_threads
        executor = ThreadPoolExecutor(BATCH_WORKERS, "predict-batch", initializer=limit_threads, initargs=(threads,))
        model = LoadedModel(bundle, schema, predictor, batcher=None, batch_executor=executor)  # type: ignore[arg-type]
        model.batcher = MicroBatcher(
            model.predict_rows,
            max_size=self.settings.microbatch_max_size,
            max_wait_s=self.settings.microbatch_max_wait_ms / 1000,
            threads=threads,
            on_batch=self.metrics.batch_size.observe,
        )
        return model

    async def close(self) -> None:
        if self.model is not None:
            await self.model.batcher.close()
            self.model.batch_executor.shutdown(wait=False, cancel_futures=True)

    def _version_label(self) -> str | None:
        return None if self.model_version is None else str(self.model_version)

    # --- registry view (never on the prediction path) ---

    async def registry_view(self) -> dict[str, Any]:
        """This bundle's registered versions, found by its content-hash tag; cached briefly."""
        if self.model is None:
            return {"registry": "unavailable", "reason": "bundle not loaded"}
        async with self._registry_lock:  # concurrent callers share one look-up
            cached = self._registry_view
            if cached is not None:
                ttl = REGISTRY_RETRY_S if cached[1]["registry"] == "unavailable" else REGISTRY_CACHE_S
                if time.monotonic() - cached[0] < ttl:
                    return cached[1]
            view = await self._lookup(self.model.bundle.content_hash)
            self._registry_view = (time.monotonic(), view)
            return view

    async def _lookup(self, content_hash: str) -> dict[str, Any]:
        uri = self.settings.mlflow_tracking_uri
        if not uri:
            return {"registry": "unavailable", "reason": "MLFLOW_TRACKING_URI is not set"}
        timeout = self.settings.registry_timeout_s

        def search() -> list[ModelVersion]:
            return registry_for(uri, timeout).versions_tagged(TAG_CONTENT_HASH, content_hash)

        try:
            versions = await asyncio.wait_for(asyncio.to_thread(search), timeout)
        except TimeoutError:
            return {"registry": "unavailable", "reason": f"MLflow registry did not answer within {timeout}s"}
        except RegistryError as exc:
            return {"registry": "unavailable", "reason": str(exc)}
        if not versions:
            return {
                "registry": "not_registered",
                "reason": f"no registered model version is tagged {TAG_CONTENT_HASH}={content_hash}",
            }
        # Prefer the configured model name, then the newest version.
        versions.sort(key=lambda v: (v.name == self.settings.model_name, v.version), reverse=True)
        best = versions[0]
        if self.model_version is None or self.model_version != best.version:
            self.model_version = best.version
            self.metrics.set_model(self._version_label(), content_hash)
        return {"registry": _version_view(best), "versions": [_version_view(v) for v in versions]}


def _version_view(version: ModelVersion) -> dict[str, Any]:
    # MLflow's REST API answers "" for a version registered without a run
    return {
        "name": version.name,
        "version": version.version,
        "aliases": version.aliases,
        "run_id": version.run_id or None,
    }
