"""Which bundle to serve: its DVC hash (``<md5>.dir``), pinned with ``MODEL_HASH`` or read from the
``TAG_DVC_HASH`` tag of the registry's ``MODEL_NAME@MODEL_ALIAS`` (or ``MODEL_VERSION``)."""

from __future__ import annotations

from dataclasses import dataclass

from app.contract.connection import redact
from app.contract.progress import Report, quiet
from app.contract.registry import (
    TAG_CONTENT_HASH,
    TAG_DVC_HASH,
    AccessDeniedError,
    ModelVersion,
    NotFoundError,
    RegistryError,
    registry_for,
)
from app.contract.store import DVC_HASH
from app.delivery.failures import DeliveryError
from app.delivery.retry import retrying, within
from app.settings import Settings


@dataclass(frozen=True)
class Resolved:
    """The bundle to serve and where that decision came from."""

    dvc_hash: str
    source: str
    version: int | None = None
    content_hash: str | None = None  # the version's content-hash tag, when it came from the registry


def resolve(settings: Settings, report: Report = quiet, *, deadline: float | None = None) -> Resolved:
    """The DVC hash to serve: the ``MODEL_HASH`` pin, or the registry version's ``TAG_DVC_HASH`` tag, within
    ``deadline`` (the one delivery shares; default ``PULL_DEADLINE_S`` from now)."""
    if settings.model_hash:
        return Resolved(settings.model_hash, "MODEL_HASH pin (registry not consulted)")
    uri = settings.mlflow_tracking_uri
    if not uri:
        raise DeliveryError(
            "settings",
            "no bundle to serve: none of BUNDLE_DIR, MODEL_HASH or MLFLOW_TRACKING_URI is set",
            "BUNDLE_DIR (a bundle directory to serve as is), MODEL_HASH (a DVC hash to pin) or MLFLOW_TRACKING_URI "
            "with MODEL_NAME and MODEL_ALIAS/MODEL_VERSION (python -m app.entrypoint --help)",
        )
    wanted = (
        f"{settings.model_name} version {settings.model_version}"
        if settings.model_version is not None
        else f"{settings.model_name}@{settings.model_alias}"
    )
    where = redact(uri)

    def ask() -> ModelVersion:
        registry = registry_for(uri, settings.registry_timeout_s, settings.registry_access)
        if settings.model_version is not None:
            return registry.version(settings.model_name, settings.model_version)
        return registry.version_by_alias(settings.model_name, settings.model_alias)

    def look_up(left: float) -> ModelVersion:
        too_slow = DeliveryError(
            "registry",
            f"the MLflow registry at {where} did not answer {wanted} before PULL_DEADLINE_S ran out",
            "MLFLOW_TRACKING_URI and that the tracking server answers, or pin a bundle with MODEL_HASH",
        )
        try:
            return within(ask, left, too_slow)
        except NotFoundError as exc:
            field = "MODEL_VERSION" if settings.model_version is not None else "MODEL_ALIAS"
            raise DeliveryError(
                "not-found",
                f"{wanted} not found in the MLflow registry at {where} ({redact(str(exc))})",
                f"MODEL_NAME and {field}, and that the version was published (python -m orchestration publish)",
            ) from None
        except AccessDeniedError as exc:
            raise DeliveryError(
                "credentials",
                f"the MLflow registry at {where} refused to answer {wanted}: {redact(str(exc))}",
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) and that user's "
                "permission to read the model",
            ) from None
        except RegistryError as exc:
            raise DeliveryError(
                "registry",
                f"MLflow registry unreachable, no MODEL_HASH pin: {redact(str(exc))}",
                "MLFLOW_TRACKING_URI and that the tracking server is up, or pin a bundle with MODEL_HASH",
            ) from None

    version, _ = retrying(look_up, settings, report=report, step="resolve", deadline=deadline)
    dvc_hash = version.dvc_hash
    if not dvc_hash or not DVC_HASH.match(dvc_hash):
        raise DeliveryError(
            "not-found",
            f"{wanted} (version {version.version}) has no valid {TAG_DVC_HASH} tag (found {dvc_hash!r})",
            "that the version was registered by `python -m orchestration publish`, or pin MODEL_HASH",
        )
    return Resolved(
        dvc_hash, f"{wanted} -> version {version.version}", version.version, version.tags.get(TAG_CONTENT_HASH)
    )
