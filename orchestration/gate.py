"""The promotion gate: does a new bundle beat the registry's current champion, on the same data, by the margin?

Both models are scored on the candidate's test split: the champion's bundle is fetched by the DVC hash its
registered version carries (``dvc pull`` into a throw-away work repository, its DVC hash checked), loaded with
the bundle's own loader (content hash checked, trusted types only), and its predictions on that split scored.
Comparing with the RMSE logged on the champion's own run would compare two different test sets, and an easier
data set would win promotion. Lower RMSE is better; the new model is promoted only when its RMSE is below
``(1 - margin)`` times the champion's on the same rows. A first model (no champion yet) is promoted; a rerun of
the bundle that already is the champion keeps the alias where it is.

A champion that cannot be scored (no DVC-hash tag, its blobs unreachable, missing or altered, a bundle that does
not load or cannot read the candidate's columns) is not replaced: the decision says why and the alias stays
(move it by hand, or rerun, once the cause is fixed). A registry that cannot be reached raises instead, so the
task is retried.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from app.contract.bundle import BundleError, Metadata, load_bundle
from app.contract.connection import ConnectionSettings
from app.contract.progress import Report, quiet
from app.contract.registry import TAG_CONTENT_HASH, TAG_DVC_HASH, ModelVersion, NotFoundError, registry_for
from app.contract.store import DVC_HASH
from orchestration.defaults import DEFAULT_MARGIN
from orchestration.evaluate import regression_metrics

if TYPE_CHECKING:  # annotations only: the callers hand in the frames
    import pandas as pd

# The metric the gate compares (as logged on the registered version's run and stored in the bundle).
GATE_METRIC: Final = "rmse"
# What the candidate's MLflow run records of the decision: metric and tag names.
CANDIDATE_METRIC: Final = f"gate_candidate_{GATE_METRIC}"  # the candidate on its own test split
CHAMPION_METRIC: Final = f"gate_champion_{GATE_METRIC}"  # the champion on the candidate's test split
CHAMPION_LOGGED_METRIC: Final = f"gate_champion_logged_{GATE_METRIC}"  # the champion on its own split, as logged
PROMOTED_TAG: Final = "gate_promoted"
REASON_TAG: Final = "gate_reason"
CHAMPION_VERSION_TAG: Final = "gate_champion_version"
MARGIN_TAG: Final = "gate_margin"
REASON_LIMIT: Final = 5000  # MLflow tag values are bounded; a reason is one sentence, this is a guard


@dataclass(frozen=True)
class GateDecision:
    """Whether to move the alias to the new bundle, and why, in one sentence for the run's log.

    ``candidate`` is the new model's score on its test split and ``champion`` the champion's score on that same
    split (None when there is no champion or it could not be scored); ``champion_logged`` is the champion's
    score on its own test split, as logged on its run, for the record only.
    """

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None = None
    champion_version: int | None = None
    margin: float = DEFAULT_MARGIN
    champion_logged: float | None = None
    champion_dvc_hash: str | None = None
    test_rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_metrics(self) -> dict[str, float]:
        """The numbers compared, as metrics of the candidate's MLflow run."""
        metrics = {CANDIDATE_METRIC: self.candidate}
        if self.champion is not None:
            metrics[CHAMPION_METRIC] = self.champion
        if self.champion_logged is not None:
            metrics[CHAMPION_LOGGED_METRIC] = self.champion_logged
        return metrics

    def run_tags(self) -> dict[str, str]:
        """The decision, as tags of the candidate's MLflow run."""
        tags = {PROMOTED_TAG: str(self.promote).lower(), REASON_TAG: self.reason[:REASON_LIMIT]}
        tags[MARGIN_TAG] = str(self.margin)
        if self.champion_version is not None:
            tags[CHAMPION_VERSION_TAG] = str(self.champion_version)
        return tags


def check_margin(margin: float) -> float:
    """``margin`` if it is a valid promotion margin, in [0, 1)."""
    if not 0 <= margin < 1:
        raise ValueError(f"promotion margin must be in [0, 1), got {margin}")
    return margin


def compare(candidate: float, champion: float, margin: float) -> bool:
    """True when ``candidate`` RMSE beats ``champion`` RMSE by at least the relative ``margin``."""
    return candidate < (1.0 - check_margin(margin)) * champion


