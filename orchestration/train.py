"""Train the regressor on transformed features, early-stopping on the validation split."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from app.contract.features import FeatureTransformer
from app.contract.progress import Report, quiet
from orchestration.config import DataConfig, ModelConfig

HEARTBEAT_S: Final = 10.0  # how often a long fit says how far it got


def train_model(
    transformer: FeatureTransformer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    data: DataConfig,
    params: ModelConfig,
    *,
    report: Report = quiet,
    every: float = HEARTBEAT_S,
) -> HistGradientBoostingRegressor:
    """A HistGradientBoostingRegressor with the configured hyperparameters; categoricals handled natively.

    ``report`` hears what the fit is about to do, then every ``every`` seconds how many iterations it has done.
    """
    model = HistGradientBoostingRegressor(
        **params.model_dump(),
        categorical_features=transformer.categorical_mask_ if any(transformer.categorical_mask_) else None,
        early_stopping=True,
    )
    features, validation_features = transformer.transform(train), transformer.transform(validation)
    report(
        f"fitting up to {params.max_iter} iterations on {len(train):,} rows (stops after {params.n_iter_no_change} "
        f"without improvement on the {len(validation):,} validation rows)"
    )
    with _heartbeat(model, params.max_iter, report, every):
        model.fit(
            features,
            train[data.target].to_numpy(),
            X_val=validation_features,
            y_val=validation[data.target].to_numpy(),
        )
    return model


@contextmanager
def _heartbeat(model: HistGradientBoostingRegressor, max_iter: int, report: Report, every: float) -> Iterator[None]:
    """While the block runs, report the iterations done so far every ``every`` seconds. The count is the length of
    the model's list of trees, which the fit appends to as it goes (read only: the fit is not touched)."""
    done = threading.Event()
    started = time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            iterations = len(getattr(model, "_predictors", None) or ())
            report(f"{iterations}/{max_iter} iterations after {time.perf_counter() - started:.0f} s")

    thread = threading.Thread(target=beat, name="train-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
