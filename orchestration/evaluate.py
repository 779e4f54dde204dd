"""Evaluate on the test split against a naive baseline, and refuse a model that does not beat it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class QualityGateError(RuntimeError):
    """The model does not beat the naive baseline by the configured margin."""


def regression_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, float]:
    """RMSE, MAE and R2."""
    truth = np.asarray(y_true, dtype=np.float64)
    error = np.asarray(y_pred, dtype=np.float64) - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": 1.0 - float((error**2).sum()) / total if total else 0.0,
    }


def evaluate(
    y_test: npt.ArrayLike, predictions: npt.ArrayLike, train_target_mean: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Metrics of the model and of the naive baseline (always predicting the training mean) on test."""
    truth = np.asarray(y_test, dtype=np.float64)
    baseline = np.full_like(truth, train_target_mean)
    return regression_metrics(truth, predictions), regression_metrics(truth, baseline)


def check_beats_baseline(metrics: dict[str, Any], baseline: dict[str, Any], margin: float) -> None:
    """Pass when model RMSE <= (1 - margin) * baseline RMSE; raise ``QualityGateError`` otherwise."""
    limit = (1.0 - margin) * baseline["rmse"]
    if metrics["rmse"] > limit:
        raise QualityGateError(
            f"model RMSE {metrics['rmse']:.4f} does not beat the naive baseline's {baseline['rmse']:.4f} "
            f"by the required margin {margin:.0%} (limit {limit:.4f}; evaluate.baseline_margin in the params file)"
        )
