"""Following the registry alias while serving: promotion without a restart.

Every ``MODEL_REFRESH_S`` the server asks the registry where ``MODEL_NAME@MODEL_ALIAS`` points. When it
points at another bundle, the candidate goes through the entrypoint's own delivery path (resolve, the pull with
retries inside ``PULL_DEADLINE_S``, both hashes verified) into its own directory under ``MODEL_DIR/refresh/``
(the objects it shares with bundles already in ``MODEL_DIR`` are taken from their caches, not downloaded), is
loaded and built (its serving form's bit-identical probe included), warmed, and only then swapped in, in one
assignment. A request captures the model at its start, so requests in flight finish on
the model they started on, and each model has its own micro-batcher: a batch never mixes two models. The old
model is closed once its last request has finished, and its files are removed from ``MODEL_DIR``.

A candidate that fails at any step is refused with the reason (``/model``, ``/health/ready``, a counter by failure
kind, a log line); the current model keeps serving. So is one whose request schema (feature names, kinds, types,
categories, limits) or target differs from the served one's so that requests the served model takes would be refused
or mean something else, unless ``ALLOW_SCHEMA_CHANGE`` says so. A refused candidate is remembered by version and
hash: one that cannot be served as it is (a schema change, a bundle that does not load) is not pulled again until
the alias moves; one whose delivery failed (the registry or the store unreachable, an object missing or corrupt in
the store, which re-publishing repairs) is tried again after a delay that doubles from ``MODEL_REFRESH_S`` up to
``RETRY_MAX_S``. Moving the alias back is a swap like any other. Workers sharing ``MODEL_DIR`` take turns on each
candidate's directory (its file lock) and the second finds the first one's verified copy.

The pull runs in the server, as at start-up (``app.delivery.pull``, botocore); the S3 credentials it needs must come
from where botocore finds them without the ``AWS_*`` keys, which the server never holds: ``AWS_SHARED_CREDENTIALS_FILE``
(read again at each pull), a pod role.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Final

import orjson

from app.contract.bundle import Metadata, load_serving_bundle
from app.contract.connection import redact
from app.contract.registry import TAG_CONTENT_HASH, TAG_DVC_HASH
from app.contract.store import BUNDLE_NAME, dir_hash
from app.delivery.failures import DeliveryError
from app.delivery.fetch import fetch
from app.delivery.lock import model_dir_lock
from app.delivery.pull import CACHE, cache_of
from app.delivery.remote import preload
from app.delivery.resolve import Resolved, resolve
from app.delivery.retry import deadline_for
from app.observability import LOGGER_NAME
from app.runtime.registry_view import off_loop
from app.runtime.served_model import ServedModel
from app.runtime.state import Candidate, ServingState
from app.settings import Settings

log = logging.getLogger(LOGGER_NAME)

REFRESH_DIR: Final = "refresh"  # MODEL_DIR/refresh/<md5>: one directory (checkout and cache) per candidate bundle
RETIRE_POLL_S: Final = 0.1
WARM_ROWS: Final = 64
UNLOADED_CHECK_S: Final = 1.0  # how often the alias is checked while nothing is served
RETRY_MAX_S: Final = 600.0  # the longest wait before a candidate refused for a passing failure is tried again


def candidate_dir(settings: Settings, dvc_hash: str) -> Path:
    """The directory a candidate is pulled into (its ``bundle`` and the cache of its objects)."""
    return settings.model_dir / REFRESH_DIR / dvc_hash.removesuffix(".dir")


async def follow_alias(state: ServingState) -> None:
    """Check the alias every ``MODEL_REFRESH_S`` until cancelled; swap in what it points at."""
    settings = state.settings
    started = asyncio.get_running_loop().time()
    log.info(
        "following %s@%s every %gs",
        settings.model_name,
        settings.model_alias,
        settings.model_refresh_s,
        extra={"model_refresh_s": settings.model_refresh_s},
    )
    loop = asyncio.get_running_loop()
    await off_loop(lambda: preload(settings.dvc_remote_url), "pull-imports")  # the pulls' S3 client, from the start
    while True:
        # checks start every MODEL_REFRESH_S (not that long after the previous one ended), so a moved alias is
        # seen within one interval; while the start-up bundle cannot be loaded (a worker restarted after a swap
        # retired it), every second: the alias says what to serve
        due = loop.time() + settings.model_refresh_s - (loop.time() - started) % settings.model_refresh_s
        while (left := due - loop.time()) > 0 and not (state.model is None and state.status == "failed"):
            await asyncio.sleep(min(left, UNLOADED_CHECK_S))
        if left > 0:
            await asyncio.sleep(UNLOADED_CHECK_S)  # not at once: a bundle that cannot be loaded is retried too
        try:
            await check_once(state)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the loop silently: log it, keep serving, check again
            log.exception("alias check failed unexpectedly; the current model keeps serving")


async def check_once(state: ServingState) -> None:
    """One check: resolve the alias and, if it moved, deliver, load, warm and swap in its bundle."""
    if state.model is None and state.status == "loading":
        return  # the start-up bundle is still loading: compare with it once it is served
    settings = state.settings.model_copy(update={"model_version": None})  # the alias, not the version served
    began = time.monotonic()
    try:
        resolved = await state.registry_view.ask(lambda: resolve(settings, deadline=deadline_for(settings)))
    except DeliveryError as exc:
        # the registry is down or the alias is gone: nothing to swap, the current model keeps serving
        log.warning("alias check: %s; the current model keeps serving", redact(str(exc)))
        return
    served = state.model
    if served is not None and served.version == resolved.version:
        return
    if state.candidate is not None and state.candidate.waiting(resolved):
        return  # refused already: not pulled again until the alias moves (or, after a passing failure, later)
    if served is not None and resolved.content_hash == served.content_hash:
        # the same bundle registered under another version, if the version's DVC hash tag names it too: a
        # fresh start would pull what that tag names, so a version whose two tags disagree is not taken
        served_hash = await off_loop(lambda: dir_hash(served.bundle.path), "bundle-hash")
        if served_hash == resolved.dvc_hash:
            state.serve(served.with_version(resolved.version or 0))
            return
        reason = (
            f"version {resolved.version}'s tags disagree: its {TAG_CONTENT_HASH} names the served bundle, its "
            f"{TAG_DVC_HASH} {resolved.dvc_hash} another ({served_hash}); a fresh start would serve that one under "
            "the same version: fix the tags (publish the version again)"
        )
        state.candidate = Candidate(resolved.version, resolved.dvc_hash, "refused", reason, since=time.time())
        state.metrics.candidates_refused.labels("registry").inc()
        log.error(
            "candidate version %s refused (registry): %s; the current model keeps serving", resolved.version, reason
        )
        return
    await _take(state, settings, resolved, began)


def schema_changes(served: Metadata, candidate: Metadata) -> list[str]:
    """How ``candidate`` would refuse or misread requests ``served`` takes: another target, a feature added,
    removed or of another kind or type, a category dropped, a limit narrowed (empty: every request the served
    model takes, the candidate takes with the same meaning)."""
    changes = []
    if candidate.target.name != served.target.name:
        changes.append(f"it predicts {candidate.target.name!r}, not {served.target.name!r}")
    old = {feature.name: feature for feature in served.features}
    new = {feature.name: feature for feature in candidate.features}
    if added := [name for name in new if name not in old]:
        changes.append(f"features added: {', '.join(added)}")
    if removed := [name for name in old if name not in new]:
        changes.append(f"features removed: {', '.join(removed)}")
    for name in old.keys() & new.keys():
        was, now = old[name], new[name]
        if (was.kind, was.dtype, was.format) != (now.kind, now.dtype, now.format):
            changes.append(f"{name}: {was.kind} {was.dtype} became {now.kind} {now.dtype}")
            continue
        if dropped := sorted(set(was.categories or ()) - set(now.categories or ())):
            changes.append(f"{name}: categories dropped: {', '.join(dropped)}")
        low, high = was.limits()
        new_low, new_high = now.limits()
        if new_low is not None and (low is None or new_low > low):  # type: ignore[operator]
            changes.append(f"{name}: minimum raised from {low} to {new_low}")
        if new_high is not None and (high is None or new_high < high):  # type: ignore[operator]
            changes.append(f"{name}: maximum lowered from {high} to {new_high}")
    return sorted(changes)


class SchemaChangedError(Exception):
    """The candidate's request schema or target differs from the served one's (``schema_changes``)."""

    failure: Final = "schema"


async def _take(state: ServingState, settings: Settings, resolved: Resolved, began: float) -> None:
    version, dvc_hash = resolved.version, resolved.dvc_hash
    before = state.candidate
    attempts = (
        before.attempts + 1 if before is not None and (before.version, before.dvc_hash) == (version, dvc_hash) else 1
    )
    state.candidate = Candidate(version, dvc_hash, "loading", since=time.time(), attempts=attempts)
    log.info("alias moved to version %s (bundle %s): delivering it", version, dvc_hash)
    work = candidate_dir(settings, dvc_hash)
    report = lambda line: log.info("candidate version %s: %s", version, line)  # noqa: E731
    try:
        fetched = await off_loop(
            lambda: fetch(
                settings.model_copy(update={"model_dir": work}),
                dvc_hash,
                deadline=deadline_for(settings),
                report=report,
                seeds=[cache_of(settings.model_dir), *(settings.model_dir / REFRESH_DIR).glob(f"*/{CACHE}")],
            ),
            "candidate-pull",
        )
        served = state.model
        if served is not None and not settings.allow_schema_change:
            changes = schema_changes(served.bundle.metadata, fetched.metadata)
            if changes:
                raise SchemaChangedError(
                    f"its requests differ from the served model's ({'; '.join(changes)}); clients of the served "
                    "model would be refused or misread: set ALLOW_SCHEMA_CHANGE=true to serve it anyway"
                )
        model = await off_loop(
            lambda: ServedModel.build(
                load_serving_bundle(fetched.bundle_dir), settings, state.metrics, state.admission, state.tracing
            ),
            "candidate-load",
        )
        model = model.with_version(version) if version is not None else model
        await _warm(model)
    except Exception as exc:  # any failure refuses the candidate; the current model keeps serving
        kind = getattr(exc, "failure", "load")
        reason = redact(
            str(exc) if isinstance(exc, DeliveryError | SchemaChangedError) else f"{type(exc).__name__}: {exc}"
        )
        passing = isinstance(exc, DeliveryError)  # the store or the registry may be repaired; the bundle cannot
        retry_at = time.monotonic() + min(settings.model_refresh_s * 2**attempts, RETRY_MAX_S) if passing else math.inf
        state.candidate = dataclasses.replace(
            state.candidate, status="refused", reason=reason, since=time.time(), retry_at=retry_at
        )
        state.metrics.candidates_refused.labels(kind).inc()
        log.error("candidate version %s refused (%s): %s; the current model keeps serving", version, kind, reason)
        return
    previous = state.model
    state.serve(model)  # the swap: new requests get the new model from here on
    state.candidate = None
    state.metrics.model_swaps.inc()
    log.info(
        "swapped in version %s (bundle %s) %.2fs after the alias check began; was version %s",
        version,
        model.content_hash[:12],
        time.monotonic() - began,
        None if previous is None else previous.version,
        extra={"fetched": fetched.fetched, "reused": fetched.reused},
    )
    if previous is not None:
        asyncio.get_running_loop().create_task(_retire(state, previous), name="retire-model")


async def _warm(model: ServedModel) -> None:
    """Run the new model's request paths once (micro-batcher and batch threads) before it takes traffic."""
    row = model.schema.parse_record(orjson.dumps(model.bundle.metadata.example))
    await model.batcher.submit(row)
    await model.run_batch([row] * WARM_ROWS)