def score(predict: Any, test: pd.DataFrame, target: str) -> float:
    """``GATE_METRIC`` of ``predict`` (columns -> predictions) on ``test``."""
    return regression_metrics(test[target], predict(test))[GATE_METRIC]


def decide_promotion(
    candidate: Metadata,
    test: pd.DataFrame,
    settings: ConnectionSettings,
    *,
    margin: float = DEFAULT_MARGIN,
    report: Report = quiet,
) -> GateDecision:
    """Compare the candidate bundle with the version holding ``settings.model_alias`` of ``settings.model_name``,
    both scored on ``test``, the candidate's test split.

    Raises ``RegistryError`` when the registry cannot be reached (the task is retried), never when the model or
    alias simply does not exist yet, nor when the champion's bundle cannot be fetched, is altered or does not
    load (then the decision is not to promote, with the reason).
    """
    check_margin(margin)  # before any network call
    if not settings.mlflow_tracking_uri:
        raise ValueError("MLFLOW_TRACKING_URI is not set: the gate needs the registry to compare with")
    ours = candidate.metrics[GATE_METRIC]
    model_name, alias = settings.model_name, settings.model_alias
    registry = registry_for(settings.mlflow_tracking_uri, settings.registry_timeout_s, settings.registry_access)
    try:
        champion = registry.version_by_alias(model_name, alias)
    except NotFoundError:
        reason = f"no {model_name}@{alias} yet: the first model becomes {alias}"
        return GateDecision(True, reason, GATE_METRIC, ours, margin=margin, test_rows=len(test))
    current = f"{model_name}@{alias} (version {champion.version})"
    logged = registry.run_metrics(champion.run_id).get(GATE_METRIC) if champion.run_id else None

    def decided(promote: bool, reason: str, theirs: float | None) -> GateDecision:
        return GateDecision(
            promote, reason, GATE_METRIC, ours, theirs, champion.version, margin, logged, champion.dvc_hash, len(test)
        )

    if champion.tags.get(TAG_CONTENT_HASH) == candidate.content_hash:
        # A rerun of the run that promoted this very bundle: keep the alias where it is.
        return decided(True, f"this bundle already is {current}: nothing to move", ours)
    theirs, why_not = _champion_score(champion, test, candidate.target.name, settings, report)
    if theirs is None:
        return decided(
            False,
            f"{current} cannot be scored on this run's test split ({why_not}): not promoting without a comparison "
            f"(registering without moving {alias}; move it by hand if that is intended)",
            None,
        )
    promote = compare(ours, theirs, margin)
    return decided(
        promote,
        f"new {GATE_METRIC} {ours:.4f} {'beats' if promote else 'does not beat'} {current}'s {theirs:.4f} on the "
        f"same {len(test)} test rows by the required {margin:.1%} (needs below {(1 - margin) * theirs:.4f}; "
        f"{current} logged {_figure(logged)} on its own test split): "
        + ("promoting" if promote else f"registering without moving {alias}"),
        theirs,
    )


def _figure(value: float | None) -> str:
    return "nothing" if value is None else f"{value:.4f}"


def _champion_score(
    champion: ModelVersion, test: pd.DataFrame, target: str, settings: ConnectionSettings, report: Report
) -> tuple[float | None, str]:
    """The champion's ``GATE_METRIC`` on ``test``, or None and why it cannot be had."""
    dvc_hash = champion.dvc_hash
    if not dvc_hash or not DVC_HASH.match(dvc_hash):
        return None, f"its version has no valid {TAG_DVC_HASH} tag (found {dvc_hash!r})"
    from orchestration.publish import PublishError, PublishTarget, PullError, pull_bundle  # mlflow: only here

    with tempfile.TemporaryDirectory(prefix="gate-champion-") as work:
        try:
            bundle = load_bundle(
                pull_bundle(dvc_hash, PublishTarget.from_settings(settings), Path(work), report=report)
            )
        except (PublishError, PullError, BundleError) as exc:
            return None, f"its bundle {dvc_hash} could not be fetched and loaded: {exc}"
        if bundle.metadata.target.name != target:
            return None, f"its bundle {dvc_hash} predicts {bundle.metadata.target.name!r}, not {target!r}"
        try:
            return score(bundle.predict, test, target), ""
        except Exception as exc:  # a champion that cannot read the candidate's columns: no comparison, said why
            return None, f"its bundle {dvc_hash} cannot predict these rows: {type(exc).__name__}: {exc}"
