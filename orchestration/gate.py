"""The promotion gate: does a new bundle beat the registry's current champion by the configured margin?

The champion's figures are the test metrics logged on the run of the version that holds the alias, so the
comparison needs nothing but the registry. Lower RMSE is better; the new model is promoted only when its
RMSE is below ``(1 - margin)`` times the champion's. A first model (no champion yet) is promoted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from app.contract.bundle import Metadata
from app.contract.registry import ANONYMOUS, TAG_CONTENT_HASH, NotFoundError, RegistryAccess, registry_for

# The metric the gate compares (as logged on the registered version's run and stored in the bundle).
GATE_METRIC: Final = "rmse"
# Relative improvement in RMSE a new model needs over the champion: 1% by default.
DEFAULT_MARGIN: Final = 0.01


@dataclass(frozen=True)
class GateDecision:
    """Whether to move the alias to the new bundle, and why, in one sentence for the run's log."""

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None = None
    champion_version: int | None = None
    margin: float = DEFAULT_MARGIN

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(candidate: float, champion: float, margin: float) -> bool:
    """True when ``candidate`` RMSE beats ``champion`` RMSE by at least the relative ``margin``."""
    if not 0 <= margin < 1:
        raise ValueError(f"promotion margin must be in [0, 1), got {margin}")
    return candidate < (1.0 - margin) * champion


def decide_promotion(
    candidate: Metadata,
    *,
    tracking_uri: str,
    model_name: str,
    alias: str,
    margin: float = DEFAULT_MARGIN,
    access: RegistryAccess = ANONYMOUS,
) -> GateDecision:
    """Compare the candidate bundle with the version holding ``alias`` of ``model_name``.

    Raises ``RegistryError`` when the registry cannot be reached (the task is retried), never when the
    model or alias simply does not exist yet.
    """
    score = candidate.metrics[GATE_METRIC]
    registry = registry_for(tracking_uri, access=access)
    try:
        champion = registry.version_by_alias(model_name, alias)
    except NotFoundError:
        reason = f"no {model_name}@{alias} yet: the first model becomes {alias}"
        return GateDecision(True, reason, GATE_METRIC, score, margin=margin)
    current = f"{model_name}@{alias} (version {champion.version})"
    if champion.tags.get(TAG_CONTENT_HASH) == candidate.content_hash:
        # A rerun of the run that promoted this very bundle: keep the alias where it is.
        reason = f"this bundle already is {current}: nothing to move"
        return GateDecision(True, reason, GATE_METRIC, score, score, champion.version, margin)
    logged = registry.run_metrics(champion.run_id) if champion.run_id else {}
    if GATE_METRIC not in logged:
        reason = (
            f"{current} has no logged {GATE_METRIC}: not promoting without a comparison "
            "(move the alias by hand if that is intended)"
        )
        return GateDecision(False, reason, GATE_METRIC, score, None, champion.version, margin)
    best = logged[GATE_METRIC]
    promote = compare(score, best, margin)
    reason = (
        f"new {GATE_METRIC} {score:.4f} {'beats' if promote else 'does not beat'} {current}'s {best:.4f} "
        f"by the required {margin:.1%} (needs below {(1 - margin) * best:.4f}): "
        + ("promoting" if promote else f"registering without moving {alias}")
    )
    return GateDecision(promote, reason, GATE_METRIC, score, best, champion.version, margin)
