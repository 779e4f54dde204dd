"""Loading the bundle into the running server, after start-up, so ``/health/live`` answers at once and
``/health/ready`` says why it is not ready yet (or why loading failed).

A bundle directory that is missing, incomplete or fails to load (for any reason: a ``BundleError``, or a bundle
whose schema does not fit its transformer) is retried with backoff, so a bundle that appears later is picked up;
every failure is logged at once and its reason kept for ``/health/ready``. A bundle whose registry version is not known
(served from ``BUNDLE_DIR`` or a ``MODEL_HASH`` pin) is looked up by its content hash before it is served,
so every response and the info gauge name the version from the first request on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from app.contract.bundle import BundleError, load_serving_bundle
from app.contract.connection import redact
from app.observability import LOGGER_NAME
from app.runtime.served_model import ServedModel
from app.runtime.state import ServingState

log = logging.getLogger(LOGGER_NAME)

RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 15.0


async def load_until_ready(state: ServingState) -> None:
    """Load the bundle (in a thread) until it loads, learn its registry version if unknown, then serve it."""
    settings = state.settings
    path = settings.bundle_path
    delay = RETRY_FIRST_S
    model: ServedModel | None = None
    while model is None:
        if state.model is not None:
            return  # the alias refresh served a bundle meanwhile: this one is no longer wanted
        try:
            model = await asyncio.to_thread(
                lambda: ServedModel.build(
                    load_serving_bundle(path), settings, state.metrics, state.admission, state.tracing
                )
            )
        except Exception as exc:  # anything else would end this task silently and leave "loading" forever
            reason = (
                str(exc) if isinstance(exc, BundleError) else f"the bundle does not load: {type(exc).__name__}: {exc}"
            )
            state.status, state.reason = "failed", redact(reason)
            log.error("bundle not loaded; retrying in %.1fs: %s", delay, state.reason, extra={"bundle_path": str(path)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    if model.version is None and settings.mlflow_tracking_uri:
        # Bounded by REGISTRY_TIMEOUT_S: an unreachable registry leaves the version unknown, the model served.
        view = await state.registry_view.of(model.content_hash)
        log.info("registry view", extra={"registry": view.get("registry"), "reason": view.get("reason")})
        if (version := state.registry_view.version_of(view)) is not None:
            model = model.with_version(version)
    if state.model is not None:  # the alias refresh was faster: its bundle is the newer one
        await model.close()
        return
    state.serve(model)
    if model.library_mismatch:
        log.warning(
            "the bundle was trained with other library versions than this server's: %s",
            ", ".join(f"{name} {v['bundle']} (server {v['server']})" for name, v in model.library_mismatch.items()),
            extra={"library_mismatch": model.library_mismatch},
        )
    if model.bundle.form.walk != "compiled":
        log.warning("predicting with the numpy walk, slower than the compiled one: %s", model.bundle.form.walk_note)
    log.info(
        "bundle loaded",
        extra={
            "bundle_path": str(path),
            "bundle_hash": model.content_hash,
            "model_version": model.version,
            "features": model.schema.features,
            "walk": model.bundle.form.walk_note,
        },
    )