async def _retire(state: ServingState, old: ServedModel) -> None:
    """Close ``old`` once no request uses it (bounded by ``DRAIN_TIMEOUT_S``), then remove its files."""
    deadline = time.monotonic() + state.settings.drain_timeout_s
    while old.usage.active and time.monotonic() < deadline:
        await asyncio.sleep(RETIRE_POLL_S)
    await old.close()
    current = state.model
    if current is not None and current.bundle.path == old.bundle.path:
        return  # rolled back to the very same files meanwhile
    await asyncio.to_thread(_remove_bundle_files, state.settings, old.bundle.path)


def _remove_bundle_files(settings: Settings, bundle_dir: Path) -> None:
    """Remove a retired bundle's checkout (and, for a candidate, its whole work repository) from ``MODEL_DIR``;
    never anything outside it (a ``BUNDLE_DIR`` of the user's own)."""
    model_dir = settings.model_dir.resolve()
    bundle_dir = bundle_dir.resolve()
    work = bundle_dir.parent
    if work not in (model_dir, *(model_dir / REFRESH_DIR).glob("*")) or bundle_dir.name != BUNDLE_NAME:
        return
    # another worker may be delivering into the same work repository: take its turn
    with model_dir_lock(work, timeout_s=settings.pull_deadline_s):
        if work == model_dir:  # the start-up pull's copy and its cache; the work repository stays
            for path in (bundle_dir, model_dir / ".dvc" / "cache"):
                shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    log.info("removed the retired bundle's files", extra={"bundle_path": str(bundle_dir)})
