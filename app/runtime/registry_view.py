"""What the registry says about the bundle being served, for ``GET /model``: never on the prediction path.

Looking a bundle up (its registered versions, by the content-hash tag) is cached briefly, failures for a
shorter time, so a registry outage does not stall every ``/model`` call; concurrent callers share one
look-up. Reading the view changes nothing about what is served. Every registry call of the running server
(this view's, the alias check's) goes through ``RegistryView.ask``: on threads of their own, at most
``REGISTRY_CALLS`` at once, each bounded by ``REGISTRY_TIMEOUT_S`` in all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from app.contract.connection import redact
from app.contract.registry import ANONYMOUS, TAG_CONTENT_HASH, ModelVersion, RegistryAccess, RegistryError, registry_for

REGISTRY_CACHE_S: Final = 30.0  # a registry answer is reused this long
REGISTRY_RETRY_S: Final = 5.0  # a failed look-up is reused this long
REGISTRY_CALLS: Final = 2  # registry calls running at once: a registry that trickles its answers ties up these
T = TypeVar("T")


async def off_loop(call: Callable[[], T], name: str) -> T:
    """``call()`` on a daemon thread of its own, awaited: a call that outlives the server's shutdown (a pull, a
    registry answer still arriving) never holds the process past it, as the default executor's threads would."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: tuple[T] | BaseException) -> None:
        if done.cancelled():
            return
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome[0])

    def run() -> None:
        try:
            outcome: tuple[T] | BaseException = (call(),)
        except BaseException as exc:  # handed to the awaiting task
            outcome = exc
        loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


@dataclass
class RegistryView:
    """The registry's versions of a bundle, by content hash, cached."""

    tracking_uri: str | None
    model_name: str
    timeout_s: float
    access: RegistryAccess = ANONYMOUS
    _cached: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _calls: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(REGISTRY_CALLS))

    async def ask(self, call: Callable[[], T]) -> T:
        """``call()``, a registry call, off the event loop: at most ``REGISTRY_CALLS`` at once."""
        async with self._calls:
            return await off_loop(call, "registry")

    async def of(self, content_hash: str) -> dict[str, Any]:
        """``{"registry": <best version or "unavailable"/"not_registered">, ...}`` for this bundle."""
        async with self._lock:  # concurrent callers share one look-up
            cached = self._cached.get(content_hash)
            if cached is not None:
                ttl = REGISTRY_RETRY_S if cached[1]["registry"] == "unavailable" else REGISTRY_CACHE_S
                if time.monotonic() - cached[0] < ttl:
                    return cached[1]
            view = await self._look_up(content_hash)
            self._cached = {content_hash: (time.monotonic(), view)}
            return view

    def forget(self) -> None:
        """Drop the cached answers: the next look-up asks the registry."""
        self._cached = {}

    @staticmethod
    def version_of(view: dict[str, Any]) -> int | None:
        """The registry version a view names for the bundle, if it is registered."""
        best = view.get("registry")
        return int(best["version"]) if isinstance(best, dict) else None

    async def _look_up(self, content_hash: str) -> dict[str, Any]:
        uri = self.tracking_uri
        if not uri:
            return {"registry": "unavailable", "reason": "MLFLOW_TRACKING_URI is not set"}
        timeout, access = self.timeout_s, self.access

        def search() -> list[ModelVersion]:
            return registry_for(uri, timeout, access).versions_tagged(TAG_CONTENT_HASH, content_hash)

        try:  # each request is cut at REGISTRY_TIMEOUT_S; this bounds the few a search makes together
            versions = await asyncio.wait_for(self.ask(search), 2 * timeout)
        except TimeoutError:
            return {"registry": "unavailable", "reason": f"MLflow registry did not answer within {timeout}s"}
        except RegistryError as exc:
            return {"registry": "unavailable", "reason": redact(str(exc))}
        if not versions:
            return {
                "registry": "not_registered",
                "reason": f"no registered model version is tagged {TAG_CONTENT_HASH}={content_hash}",
            }
        # Prefer the configured model name, then the newest version.
        versions.sort(key=lambda v: (v.name == self.model_name, v.version), reverse=True)
        return {"registry": _version_view(versions[0]), "versions": [_version_view(v) for v in versions]}


def _version_view(version: ModelVersion) -> dict[str, Any]:
    # MLflow's REST API answers "" for a version registered without a run
    return {
        "name": version.name,
        "version": version.version,
        "aliases": version.aliases,
        "run_id": version.run_id or None,
    }
